"""The gateway's Prometheus metrics (served on the HTTP port at /metrics).

One registry per gateway (several may run in one process: tests, benchmarks). Names follow
``saguaro_gateway_*``; the prefix-index hit counters come from ``saguaro.telemetry.metrics``
(shared definitions the dashboards use). Per-target series are removed when the target leaves.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from saguaro.services.gateway.breaker import BreakerState
from saguaro.telemetry.exposition import exposition

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class GatewayMetrics:
    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        self.labels = dict(labels or {})  # --metrics-label: on every series, with inference_server
        r = self.registry = CollectorRegistry()
        self.requests = Counter("saguaro_gateway_requests", "Requests answered, by API and outcome (gRPC code name).",
                                ["api", "code"], registry=r)
        self.duration = Histogram("saguaro_gateway_request_duration_seconds", "Arrival to last byte.", ["api"],
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("saguaro_gateway_time_to_first_token_seconds", "Arrival to first token sent.", ["api"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("saguaro_gateway_tokens", "Tokens of answered requests (prompt / completion).",
                              ["kind"], registry=r)
        self.inflight = Gauge("saguaro_gateway_inflight_requests", "Requests being served.", registry=r)
        self.queued = Gauge("saguaro_gateway_queued_requests",
                            "Requests admitted and waiting for their first token (bounded by --max-queue).", registry=r)
        self.retries = Counter("saguaro_gateway_retries", "Requests re-sent to another target before the first token.",
                               registry=r)
        self.migrations = Counter("saguaro_gateway_migrations",
                                  "Mid-stream target failures by what became of the request: resumed on another "
                                  "target, exhausted (--max-migrations spent), failed (no target took it over), "
                                  "unsupported (the new target does not resume streams).", ["outcome"], registry=r)
        self.decisions = Counter("saguaro_gateway_routing_decisions", "Routing decisions by policy and reason.",
                                 ["policy", "reason"], registry=r)
        self.routing_time = Histogram("saguaro_gateway_routing_duration_seconds",
                                      "Time to pick a target (index lookup included).", buckets=_FAST_BUCKETS, registry=r)
        self.index_lookup_time = Histogram("saguaro_gateway_prefix_index_lookup_seconds", "Prefix-index lookup latency.",
                                           ["backend"], buckets=_FAST_BUCKETS, registry=r)
        self.index_available = Gauge("saguaro_gateway_prefix_index_available",
                                     "1 while the prefix index is usable; 0: routing by load only.", ["backend"],
                                     registry=r)
        self.index_resyncs = Counter("saguaro_gateway_prefix_index_resyncs",
                                     "Snapshots taken from a target (first connect, gap, index loss).", registry=r)
        self.target_healthy = Gauge("saguaro_gateway_target_healthy", "1 if the target answers Health and serves.",
                                    ["target"], registry=r)
        self.target_inflight = Gauge("saguaro_gateway_target_inflight_requests", "This gateway's requests per target.",
                                     ["target"], registry=r)
        self.circuit_state = Gauge("saguaro_gateway_target_circuit_state",
                                   "Circuit breaker per target: 0 closed, 1 half-open, 2 open.", ["target"], registry=r)
        self.circuit_transitions = Counter("saguaro_gateway_target_circuit_transitions",
                                           "Circuit breaker state changes per target.", ["target", "state"], registry=r)
        self._prefix = None  # saguaro.telemetry GatewayMetrics, once the model name is known

    def prefix_lookup(self, model_name: str, hit: bool) -> None:
        if self._prefix is None:
            from saguaro.telemetry.metrics import GatewayMetrics as SharedGatewayMetrics

            self._prefix = SharedGatewayMetrics(self.registry, model_name)
        self._prefix.lookup(hit)

    def circuit_changed(self, target: str, state: BreakerState) -> None:
        self.circuit_state.labels(target).set(int(state))
        self.circuit_transitions.labels(target, state.name.lower()).inc()

    def target_added(self, target: str) -> None:
        self.target_healthy.labels(target).set(0)
        self.target_inflight.labels(target).set(0)
        self.circuit_state.labels(target).set(int(BreakerState.CLOSED))
        # Transition counters exist from the start at 0: a healthy target's panel reads "0
        # transitions", and increase() has a baseline for the first one (a series born at 1 hides it).
        for state in BreakerState:
            self.circuit_transitions.labels(target, state.name.lower())

    def target_removed(self, target: str) -> None:
        for gauge in (self.target_healthy, self.target_inflight, self.circuit_state):
            try:
                gauge.remove(target)
            except KeyError:
                pass
        for state in BreakerState:
            try:
                self.circuit_transitions.remove(target, state.name.lower())
            except KeyError:
                pass

    def exposition(self) -> bytes:
        return exposition(self.registry, self.labels)
