"""Observability: OpenTelemetry traces of speculation rounds, Prometheus metrics, structured logs.

Modules (imported directly; this package imports nothing so that a service without tracing
never loads ``opentelemetry``):

* ``tracing``     — setup from ``OTEL_*`` env, W3C propagation helpers (gRPC metadata, carriers)
* ``attributes``  — span names and attribute keys (``gen_ai.*``, ``ssd.*``)
* ``rounds``      — the target engine's per-round hook (metrics + ``ssd.round`` spans)
* ``metrics``     — every Prometheus metric definition, and the target/draft/gateway feeders
* ``exposition``  — ``/metrics`` and ``/healthz`` over HTTP
* ``logs``        — text or JSON log lines with trace ids
* ``service``     — wiring for the ``saguaro target`` / ``saguaro draft`` commands
* ``receiver``    — a minimal OTLP trace receiver (tests, benchmarks, local debugging)

Each service's own spans live next to it: ``saguaro.services.target.request_telemetry`` (the
request span, request metrics, one log line per request), ``saguaro.services.draft.telemetry``
(``ssd.speculate`` and its phases), ``saguaro.services.gateway.telemetry`` (the gateway's
request span, or W3C pass-through when it does not trace).

See docs/observability.md.
"""
