"""Wiring for the service commands: what ``saguaro target`` and ``saguaro draft`` export.

Why one object per service: the command line decides (metrics port, tracing from the
environment), the servers only receive hooks. A service built without it (tests, embedded
use) still logs one line per request, and its rounds carry no telemetry hook at all.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from saguaro.services.target.health import target_health
from saguaro.services.target.request_telemetry import RequestTelemetry
from saguaro.services.target.round_telemetry import RoundTelemetry
from saguaro.telemetry import tracing
from saguaro.telemetry.exposition import MetricsServer, start_metrics_server
from saguaro.telemetry.metrics import DraftMetrics, TargetMetrics


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

    def attach(self, engine: Any, loop: Any) -> None:
        """Hook the engine's rounds; export the loop's load snapshot as gauges."""
        if self.rounds is not None and hasattr(engine, "telemetry"):
            engine.telemetry = self.rounds
        if self.metrics is not None:
            self.metrics.watch(engine, lambda: loop.load)

    def serve(self, port: int, host: str, loop: Any) -> MetricsServer | None:
        """``/metrics`` and ``/healthz`` on ``port`` (0: off); ``/healthz`` says what the Health
        RPC says (``target_health``)."""
        if self.registry is None:
            return None
        self.server = start_metrics_server(self.registry, port, host, lambda: target_health(loop).healthz())
        return self.server


class DraftTelemetry:
    """The draft service's metrics (its round spans need no wiring: the worker opens them when
    a request carries a trace context and this process traces)."""

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        self.metrics = DraftMetrics(self.registry, model_name)
        self.server: MetricsServer | None = None
        self._service: Any = None

    def attach(self, service: Any) -> None:
        """``service``: the ``SpeculationService``; it reports each request and build."""
        self._service = service
        service.metrics = self.metrics
        self.metrics.runner_of = lambda: service.runner  # a handshake may replace the runner

    def serve(self, port: int, host: str) -> MetricsServer | None:
        """``/metrics`` and ``/healthz`` on ``port`` (0: off), after ``attach``."""
        service = self._service

        def health() -> tuple[bool, str]:
            session = service.session_id if service is not None else ""
            return True, f"serving session {session}" if session else "serving, waiting for a target"

        self.server = start_metrics_server(self.registry, port, host, health)
        return self.server
