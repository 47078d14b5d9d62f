"""OpenTelemetry tracing setup, from the standard ``OTEL_*`` environment; off by default.

Why off by default and behind a module-level tracer: a decode round lasts milliseconds, so
the hooks in the engine and the draft first check ``tracer() is None`` and, when it is,
create no span objects and format no attributes. Nothing from ``opentelemetry`` is imported
until tracing is switched on.

Switched on when any of these is set (and ``OTEL_SDK_DISABLED`` is not ``true``):

* ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (OTLP export);
* ``OTEL_TRACES_EXPORTER`` = ``otlp`` and/or ``console`` (``none`` keeps it off).

The OTLP protocol is ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``
(``grpc``, the default, or ``http/protobuf``); endpoint, headers, timeout and TLS come from the
exporter's own ``OTEL_EXPORTER_OTLP_*`` variables, batching from ``OTEL_BSP_*``, the sampler
from ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default ``parentbased_always_on``),
propagators from ``OTEL_PROPAGATORS`` (default W3C ``tracecontext,baggage``), and the service
name from ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (default: ``saguaro-target``,
``saguaro-draft``, ...). Saguaro adds ``SAGUARO_TRACE_ROUNDS``: the fraction of a sampled
request's decode rounds that get an ``ssd.round`` span (default 1; 0 = request spans only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

ROUND_RATIO_ENV = "SAGUARO_TRACE_ROUNDS"

_tracer: Any = None  # opentelemetry.trace.Tracer while tracing is on, else None
_provider: Any = None


def tracer() -> Any:
    """The process's tracer, or None when tracing is off (the fast path checks this)."""
    return _tracer


def enabled() -> bool:
    return _tracer is not None


def requested(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (see the module docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return any(e.strip() not in ("", "none") for e in exporters.split(","))
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def round_ratio(env: Mapping[str, str] = os.environ) -> float:
    """``SAGUARO_TRACE_ROUNDS`` clamped to [0, 1]; 1 when unset or unreadable."""
    raw = env.get(ROUND_RATIO_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        return min(1.0, max(0.0, float(raw)))
    except ValueError:
        log.warning("ignoring %s=%r: not a number in [0, 1]", ROUND_RATIO_ENV, raw)
        return 1.0


def _exporters(env: Mapping[str, str]) -> list:
    names = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if e.strip()]
    out = []
    for name in names:
        if name == "none":
            continue
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            out.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                        or "grpc").strip().lower()
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            elif protocol in ("http/protobuf", "http"):
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            else:
                raise ValueError(f"unsupported OTLP protocol {protocol!r}: use grpc or http/protobuf")
            out.append(OTLPSpanExporter())
        else:
            raise ValueError(f"unsupported OTEL_TRACES_EXPORTER {name!r}: use otlp, console or none")
    return out


def configure_tracing(service_name: str, env: Mapping[str, str] = os.environ,
                      exporters: Iterable[Any] | None = None, batch: bool = True) -> bool:
    """Turn tracing on for this process if the environment asks for it; True if it is on.

    ``exporters`` bypasses the environment (tests and benchmarks pass an in-memory exporter);
    ``batch=False`` exports each span as it ends (tests that read spans right away).
    Calling it again replaces the previous provider (after flushing it).
    """
    global _tracer, _provider
    from_env = exporters is None
    if from_env:
        if not requested(env):
            return False
        exporters = _exporters(env)
    exporters = list(exporters)
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win over the default
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER(_ARG)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    shutdown_tracing()
    _provider = provider
    _tracer = provider.get_tracer("saguaro")
    if from_env and not _global_set[0]:  # one global provider per process, for other instrumentation
        trace.set_tracer_provider(provider)
        _global_set[0] = True
    log.info("tracing on: service %s, %d exporter(s)", resource.attributes.get(SERVICE_NAME), len(exporters))
    return True


_global_set = [False]


def shutdown_tracing() -> None:
    """Flush and stop the current provider; tracing is off afterwards."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def force_flush(timeout_ms: int = 5000) -> None:
    if _provider is not None:
        _provider.force_flush(timeout_ms)


# -- propagation (W3C Trace Context by default) --------------------------------------------------
def carrier_for(span: Any) -> dict[str, str]:
    """``{"traceparent": ..., ["tracestate": ...]}`` of ``span`` (a text-map carrier)."""
    from opentelemetry import propagate, trace

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def context_from_carrier(carrier: Mapping[str, str]) -> Any:
    """An OTel Context whose current span is the remote parent named by ``carrier``."""
    from opentelemetry import propagate

    return propagate.extract(dict(carrier))


def context_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> Any:
    """The remote parent from gRPC invocation metadata (``traceparent`` / ``tracestate`` keys)."""
    carrier = {k: v for k, v in (metadata or ()) if isinstance(v, str)}
    return context_from_carrier(carrier)


def server_attributes(authority: str | None, host: str, port: int | None) -> dict[str, Any]:
    """``server.address`` / ``server.port`` of a server span (OTel semantic conventions): from the
    authority the client addressed (HTTP ``Host``, gRPC ``:authority``) when known, else the
    address the server listens on (a wildcard one names no server: the host name then)."""
    from saguaro.telemetry.attributes import SERVER_ADDRESS, SERVER_PORT

    if authority:
        name, sep, number = authority.rpartition(":")
        if sep and number.isdigit() and not name.endswith(":"):  # host:port or [v6]:port
            host, port = name.strip("[]"), int(number)
        else:
            host, port = authority.strip("[]"), port
    elif host in ("", "0.0.0.0", "::", "[::]"):
        import socket

        host = socket.gethostname()
    out: dict[str, Any] = {SERVER_ADDRESS: host}
    if port:
        out[SERVER_PORT] = port
    return out


def trace_ids(span: Any) -> tuple[str, str]:
    """(trace id, span id) as lowercase hex, or ("", "") for a missing/invalid span."""
    if span is None:
        return "", ""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
