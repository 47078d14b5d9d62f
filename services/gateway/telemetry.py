"""The gateway's request span: continues the caller's trace and parents the target's.

Why a helper: without tracing the gateway must still pass the caller's W3C headers through, so
a trace stays whole across it; with tracing on (``configure_tracing("saguaro-gateway")``) it
adds its own SERVER span — which target, why, how many attempts — and forwards that span's
context instead. ``forward_metadata`` does the right one of the two.

    span = GatewaySpan.start(headers, api="grpc", model=model)    # at arrival (after authentication)
    span.requested(max_tokens=..., temperature=...)                # once the request is parsed
    metadata = span.forward_metadata()                            # sent to the target
    span.routed(target, policy, reason, prefix_hit_blocks)        # once per attempt (the dispatcher)
    span.first_token()                                            # TTFT, at the first response
    span.finish(prompt_tokens=..., completion_tokens=..., finish_reasons=[...])  # or span.fail(code)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from saguaro.telemetry import attributes as A
from saguaro.telemetry import tracing

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


_REQUEST_ATTRIBUTES = (("max_tokens", A.GEN_AI_MAX_TOKENS), ("temperature", A.GEN_AI_TEMPERATURE),
                       ("top_p", A.GEN_AI_TOP_P), ("top_k", A.GEN_AI_TOP_K), ("seed", A.GEN_AI_SEED))


class GatewaySpan:
    __slots__ = ("span", "_incoming", "_attempts", "_started", "_ttft")

    def __init__(self, span: Any, incoming: list[tuple[str, str]]):
        self.span, self._incoming, self._attempts = span, incoming, 0
        self._started, self._ttft = time.perf_counter(), None

    @classmethod
    def start(cls, headers: Mapping[str, str], api: str, model: str, operation: str = A.TEXT_COMPLETION,
              server: Mapping[str, Any] | None = None, **request: Any) -> GatewaySpan:
        """``headers``: incoming gRPC metadata or HTTP headers (lowercase keys); ``operation``:
        ``gen_ai.operation.name`` (chat for /v1/chat/completions), also forwarded to the target;
        ``server``: ``server.address`` / ``server.port`` (``tracing.server_attributes``);
        ``request``: any of max_tokens, temperature, top_p, top_k, seed (GenAI request attributes)."""
        incoming = [(k, headers[k]) for k in TRACE_HEADERS if k in headers]
        incoming.append((A.OPERATION_METADATA, operation))
        tracer = tracing.tracer()
        if tracer is None:
            return cls(None, incoming)
        from opentelemetry.trace import SpanKind

        attrs: dict[str, Any] = {A.GEN_AI_OPERATION: operation, A.GEN_AI_REQUEST_MODEL: model, A.GATEWAY_API: api,
                                 **(server or {})}
        carrier = {k: v for k, v in incoming if k in TRACE_HEADERS}
        span = tracer.start_span(A.request_span_name(operation, model), context=tracing.context_from_carrier(carrier),
                                 kind=SpanKind.SERVER, attributes=attrs)
        out = cls(span, incoming)
        out.requested(**request)
        return out

    def requested(self, **request: Any) -> None:
        """GenAI request attributes (any of max_tokens, temperature, top_p, top_k, seed; None: absent),
        set once the request is parsed — the span itself starts before, so refusals are traced too."""
        if self.span is not None:
            self.span.set_attributes({name: request[key] for key, name in _REQUEST_ATTRIBUTES
                                      if request.get(key) is not None})

    def forward_metadata(self) -> list[tuple[str, str]]:
        """Metadata for the call to the target: this span's context, else the caller's, and the
        operation (``A.OPERATION_METADATA``) so the target's span names it too."""
        if self.span is None:
            return list(self._incoming)
        operation = [(k, v) for k, v in self._incoming if k == A.OPERATION_METADATA]
        return list(tracing.carrier_for(self.span).items()) + operation

    def routed(self, target: str, policy: str = "", reason: str = "", prefix_hit_blocks: int | None = None) -> None:
        self._attempts += 1
        if self.span is not None:
            attrs: dict[str, Any] = {A.GATEWAY_TARGET: target, A.GATEWAY_ATTEMPTS: self._attempts}
            if policy:
                attrs[A.GATEWAY_POLICY] = policy
            if reason:
                attrs[A.GATEWAY_REASON] = reason
            if prefix_hit_blocks is not None:
                attrs[A.GATEWAY_PREFIX_BLOCKS] = prefix_hit_blocks
            self.span.set_attributes(attrs)

    def first_token(self) -> None:
        """The first response reached the client (only the first call counts): time to first token."""
        if self._ttft is None:
            self._ttft = time.perf_counter() - self._started

    def finish(self, prompt_tokens: int, completion_tokens: int, finish_reasons: Sequence[str]) -> None:
        """End successfully; ``finish_reasons``: one per choice (``stop``, ``length``, ...)."""
        if self.span is None:
            return
        attrs: dict[str, Any] = {A.GEN_AI_INPUT_TOKENS: prompt_tokens, A.GEN_AI_OUTPUT_TOKENS: completion_tokens,
                                 A.GEN_AI_FINISH_REASONS: list(finish_reasons), A.GRPC_STATUS: 0}
        if self._ttft is not None:
            attrs[A.GEN_AI_TTFT] = self._ttft
        self.span.set_attributes(attrs)
        self.span.end()
        self.span = None

    def fail(self, code: str, message: str = "") -> None:
        """End with an error (``code``: a gRPC status name such as RESOURCE_EXHAUSTED, or ``cancelled``)."""
        if self.span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute(A.ERROR_TYPE, code)
        self.span.set_status(Status(StatusCode.ERROR, message or code))
        self.span.end()
        self.span = None
