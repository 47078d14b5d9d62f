"""What the draft worker keeps between messages: per sequence, and per row it answered.

The worker (``worker.py``) answers rounds with these and the sampler (``sampler.py``) drafts
from them; they live apart from both so that each can be read on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saguaro.cache import BlockTable
from saguaro.logits_processors import History, LogitsProcessing
from saguaro.grammar import GrammarMatcher


@dataclass
class DraftSequence:
    """Committed tokens (as the target told us) and the tokens whose KV our cache holds.

    Invariant between rounds: ``kv_tokens`` agrees with ``tokens`` on their common length,
    so a new commit only needs comparing over the few tokens it added.
    """

    seq_id: int
    tokens: list[int]
    generator: torch.Generator
    kv_tokens: list[int] = field(default_factory=list)
    table: BlockTable = field(default_factory=BlockTable)
    depth: int = 0  # tokens of the last proposal sent for it (0: none yet)
    # The request's logits processors and prompt length, from its prefill (None: it has none)
    processing: LogitsProcessing | None = None
    prompt_len: int = 0
    # The request's grammar, from its prefill (None: no structured output, or no tokenizer here)
    grammar: GrammarMatcher | None = None

    def history(self, recovery: int) -> History | None:
        """What the processors and the grammar condition on at the recovery token's next position."""
        if self.processing is None and self.grammar is None:
            return None
        return History(self.processing, self.tokens[:self.prompt_len], [*self.tokens[self.prompt_len:], recovery],
                       self.grammar)


@dataclass
class PendingRow:
    """A row answered this round, which ``build`` will extend into cache entries."""

    seq: DraftSequence
    recovery: int
    proposal: list[int]
    hit: bool
    draft_temperature: float
    ship_probs: bool
    placeholder: bool = False  # a fast backup's tokens: the target keeps none of them (n = 0)
