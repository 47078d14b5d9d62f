"""What the SDK hands back: stream deltas, a request's result, and the small calls' answers.

Results are plain JSON-ready values (a ``GenerateResult`` is the dict ``saguaro generate
--json`` prints), so callers can log or serialise them as they are; the typed accessors are
for code that reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saguaro.v1 import inference_pb2 as pb
from saguaro.wire import PROTO_TO_MODE, STATUS_NAMES


@dataclass
class StreamDelta:
    request_id: str
    token_ids: list[int]
    text: str  # "" while a multi-byte character is incomplete, or when the server has no tokenizer
    offset: int  # completion tokens before this delta
    round: int
    # With the ``logprobs`` option: one TokenLogprob per token (token_id, logprob, top_token_ids,
    # top_logprobs); with ``prompt_logprobs``, the first delta's prompt tokens' (inference.proto).
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[pb.TokenLogprob] = field(default_factory=list)


class GenerateResult(dict):
    """One request's output: a JSON-ready dict (as ``saguaro generate --json`` prints it) with
    typed accessors."""

    @property
    def request_id(self) -> str:
        return self["request_id"]

    @property
    def text(self) -> str:
        return self["text"]

    @property
    def token_ids(self) -> list[int]:
        return self["token_ids"]

    @property
    def finish_reason(self) -> str:
        """"stop", "length", "abort" or "error" (then see ``self.get("error_message")``)."""
        return self["finish_reason"]

    @property
    def usage(self) -> dict[str, int]:
        """``prompt_tokens``, ``completion_tokens``, ``total_tokens`` (tokens, not messages)."""
        return self["usage"]

    @property
    def stats(self) -> dict[str, Any]:
        """Speculation statistics (see ``saguaro.wire.speculation_from_proto``)."""
        return self["stats"]

    @property
    def timings(self) -> dict[str, float]:
        return self["timings"]


def health_json(r: pb.HealthResponse) -> dict[str, Any]:
    return {"status": STATUS_NAMES.get(r.status, "unknown"), "draft_connected": r.draft_connected,
            "mode": PROTO_TO_MODE.get(r.mode, ""), "message": r.message}


def load_json(r: pb.HealthResponse) -> dict[str, Any]:
    return {"num_running": r.num_running, "num_waiting": r.num_waiting, "kv_cache_usage": r.kv_cache_usage,
            "max_num_seqs": r.max_num_seqs, "prefix_cache_queried_tokens": r.prefix_cache_queried_tokens,
            "prefix_cache_hit_tokens": r.prefix_cache_hit_tokens}


def model_info_json(r: pb.ModelInfoResponse) -> dict[str, Any]:
    return {
        "model_name": r.model_name, "architecture": r.architecture, "vocab_size": r.vocab_size,
        "max_model_len": r.max_model_len, "dtype": r.dtype, "decode_mode": PROTO_TO_MODE.get(r.decode_mode, ""),
        "lookahead_k": r.lookahead_k, "fan_out": r.fan_out, "fan_out_list": list(r.fan_out_list),
        "draft_model_name": r.draft_model_name, "has_tokenizer": r.has_tokenizer,
        "eos_token_ids": list(r.eos_token_ids),
    }
