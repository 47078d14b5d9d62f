"""The rules a generation request must satisfy, in one place for every front that checks them.

Three fronts refuse bad requests: the gateway (before a request costs a target anything), the
target service (for callers that reach it directly) and the engine (``SamplingParams.validate``
and ``RequestTracker``, for the Python API). They apply the rules below, so what one accepts
the others accept too. Each front words a sampling refusal for its own callers (the gateway
names the request field it came in), so those rules are predicates here; the vocabulary refusal
reads the same everywhere, so it is raised here. Torch-free: the gateway imports it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from saguaro.errors import InvalidRequestError


def check_token_ids(what: str, ids: Iterable[int], vocab_size: int) -> None:
    """Refuse token ids outside ``[0, vocab_size)``: they would index past the embedding.

    ``what`` starts the message ("prompt token ids", "stop_token_ids", ...); the first five
    offending ids are named."""
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError(f"{what} {bad[:5]} are outside the vocabulary [0, {vocab_size})")


def valid_temperature(value: float) -> bool:
    """A (target or draft) temperature is finite and >= 0 (0: greedy). NaN would sample garbage
    (it once sampled token 0 forever); infinity is no distribution."""
    return math.isfinite(value) and value >= 0


def valid_top_p(value: float) -> bool:
    """Nucleus mass in (0, 1]: 0 would keep no token (on the wire 0 means off: see
    ``top_p_from_proto``)."""
    return 0 < value <= 1


def top_p_from_proto(value: float) -> float:
    """``SamplingParams.top_p`` of inference.proto: its zero value means off, which is 1."""
    return value if value != 0 else 1.0


def prompt_leaves_room(prompt_tokens: int, max_model_len: int) -> bool:
    """A prompt must leave the context room for at least one generated token."""
    return prompt_tokens < max_model_len


def fits_context(total_tokens: int, max_model_len: int) -> bool:
    """Prompt plus resumed tokens (a migrated stream) must fit the model's context."""
    return total_tokens <= max_model_len
