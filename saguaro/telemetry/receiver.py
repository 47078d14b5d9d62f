"""A minimal OTLP/gRPC trace receiver that keeps spans in memory.

Why it exists: tests and the tracing benchmark need the spans real service processes export
over the real OTLP exporter, without running a collector. Point a service at it with
``OTEL_EXPORTER_OTLP_ENDPOINT=<receiver.endpoint>``. Also handy locally:

    python -m saguaro.telemetry.receiver --port 4317   # prints one line per span
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class ReceivedSpan:
    name: str
    service: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    kind: int  # opentelemetry.proto SpanKind value (2 = SERVER, 1 = INTERNAL, 3 = CLIENT)
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    links: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (trace_id, span_id, attrs)
    events: list[str] = field(default_factory=list)
    status_code: int = 0  # 0 unset, 1 ok, 2 error


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Serves ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` on 127.0.0.1."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", on_span: Callable[[ReceivedSpan], None] | None = None):
        self._spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        self._on_span = on_span
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        self.endpoint = f"http://{host}:{self.port}"
        self._server.start()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC naming)
        received = []
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    received.append(ReceivedSpan(
                        name=s.name, service=service, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(), kind=s.kind, start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano, attributes=_attributes(s.attributes),
                        links=[(link.trace_id.hex(), link.span_id.hex(), _attributes(link.attributes)) for link in s.links],
                        events=[e.name for e in s.events], status_code=s.status.code,
                    ))
        with self._changed:
            self._spans.extend(received)
            self._changed.notify_all()
        if self._on_span is not None:
            for span in received:
                self._on_span(span)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0) -> list[ReceivedSpan]:
        """Block until ``done(spans)`` holds (or ``timeout`` passes); return the spans."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self._spans):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return list(self._spans)

    def stop(self) -> None:
        self._server.stop(grace=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=4317)
    parser.add_argument("--quiet", action="store_true", help="count spans instead of printing them")
    args = parser.parse_args()

    def show(s: ReceivedSpan) -> None:
        ms = (s.end_ns - s.start_ns) / 1e6
        print(f"{s.service:<16} {s.name:<28} {ms:9.3f} ms trace {s.trace_id} span {s.span_id} "
              f"parent {s.parent_span_id or '-':<16} {s.attributes}", flush=True)

    receiver = OtlpReceiver(args.port, on_span=None if args.quiet else show)
    print(f"OTLP trace receiver on {receiver.endpoint}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        receiver.stop()


if __name__ == "__main__":
    main()
