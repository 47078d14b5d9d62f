"""Observability: OpenTelemetry traces of speculation rounds, Prometheus metrics, structured logs.

Modules (imported directly; this package imports nothing so that a service without tracing
never loads ``opentelemetry``):

* ``tracing``     — setup from ``OTEL_*`` env, W3C propagation helpers (gRPC metadata, carriers)
* ``attributes``  — span names and attribute keys (``gen_ai.*``, ``ssd.*``)
* ``metrics``     — every Prometheus metric definition, and the target/draft/gateway feeders
* ``exposition``  — ``/metrics`` and ``/healthz`` over HTTP
* ``logs``        — text or JSON log lines with trace ids
* ``receiver``    — a minimal OTLP trace receiver (tests, benchmarks, local debugging)

Each service's own telemetry lives next to it: ``saguaro.services.target.telemetry`` (what
``saguaro target`` exports), ``…target.request_telemetry`` (the request span, request metrics,
one log line per request), ``…target.round_telemetry`` (the per-round hook: metrics and
``ssd.round`` spans), ``saguaro.services.draft.telemetry`` (``ssd.speculate`` and its phases,
what ``saguaro draft`` exports), ``saguaro.services.gateway.telemetry`` (the gateway's request
span, or W3C pass-through when it does not trace).

See docs/observability.md.
"""
