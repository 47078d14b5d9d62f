"""What ``saguaro target`` exports: request and round spans, metrics, ``/metrics`` and ``/healthz``.

Why one object: the command line decides (metrics port, tracing from the environment), the
server only receives hooks. A target built without it (tests, embedded use) still logs one
line per request, and its rounds carry no telemetry hook at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from saguaro.services.target.health import target_health
from saguaro.services.target.request_telemetry import RequestTelemetry
from saguaro.services.target.round_telemetry import RoundTelemetry
from saguaro.telemetry import tracing
from saguaro.telemetry.exposition import MetricsServer, start_metrics_server
from saguaro.telemetry.metrics import TargetMetrics

if TYPE_CHECKING:
    from saguaro.services.target.engine import SpeculativeEngine
    from saguaro.services.target.loop import EngineLoop


class TargetTelemetry:
    """Request spans and metrics (InferenceService), round spans and metrics (the engine)."""

    def __init__(self, model_name: str, metrics: bool = True, tracer: Any = None, round_ratio: float | None = None):
        self.model_name = model_name
        tracer = tracer if tracer is not None else tracing.tracer()
        self.registry = CollectorRegistry() if metrics else None
        self.metrics = TargetMetrics(self.registry, model_name) if metrics else None
        # No hook at all when neither metrics nor traces want rounds: the engine's fast path.
        self.rounds = RoundTelemetry(self.metrics, tracer, round_ratio) if metrics or tracer is not None else None
        self.requests = RequestTelemetry(model_name, self.metrics, tracer)
        self.server: MetricsServer | None = None

    def attach(self, engine: SpeculativeEngine, loop: EngineLoop) -> None:
        """Hook the engine's rounds; export the loop's load snapshot as gauges."""
        if self.rounds is not None:
            engine.telemetry = self.rounds
        if self.metrics is not None:
            self.metrics.watch(engine, lambda: loop.load)

    def serve(self, port: int, host: str, loop: EngineLoop, labels: Mapping[str, str] | None = None) -> MetricsServer | None:
        """``/metrics`` and ``/healthz`` on ``port`` (0: off); ``/healthz`` says what the Health
        RPC says (``target_health``); ``labels`` (``--metrics-label``) go on every series."""
        if self.registry is None:
            return None
        self.server = start_metrics_server(self.registry, port, host, lambda: target_health(loop).healthz(), labels)
        return self.server
