"""Sampling parameters and the batched sampler.

Each request that samples owns a ``torch.Generator`` (seeded from its ``seed`` when given), and
draws exactly one noise vector per generated token from it. A seeded request therefore yields
the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from saguaro.errors import InvalidRequestError
from saguaro.logits_processors import History, process_logits
from saguaro.request_rules import (MAX_LOGPROBS, check_processor_fields, check_stop_strings, valid_logprobs,
                                   valid_temperature, valid_top_p)
from saguaro.structured_output import StructuredOutput
from saguaro.wire import MODES

DEFAULT_MAX_TOKENS = 64  # also what a Generate request without sampling.max_tokens gets (inference.proto)


@dataclass
class SamplingParams:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    # Stop strings: the output ends at the token whose text completes the earliest of them; the
    # text is cut before it, or after it with ``include_stop_str_in_output`` (saguaro/stop_strings.py).
    stop: list[str] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    mode: str | None = None  # None: the deployment's decoding mode; "ar" opts out of speculation
    # The temperature the draft proposes with (None: ``temperature``). It changes only what the
    # draft proposes, never the output's law: the target verifies against the probabilities the
    # draft actually proposed from (docs/speculation.md).
    draft_temperature: float | None = None
    # Log probabilities (saguaro/logprobs.py), as vLLM's fields: ``logprobs`` returns each
    # output token's and that many most likely alternatives (0: the token's only); None returns
    # none and costs nothing. ``prompt_logprobs`` does the same for the prompt tokens (the first
    # has none): it needs logits at every prompt position, so such a request recomputes its
    # prompt instead of reusing cached prefix blocks (docs/prefix-caching.md).
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    # vLLM's logits processors (saguaro/logits_processors.py; docs/speculation.md, "Logits
    # processors"), exact under speculation. ``min_p``: after temperature, tokens less likely
    # than ``min_p`` times the most likely one are dropped (sampling only: greedy keeps its argmax).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    min_tokens: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    # Structured output (saguaro/structured_output.py; docs/speculation.md, "Structured
    # output"): the output follows this grammar, exactly in every mode. None: free text.
    structured_output: StructuredOutput | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # one stop string, as OpenAI and vLLM accept it
            self.stop = [self.stop]

    def validate(self) -> None:
        """Refuse values no decoding mode can serve (the rules: ``saguaro.request_rules``)."""
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise InvalidRequestError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not valid_temperature(self.temperature):
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if self.draft_temperature is not None and not valid_temperature(self.draft_temperature):
            raise InvalidRequestError(f"draft_temperature must be >= 0, got {self.draft_temperature}")
        if not valid_top_p(self.top_p):
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.mode is not None and self.mode not in MODES:
            raise InvalidRequestError(f"mode must be one of ar, sd, ssd (or unset), got {self.mode!r}")
        if self.top_k < 0:
            raise InvalidRequestError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        check_stop_strings(self.stop)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not valid_logprobs(value):
                raise InvalidRequestError(f"{name} must be an integer in [0, {MAX_LOGPROBS}] (or unset), got {value!r}")
        check_processor_fields(self.presence_penalty, self.frequency_penalty, self.repetition_penalty, self.min_p,
                               self.min_tokens, self.max_tokens, self.logit_bias)
        if self.structured_output is not None:
            self.structured_output.check()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def proposal_temperature(self) -> float:
        """The temperature the draft proposes with: ``draft_temperature``, else the target's."""
        return self.temperature if self.draft_temperature is None else self.draft_temperature


def role_seed(seed: int, role: str) -> int:
    """An independent seed per randomness role (target sampling, draft sampling, ...).

    A request's seed must not drive two roles with the *same* stream: if the draft's sampling
    noise and the target's acceptance uniforms were equal, the proposal would be correlated
    with its own acceptance test and sampled output would no longer follow the target's law.
    """
    digest = hashlib.sha256(f"{role}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_generator(seed: int | None, fallback: torch.Generator) -> torch.Generator:
    """A request's private generator: seeded, or seeded from the engine's generator."""
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,), generator=fallback)))
    return gen


def filter_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  min_p: torch.Tensor | None = None) -> torch.Tensor:
    """Temperature, min-p, top-k and top-p applied row-wise (vLLM's order); returns fp32
    probabilities.

    min-p drops the tokens whose probability after temperature is below ``min_p`` times the most
    likely token's; top-k keeps the k largest logits; top-p keeps the smallest set of most likely
    tokens whose mass reaches p (always at least one token).
    """
    logits = logits.float() / temperature[:, None]
    if min_p is not None and bool((min_p > 0).any()):
        probs = logits.softmax(dim=-1)
        floor = probs.amax(dim=-1, keepdim=True) * min_p[:, None]
        logits = logits.masked_fill(probs < floor, float("-inf"))
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    drop = (top_k[:, None] > 0) & (ranks >= top_k[:, None])
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    # top_p == 1 must keep every token even when the cumulative sum rounds past 1.
    drop = (mass_before >= top_p[:, None]) & (top_p[:, None] < 1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    filtered = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return filtered.softmax(dim=-1)


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           histories: list[History | None] | None = None) -> torch.Tensor:
    """One token per row: argmax for greedy rows, an exponential race for sampled rows, after
    each row's logits processors (``histories``: per row, None for a request without any).

    The race (argmax of p / E with E ~ Exp(1) from the row's own generator) draws exactly
    from p, and keeps the per-row randomness in that row's generator.
    """
    if histories is not None:
        logits = process_logits(logits, histories)
    tokens = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if not rows:
        return tokens
    sub = logits[rows]
    temperature = torch.tensor([params[i].temperature for i in rows], dtype=torch.float32)
    top_k = torch.tensor([params[i].top_k for i in rows], dtype=torch.long)
    top_p = torch.tensor([params[i].top_p for i in rows], dtype=torch.float32)
    min_p = torch.tensor([params[i].min_p for i in rows], dtype=torch.float32)
    probs = filter_logits(sub, temperature, top_k, top_p, min_p)
    noise = torch.stack(
        [torch.empty(sub.shape[-1]).exponential_(generator=generators[i]) for i in rows]
    )
    tokens[rows] = (probs / noise).argmax(dim=-1)
    return tokens
