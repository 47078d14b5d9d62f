"""The rules a generation request must satisfy, in one place for every front that checks them.

Three fronts refuse bad requests: the gateway (before a request costs a target anything), the
target service (for callers that reach it directly) and the engine (``SamplingParams.validate``
and ``RequestTracker``, for the Python API). They apply the rules below, so what one accepts
the others accept too. Each front words a sampling refusal for its own callers (the gateway
names the request field it came in), so those rules are predicates here; the vocabulary refusal
reads the same everywhere, so it is raised here, as are the stop-string limits (their only name
is ``stop`` on every front). Torch-free: the gateway imports it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from saguaro.errors import InvalidRequestError


def check_token_ids(what: str, ids: Iterable[int], vocab_size: int) -> None:
    """Refuse token ids outside ``[0, vocab_size)``: they would index past the embedding.

    ``what`` starts the message ("prompt token ids", "stop_token_ids", ...); the first five
    offending ids are named."""
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError(f"{what} {bad[:5]} are outside the vocabulary [0, {vocab_size})")


MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256  # bounds the text held back and searched per token (saguaro/stop_strings.py)


def check_stop_strings(stops: Sequence[str]) -> None:
    """Refuse more than ``MAX_STOP_STRINGS`` stop strings, or one that is empty (it would match
    before any text) or longer than ``MAX_STOP_STRING_CHARS`` characters."""
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidRequestError(f"stop: at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
    for i, stop in enumerate(stops):
        if not isinstance(stop, str) or not stop:
            raise InvalidRequestError(f"stop[{i}] must be a non-empty string")
        if len(stop) > MAX_STOP_STRING_CHARS:
            raise InvalidRequestError(f"stop[{i}] is {len(stop)} characters long; at most "
                                      f"{MAX_STOP_STRING_CHARS} are allowed")


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


MAX_LOGPROBS = 20  # most alternatives per position: vLLM's default max_logprobs, OpenAI's top_logprobs limit


def valid_logprobs(value: int) -> bool:
    """A count of log-probability alternatives (``logprobs``, ``prompt_logprobs``, ``top_logprobs``)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_LOGPROBS


def prompt_leaves_room(prompt_tokens: int, max_model_len: int) -> bool:
    """A prompt must leave the context room for at least one generated token."""
    return prompt_tokens < max_model_len


def fits_context(total_tokens: int, max_model_len: int) -> bool:
    """Prompt plus resumed tokens (a migrated stream) must fit the model's context."""
    return total_tokens <= max_model_len
