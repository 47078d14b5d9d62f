"""What the SDK hands back: stream deltas, a request's result, and the small calls' answers.

Typed dataclasses, so that an IDE completes their fields and a misspelt one is an
``AttributeError``; each has ``to_json()``, the JSON-ready dict a caller logs or serialises
(``GenerateResult.to_json()`` is what ``saguaro generate --json`` prints, the offline API's shape).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from saguaro.v1 import inference_pb2 as pb
from saguaro.wire import PROTO_TO_MODE, STATUS_NAMES


@dataclass(frozen=True)
class Usage:
    """Counted in tokens, never in stream messages (inference.proto ``Usage``)."""

    prompt_tokens: int
    completion_tokens: int  # a resumed request's included
    total_tokens: int  # prompt_tokens + completion_tokens
    # Of prompt_tokens, those whose KV came from the target's prefix cache (not computed for this
    # request): the HTTP API's usage.prompt_tokens_details.cached_tokens.
    cached_prompt_tokens: int = 0

    @classmethod
    def from_proto(cls, usage: pb.Usage) -> Usage:
        return cls(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_prompt_tokens)

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Timings:
    """Server-side timings in seconds from the request's arrival (the last server's, after a
    resume), and the decode rate they imply."""

    time_to_first_token_s: float
    total_s: float
    decode_tokens_per_s: float  # (completion tokens - 1) / (total_s - time_to_first_token_s); 0 for one token
    queue_s: float

    @classmethod
    def from_proto(cls, timings: pb.Timings, completion_tokens: int) -> Timings:
        decode_time = timings.total_s - timings.time_to_first_token_s
        rate = (completion_tokens - 1) / decode_time if completion_tokens > 1 and decode_time > 0 else 0.0
        return cls(timings.time_to_first_token_s, timings.total_s, rate, timings.queue_s)

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class TokenLogprob:
    """One position's log probabilities (the ``logprobs`` / ``prompt_logprobs`` options): the
    token there and the most likely tokens, most likely first. Named as the offline API's
    (``saguaro.logprobs.TokenLogprob``), so both print the same JSON."""

    token_id: int
    logprob: float
    top_ids: list[int]
    top_logprobs: list[float]  # one per top_ids entry

    @classmethod
    def from_proto(cls, entries) -> list[TokenLogprob]:
        """Each of ``entries`` (inference.proto ``TokenLogprob`` messages)."""
        return [cls(e.token_id, e.logprob, list(e.top_token_ids), list(e.top_logprobs)) for e in entries]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _logprobs_json(entries: list[TokenLogprob] | None) -> list[dict[str, Any]] | None:
    return None if entries is None else [e.to_json() for e in entries]


@dataclass
class StreamDelta:
    """New completion tokens of one choice, as they arrive."""

    request_id: str
    token_ids: list[int]
    text: str  # "" while a multi-byte character is incomplete, or when the server has no tokenizer
    offset: int  # the choice's completion tokens before this delta
    round: int
    # With the ``logprobs`` option: one per token; with ``prompt_logprobs``, the first delta's
    # prompt tokens' (from the second: inference.proto ``TokenDelta``).
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    index: int = 0  # the choice it belongs to (0 unless the request asked for n > 1)

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "index": self.index, "token_ids": self.token_ids, "text": self.text,
                "offset": self.offset, "round": self.round, "logprobs": _logprobs_json(self.logprobs),
                "prompt_logprobs": _logprobs_json(self.prompt_logprobs)}


@dataclass
class GenerateResult:
    """One request's output (one choice's, with ``n`` > 1)."""

    request_id: str
    prompt_token_ids: list[int]  # the prompt as sent; empty for a text prompt (the server encoded it)
    token_ids: list[int]  # completion tokens, a resumed request's included
    text: str  # their text ("" when the server has no tokenizer), cut at a stop string
    finish_reason: str  # "stop", "length", "abort" or "error" (then see error_message)
    timings: Timings
    # Speculation statistics, keyed as the offline engine's per-request record
    # (``saguaro.wire.speculation_from_proto``: mode, rounds, tokens_per_round, acceptance_per_position, ...).
    stats: dict[str, Any]
    usage: Usage
    stop_token_id: int | None = None  # the EOS / stop token that ended it (finish_reason "stop")
    stop_string: str | None = None  # the stop string (the ``stop`` option) that ended it
    # With the ``logprobs`` option, one per completion token; with ``prompt_logprobs``, the prompt
    # tokens' (from the second); None when not asked for.
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    error_message: str = ""  # set with finish_reason "error"
    index: int | None = None  # the choice's index (0 to n - 1) when the request asked for n > 1; else None

    @property
    def stop_reason(self) -> int | str | None:
        """What stopped a "stop" result: the stop token's id or the stop string (vLLM's
        ``stop_reason``); None when EOS ended it, or it did not stop."""
        return self.stop_string if self.stop_string is not None else self.stop_token_id

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``saguaro generate --json`` prints. ``stop_token_id``, ``error_message``
        and ``index`` appear only when set."""
        out: dict[str, Any] = {
            "request_id": self.request_id, "prompt_token_ids": self.prompt_token_ids, "token_ids": self.token_ids,
            "text": self.text, "finish_reason": self.finish_reason, "timings": self.timings.to_json(),
            "stats": self.stats, "usage": self.usage.to_json(),
        }
        if self.stop_token_id is not None:
            out["stop_token_id"] = self.stop_token_id
        out["stop_string"] = self.stop_string
        out["logprobs"], out["prompt_logprobs"] = _logprobs_json(self.logprobs), _logprobs_json(self.prompt_logprobs)
        if self.error_message:
            out["error_message"] = self.error_message
        if self.index is not None:
            out["index"] = self.index
        return out


@dataclass(frozen=True)
class Health:
    """Whether the server serves, and how (inference.proto ``HealthResponse``)."""

    status: str  # "serving", "degraded" (no draft: AR fallback), "not_serving" or "unknown"
    draft_connected: bool
    mode: str  # the mode a request gets by default right now: "ssd", "sd", "ar"
    message: str  # why degraded / not serving

    @classmethod
    def from_proto(cls, r: pb.HealthResponse) -> Health:
        return cls(STATUS_NAMES.get(r.status, "unknown"), r.draft_connected, PROTO_TO_MODE.get(r.mode, ""), r.message)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Load:
    """The server's load (a gateway's: summed over its healthy targets), from ``Health``."""

    num_running: int  # requests being decoded
    num_waiting: int  # admitted, not scheduled yet
    kv_cache_usage: float  # fraction of KV-cache blocks held, in [0, 1]
    max_num_seqs: int  # capacity: most requests decoded together
    prefix_cache_queried_tokens: int  # since start: prompt tokens looked up in the prefix cache ...
    prefix_cache_hit_tokens: int  # ... and of those, found there

    @classmethod
    def from_proto(cls, r: pb.HealthResponse) -> Load:
        return cls(r.num_running, r.num_waiting, r.kv_cache_usage, r.max_num_seqs, r.prefix_cache_queried_tokens,
                   r.prefix_cache_hit_tokens)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    """The served model and how it is decoded (inference.proto ``ModelInfoResponse``)."""

    model_name: str
    architecture: str
    vocab_size: int
    max_model_len: int
    dtype: str  # "bfloat16", "float16", "float32"
    decode_mode: str  # the server's default: "ssd", "sd", "ar"
    lookahead_k: int  # K (0 without speculation)
    fan_out: int
    fan_out_list: list[int]  # per-depth fan-out (K + 1 entries) when speculating
    draft_model_name: str  # "" without a draft
    has_tokenizer: bool  # text prompts and delta text are available
    eos_token_ids: list[int]

    @classmethod
    def from_proto(cls, r: pb.ModelInfoResponse) -> ModelInfo:
        return cls(r.model_name, r.architecture, r.vocab_size, r.max_model_len, r.dtype,
                   PROTO_TO_MODE.get(r.decode_mode, ""), r.lookahead_k, r.fan_out, list(r.fan_out_list),
                   r.draft_model_name, r.has_tokenizer, list(r.eos_token_ids))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
