"""Per-request state inside an engine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from saguaro.cache import BlockTable
from saguaro.grammar import GrammarMatcher
from saguaro.logits_processors import History, LogitsProcessing
from saguaro.logprobs import TokenLogprob
from saguaro.sampling import SamplingParams
from saguaro.stop_strings import StopText


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_tokens or max_model_len
    ABORT = "abort"


@dataclass
class Sequence:
    """Token ids are *committed* tokens: the prompt plus every accepted output token.

    ``num_computed`` counts leading tokens whose KV is valid in the cache. Between steps it is
    ``len(token_ids) - 1``: the newest token is known but not yet fed through the model.
    """

    seq_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    generator: torch.Generator | None
    status: SequenceStatus = SequenceStatus.WAITING
    table: BlockTable = field(default_factory=BlockTable)
    num_computed: int = 0
    # Prompt tokens whose KV the prefix cache held at the first admission (None: not yet
    # admitted): what OpenAI's usage calls cached_tokens.
    num_cached_prompt_tokens: int | None = None
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_time: float | None = None
    stats: Any = None  # mode-specific statistics (SpecStats in the target service)
    stop_text: StopText | None = None  # the stop-string check, for a request with stop strings
    # Per output token, its log probabilities (None for resumed tokens, which this engine did
    # not score); None: the request did not ask (SamplingParams.logprobs).
    logprobs: list[TokenLogprob | None] | None = None
    # Prompt tokens 2..P's log probabilities, once its prefill scored them (SamplingParams.prompt_logprobs).
    prompt_logprobs: list[TokenLogprob] | None = None
    # Its logits processors, resolved (saguaro/logits_processors.py); None: it uses none.
    processing: LogitsProcessing | None = None
    # Its grammar's matcher (saguaro/structured_output.py); None: no structured output.
    grammar: GrammarMatcher | None = None

    @property
    def history(self) -> History | None:
        """What its logits processors and grammar condition on now (None: it has neither)."""
        if self.processing is None and self.grammar is None:
            return None
        return History(self.processing, self.token_ids[:self.num_prompt_tokens], self.token_ids[self.num_prompt_tokens:],
                       self.grammar)

    @property
    def scores_prompt(self) -> bool:
        """Its next prefill must score the prompt: asked for, and not scored yet (a preempted
        sequence's recompute does not score it again)."""
        return self.params.prompt_logprobs is not None and self.prompt_logprobs is None

    @property
    def stop_string(self) -> str | None:
        """The stop string that ended the sequence, if one did."""
        match = self.stop_text.matcher.match if self.stop_text is not None else None
        return match.string if match is not None else None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
