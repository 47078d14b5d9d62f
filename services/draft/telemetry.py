"""The draft's telemetry: its side of a traced round, and what ``saguaro draft`` exports.

``DraftTelemetry`` wires the metrics (``/metrics``, ``/healthz``) that the command line asks for.
The rest of this module is the ``ssd.speculate`` span and its phase children.

One span per traced round, child of the target's ``ssd.round`` (its context arrives inside
the SpeculateRequest). It runs from the request's arrival to the end of the cache build that
follows the reply, because that build is the work SSD hides behind verification:

    ssd.speculate
      ssd.lookup   sync committed tokens, speculation-cache lookups
      ssd.backup   JIT drafting / placeholders for the misses (only if a row missed)
      ssd.glue     glue forward over [r, s_1..s_K]
      ssd.fork     top-F_j fork candidates
      ssd.tree     K-step tree decode and cache store

Why marks instead of nested ``with`` blocks: the worker's code stays as it is, the phases cost
one ``time_ns()`` each, and the child spans are created once, at the end, with their recorded
start and end times. An untraced round (no context in the request, or tracing off in this
process) never gets here: ``round_trace`` returns None and the worker skips every mark.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from saguaro.speculative.backup import Backup
from saguaro.telemetry import attributes as A
from saguaro.telemetry import tracing
from saguaro.telemetry.exposition import MetricsServer, start_metrics_server
from saguaro.telemetry.metrics import DraftMetrics


def round_trace(carrier: Mapping[str, str], k: int) -> DraftRoundTrace | None:
    """Open ``ssd.speculate`` under the target's round, if this process traces."""
    tracer = tracing.tracer()
    if tracer is None:
        return None
    parent = tracing.context_from_carrier(carrier)
    span = tracer.start_span(A.SPECULATE_SPAN, context=parent, attributes={A.SSD_K: k})
    if not span.is_recording():
        span.end()
        return None
    return DraftRoundTrace(tracer, span)


class DraftRoundTrace:
    def __init__(self, tracer: Any, span: Any):
        self._tracer = tracer
        self.span = span
        self._cursor = span.start_time
        self._phases: list[tuple[str, int, int]] = []

    def mark(self, phase: str | None) -> None:
        """End the phase that started at the previous mark; ``None`` skips that stretch."""
        now = time.time_ns()
        if phase is not None:
            self._phases.append((phase, self._cursor, now))
        self._cursor = now

    def replied(self, reply: Any, batch: int) -> None:
        """Record the reply's row outcomes (a ``SpeculateReply``)."""
        hits = backup = 0
        for row in reply.rows:
            hits += row.hit
            backup = backup or row.backup
        t = reply.timings
        self.span.set_attributes({
            A.SSD_BATCH_SIZE: batch,
            A.SSD_CACHE_HITS: hits,
            A.SSD_CACHE_MISSES: batch - hits,
            A.SSD_BACKUP: Backup(backup).label,
            A.SSD_DRAFT_LOOKUP: t.lookup_us / 1e6,
            A.SSD_DRAFT_BACKUP: t.backup_us / 1e6,
            A.SSD_DRAFT_IDLE: t.idle_us / 1e6,
        })

    def end(self, fan_out_hit: list[int] | None = None, fan_out_miss: list[int] | None = None,
            branches: int = 0, error: str = "") -> None:
        """Close the round: children from the marks, build attributes, the span itself."""
        from opentelemetry import trace

        parent = trace.set_span_in_context(self.span)
        build = 0
        for name, start, end in self._phases:
            child = self._tracer.start_span(name, context=parent, start_time=start)
            child.end(end_time=end)
            if name in (A.GLUE_SPAN, A.FORK_SPAN, A.TREE_SPAN):
                build += end - start
        attrs: dict[str, Any] = {A.SSD_DRAFT_BUILD: build / 1e9}
        if fan_out_hit is not None:
            attrs[A.SSD_FAN_OUT] = list(fan_out_hit)
        if fan_out_miss is not None:
            attrs[A.SSD_FAN_OUT_MISS] = list(fan_out_miss)
        if branches:
            attrs[A.SSD_TREE_BRANCHES] = branches
        self.span.set_attributes(attrs)
        if error:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end()


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

    def serve(self, port: int, host: str, labels: Mapping[str, str] | None = None) -> MetricsServer | None:
        """``/metrics`` and ``/healthz`` on ``port`` (0: off), after ``attach``; ``labels``
        (``--metrics-label``) go on every series."""
        service = self._service

        def health() -> tuple[bool, str]:
            session = service.session_id if service is not None else ""
            return True, f"serving session {session}" if session else "serving, waiting for a target"

        self.server = start_metrics_server(self.registry, port, host, health, labels)
        return self.server
