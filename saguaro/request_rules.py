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


MAX_PENALTY = 2.0  # presence_penalty and frequency_penalty lie in [-2, 2] (OpenAI's and vLLM's range)
MAX_LOGIT_BIAS = 100.0  # a logit_bias value lies in [-100, 100] (OpenAI's range)


def processor_problem(presence_penalty: float, frequency_penalty: float, repetition_penalty: float, min_p: float,
                      min_tokens: int, max_tokens: int | None, logit_bias: dict[int, float]) -> tuple[str, str] | None:
    """The first logits-processor field out of vLLM's ranges, as ``(field, message)``; None if
    all are fine. vLLM's checks (``SamplingParams._verify_args``), so a request vLLM accepts is
    accepted here; the token ids of ``logit_bias`` are checked against the vocabulary by the
    engine (``check_token_ids``), the only place that knows it."""
    for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        if not (math.isfinite(value) and -MAX_PENALTY <= value <= MAX_PENALTY):
            return name, f"{name} must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {value}"
    if not (math.isfinite(repetition_penalty) and repetition_penalty > 0):
        return "repetition_penalty", f"repetition_penalty must be > 0 (1 disables it), got {repetition_penalty}"
    if not (math.isfinite(min_p) and 0 <= min_p <= 1):
        return "min_p", f"min_p must be in [0, 1], got {min_p}"
    if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 0:
        return "min_tokens", f"min_tokens must be an integer >= 0, got {min_tokens!r}"
    if max_tokens is not None and min_tokens > max_tokens:
        return "min_tokens", f"min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens})"
    for token, bias in logit_bias.items():
        if isinstance(token, bool) or not isinstance(token, int):
            return "logit_bias", f"logit_bias keys must be token ids, got {token!r}"
        if not (math.isfinite(bias) and -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS):
            return "logit_bias", (f"logit_bias values must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], "
                                  f"got {bias} for token {token}")
    return None


def check_processor_fields(presence_penalty: float, frequency_penalty: float, repetition_penalty: float, min_p: float,
                           min_tokens: int, max_tokens: int | None, logit_bias: dict[int, float]) -> None:
    """:func:`processor_problem` as an ``InvalidRequestError``."""
    problem = processor_problem(presence_penalty, frequency_penalty, repetition_penalty, min_p, min_tokens,
                                max_tokens, logit_bias)
    if problem is not None:
        raise InvalidRequestError(problem[1])
