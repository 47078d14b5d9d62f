"""The gateway's request span: continues the caller's trace and parents the target's.

Why a helper: without tracing the gateway must still pass the caller's W3C headers through, so
a trace stays whole across it; with tracing on (``configure_tracing("saguaro-gateway")``) it
adds its own SERVER span — which target, why, how many attempts — and forwards that span's
context instead. ``forward_metadata`` does the right one of the two.

    span = GatewaySpan.start(headers, api="grpc", model=model, max_tokens=..., temperature=...)
    dispatch = preparer.dispatch(..., span.forward_metadata())
    span.routed(target, policy, reason, prefix_hit_blocks)        # once per attempt
    span.finish(prompt_tokens=..., completion_tokens=..., finish_reason=..., ttft_s=...)  # or span.fail(code)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saguaro.telemetry import attributes as A
from saguaro.telemetry import tracing

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


class GatewaySpan:
    __slots__ = ("span", "_incoming", "_attempts")

    def __init__(self, span: Any, incoming: list[tuple[str, str]]):
        self.span, self._incoming, self._attempts = span, incoming, 0

    @classmethod
    def start(cls, headers: Mapping[str, str], api: str, model: str, **request: Any) -> GatewaySpan:
        """``headers``: incoming gRPC metadata or HTTP headers (lowercase keys); ``request``: any of
        max_tokens, temperature, top_p, top_k, seed (GenAI request attributes)."""
        incoming = [(k, headers[k]) for k in TRACE_HEADERS if k in headers]
        tracer = tracing.tracer()
        if tracer is None:
            return cls(None, incoming)
        from opentelemetry.trace import SpanKind

        attrs: dict[str, Any] = {A.GEN_AI_OPERATION: A.OPERATION, A.GEN_AI_REQUEST_MODEL: model, A.GATEWAY_API: api}
        for key, name in (("max_tokens", A.GEN_AI_MAX_TOKENS), ("temperature", A.GEN_AI_TEMPERATURE),
                          ("top_p", A.GEN_AI_TOP_P), ("top_k", A.GEN_AI_TOP_K), ("seed", A.GEN_AI_SEED)):
            if request.get(key) is not None:
                attrs[name] = request[key]
        span = tracer.start_span(A.request_span_name(model), context=tracing.context_from_carrier(dict(incoming)),
                                 kind=SpanKind.SERVER, attributes=attrs)
        return cls(span, incoming)

    def forward_metadata(self) -> list[tuple[str, str]]:
        """Trace metadata for the call to the target: this span's context, else the caller's."""
        if self.span is None:
            return list(self._incoming)
        return list(tracing.carrier_for(self.span).items())

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

    def finish(self, prompt_tokens: int, completion_tokens: int, finish_reason: str, ttft_s: float | None = None) -> None:
        if self.span is None:
            return
        attrs: dict[str, Any] = {A.GEN_AI_INPUT_TOKENS: prompt_tokens, A.GEN_AI_OUTPUT_TOKENS: completion_tokens,
                                 A.GEN_AI_FINISH_REASONS: [finish_reason], A.GRPC_STATUS: 0}
        if ttft_s is not None:
            attrs[A.GEN_AI_TTFT] = ttft_s
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
