"""The target's request-level telemetry: the request span, request metrics, one log line.

Why in the gRPC handler thread and not the engine loop: time to first token and inter-token
latency are measured where the tokens leave for the client, and everything here (histogram
observations, span attributes, log formatting) then costs the engine loop nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from saguaro.telemetry import attributes as A
from saguaro.telemetry import tracing

if TYPE_CHECKING:
    from saguaro.telemetry.metrics import TargetMetrics

log = logging.getLogger("saguaro.requests")

PROVIDER = "saguaro"


class RequestTelemetry:
    """One per target service."""

    def __init__(self, model_name: str, metrics: TargetMetrics | None = None, tracer: Any = None):
        self.model_name = model_name
        self.metrics = metrics
        self._tracer = tracer if tracer is not None else tracing.tracer()
        self._server: dict[str, Any] = {}  # server.address / server.port, once listening

    def listening(self, address: str, port: int) -> None:
        """The service listens on ``address`` ("host:port" or "unix:/path"), bound to ``port``:
        ``server.address`` / ``server.port`` of every request span."""
        if address.startswith("unix:"):
            self._server = {A.SERVER_ADDRESS: address[len("unix:"):]}
        else:
            self._server = tracing.server_attributes(None, address.rpartition(":")[0].strip("[]"), port)

    def start(self, request_id: str, metadata: Iterable[tuple[str, Any]] | None, arrival: float) -> RequestRecord:
        """Begin a request; its span continues the caller's trace (``traceparent`` metadata)."""
        span = None
        if self._tracer is not None:
            from opentelemetry.trace import SpanKind

            metadata = list(metadata or ())
            operation = A.operation_from_metadata(metadata)  # chat when the gateway served /v1/chat/completions
            span = self._tracer.start_span(
                A.request_span_name(operation, self.model_name), context=tracing.context_from_metadata(metadata),
                kind=SpanKind.SERVER,
                attributes={A.GEN_AI_OPERATION: operation, A.GEN_AI_PROVIDER: PROVIDER,
                            A.GEN_AI_REQUEST_MODEL: self.model_name, A.GEN_AI_RESPONSE_ID: request_id,
                            **self._server},
            )
        return RequestRecord(self, request_id, arrival, span)


class RequestRecord:
    """What one request's telemetry needs between its first and last message."""

    __slots__ = ("owner", "request_id", "arrival", "span", "prompt_tokens", "_last", "_done")

    def __init__(self, owner: RequestTelemetry, request_id: str, arrival: float, span: Any):
        self.owner, self.request_id, self.arrival, self.span = owner, request_id, arrival, span
        self.prompt_tokens = 0
        self._last: float | None = None  # when the engine step of the previous delta ended
        self._done = False

    @property
    def span_context(self) -> Any:
        """The request span's context (the parent of its rounds), or None without tracing."""
        return self.span.get_span_context() if self.span is not None else None

    def admitted(self, prompt_tokens: int, params: Any) -> None:
        self.prompt_tokens = prompt_tokens
        if self.span is not None:
            attrs = {A.GEN_AI_MAX_TOKENS: params.max_tokens, A.GEN_AI_TEMPERATURE: params.temperature,
                     A.GEN_AI_TOP_P: params.top_p, A.GEN_AI_TOP_K: params.top_k}
            if params.seed is not None:
                attrs[A.GEN_AI_SEED] = params.seed
            self.span.set_attributes(attrs)

    def delta(self, tokens: int, step_time: float) -> None:
        """``tokens`` new completion tokens, committed by the engine step that ended at
        ``step_time`` (perf_counter), are being sent to the client.

        Inter-token latency is observed once per such step after the first, as the gap since
        the request's previous output step — vLLM v1's definition (one observation per engine
        step that emits tokens for the request), so a speculative round that commits several
        tokens counts once and the histogram compares with vLLM's. Time to first token is taken
        when the first tokens leave (what the client sees).
        """
        m = self.owner.metrics
        if self._last is None:
            if m is not None:
                m.ttft.observe(time.perf_counter() - self.arrival)
                m.prompt_tokens.inc(self.prompt_tokens)
            if self.span is not None:
                self.span.add_event(A.FIRST_TOKEN_EVENT)
        elif m is not None and tokens:
            m.itl.observe(step_time - self._last)
        if m is not None and tokens:
            m.generation_tokens.inc(tokens)
        if tokens:
            self._last = step_time

    def finish(self, final: Any) -> None:
        """The request ended with ``final`` (the engine loop's Final): metrics, span, log line."""
        if self._done:
            return
        self._done = True
        stats, timings = final.stats, final.timings
        m = self.owner.metrics
        if m is not None:
            m.e2e.observe(timings.get("total_s", 0.0))
            m.phases(timings)
            m.lengths(timings, final.prompt_tokens, final.completion_tokens)
            m.finished(final.finish_reason)
        trace_id, span_id = tracing.trace_ids(self.span)
        if self.span is not None:
            self.span.set_attributes(_span_summary(final))
            if final.finish_reason == "error":
                from opentelemetry.trace import Status, StatusCode

                self.span.set_status(Status(StatusCode.ERROR, final.error_message or "engine error"))
                self.span.set_attribute(A.ERROR_TYPE, "engine_error")
            self.span.end()
        _log_finished(self.request_id, final.prompt_tokens, final.completion_tokens, final.finish_reason, stats,
                      timings.get("time_to_first_token_s", 0.0), timings.get("total_s", 0.0), trace_id, span_id)

    def fail(self, error_type: str, message: str = "") -> None:
        """The request ended without a Final (refused, cancelled by the client, server error)."""
        if self._done:
            return
        self._done = True
        m = self.owner.metrics
        if m is not None and error_type == "cancelled":
            m.finished("abort")
        trace_id, span_id = tracing.trace_ids(self.span)
        if self.span is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_attribute(A.ERROR_TYPE, error_type)
            self.span.set_status(Status(StatusCode.ERROR, message or error_type))
            self.span.end()
        duration = time.perf_counter() - self.arrival
        log.info("request %s failed: error=%s duration_s=%.4f trace_id=%s %s", self.request_id, error_type, duration,
                 trace_id, message, extra={"fields": {
                     "event": "request_failed", "request_id": self.request_id, "error": error_type,
                     "message": message, "duration_s": round(duration, 6), "trace_id": trace_id,
                     "span_id": span_id}})


def error_type(exc: BaseException, context: Any) -> str:
    """A short ``error.type`` for an exception that ended a Generate handler."""
    if isinstance(exc, GeneratorExit):
        return "cancelled"
    code = getattr(context, "code", lambda: None)()
    if code is not None and hasattr(code, "name"):
        return code.name
    return type(exc).__name__


def _span_summary(final: Any) -> dict[str, Any]:
    stats, timings = final.stats, final.timings
    accepted = stats.get("accepted_per_position", [])
    return {
        A.GEN_AI_FINISH_REASONS: [final.finish_reason],
        A.GEN_AI_INPUT_TOKENS: final.prompt_tokens,
        A.GEN_AI_OUTPUT_TOKENS: final.completion_tokens,
        A.GEN_AI_TTFT: timings.get("time_to_first_token_s", 0.0),
        A.GEN_AI_E2E: timings.get("total_s", 0.0),
        A.GEN_AI_QUEUE: timings.get("queue_s", 0.0),
        A.SSD_MODE: stats.get("mode", "ar"),
        A.SSD_TRANSPORT: stats.get("transport", "none"),
        A.SSD_ROUNDS: stats.get("rounds", 0),
        A.SSD_SPEC_ROUNDS: stats.get("spec_rounds", 0),
        A.SSD_DRAFT_TOKENS: stats.get("spec_rounds", 0) * stats.get("lookahead_k", 0),
        A.SSD_ACCEPTED_TOKENS: sum(accepted),
        A.SSD_CACHE_HITS: stats.get("cache_hits", 0),
        A.SSD_CACHE_MISSES: stats.get("cache_misses", 0),
        A.SSD_BACKUPS_JIT: stats.get("backups_jit", 0),
        A.SSD_BACKUPS_FAST: stats.get("backups_fast", 0),
        A.SSD_FALLBACK_ROUNDS: stats.get("fallback_rounds", 0),
        A.SSD_TOKENS_PER_ROUND: float(stats.get("tokens_per_round", 0.0)),
    }


def _log_finished(request_id: str, prompt: int, completion: int, reason: str, stats: dict, ttft: float,
                  duration: float, trace_id: str, span_id: str) -> None:
    mode = stats.get("mode", "ar")
    tpr = float(stats.get("tokens_per_round", 0.0))
    hit_rate = float(stats.get("cache_hit_rate", 0.0))
    log.info(
        "request %s finished: prompt_tokens=%d completion_tokens=%d finish_reason=%s mode=%s tokens_per_round=%.2f "
        "cache_hit_rate=%.2f ttft_s=%.4f duration_s=%.4f trace_id=%s",
        request_id, prompt, completion, reason, mode, tpr, hit_rate, ttft, duration, trace_id or "-",
        extra={"fields": {
            "event": "request_finished", "request_id": request_id, "prompt_tokens": prompt,
            "completion_tokens": completion, "finish_reason": reason, "mode": mode,
            "transport": stats.get("transport", "none"), "rounds": stats.get("rounds", 0),
            "tokens_per_round": round(tpr, 4), "cache_hit_rate": round(hit_rate, 4), "ttft_s": round(ttft, 6),
            "duration_s": round(duration, 6), "trace_id": trace_id, "span_id": span_id,
        }},
    )
