"""How the draft draws its proposals: from the canonical proposal law q, row by row.

Verification is exact only if the target checks each proposal against the very distribution it
was drawn from (docs/speculation.md, "Why the output is exact"). Every draft token, whether
drafted just in time or in the speculation tree, is therefore drawn here, from q at the row's
draft temperature as ``proposal_probs`` defines it and rounded to the wire dtype
(``proposal_codec.canonical``) before sampling, so the q the draft ships is the q it sampled.
The request's logits processors are applied first, as the target applies them to its verify rows
(saguaro/logits_processors.py), so q follows the distribution the target verifies against.
"""

from __future__ import annotations

import torch

from saguaro.logits_processors import History, process_logits
from saguaro.model_runner import CausalChunk, ModelRunner
from saguaro.services.draft.sequences import PendingRow
from saguaro.speculative import proposal_codec
from saguaro.speculative.distributions import proposal_probs
from saguaro.speculative.settings import DraftSettings


class ProposalSampler:
    """Draft tokens and their proposal law for rows of one draft model and session."""

    def __init__(self, runner: ModelRunner, settings: DraftSettings):
        self.runner = runner
        self.settings = settings

    def jit(self, plans: list[PendingRow], k: int) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Ordinary SD drafting for the given rows: ``k`` sequential draft steps from r."""
        seqs = [p.seq for p in plans]
        histories = [s.history(p.recovery) for s, p in zip(seqs, plans)]
        temps = torch.tensor([p.draft_temperature for p in plans])
        gens = [s.generator for s in seqs]
        chunks = [CausalChunk(s.table.blocks, len(s.kv_tokens), s.tokens[len(s.kv_tokens) :] + [p.recovery])
                  for s, p in zip(seqs, plans)]
        steps_tokens, steps_probs = [], []
        for step in range(k):
            with self.runner.device_step():
                logits = self.runner.run_causal(chunks)
                drafted = torch.stack(steps_tokens, dim=1) if steps_tokens else torch.zeros(len(plans), 0, dtype=torch.long)
                tokens, probs = self.sample(logits[:, None, :], temps, gens, histories, drafted[:, None, :])
            steps_tokens.append(tokens[:, 0])
            steps_probs.append(probs)
            for s, c in zip(seqs, chunks):
                s.kv_tokens.extend(c.token_ids)
            if step + 1 < k:
                chunks = [CausalChunk(s.table.blocks, len(s.kv_tokens), [t]) for s, t in zip(seqs, tokens[:, 0].tolist())]
        tokens = torch.stack(steps_tokens, dim=1)
        if steps_probs[0] is None:
            return list(tokens), [None] * len(plans)
        probs = torch.cat(steps_probs, dim=1)
        return list(tokens), [probs[i] if temps[i] > 0 else None for i in range(len(plans))]

    def sample(
        self, logits: torch.Tensor, temps: torch.Tensor, gens: list[torch.Generator],
        histories: list[History | None], extra: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample [B, X] tokens from [B, X, V] logits; rows with temperature 0 take the argmax.

        First each row's logits processors: ``histories`` per sequence (None: none), ``extra``
        [B, X, L] the tokens row (b, x) generated after its history (``NO_TOKEN`` padding).

        Sampled rows draw from the canonical proposal q (the one the verifier reconstructs),
        by an exponential race with noise from the sequence's own generator. Returns the
        tokens and, if any row samples, the [B, X, V] distributions (one-hot rows unused).
        """
        logits = process_rows(logits, histories, extra)
        tokens = logits.argmax(dim=-1)
        sampled = (temps > 0).nonzero().flatten().tolist()
        if not sampled:
            return tokens, None
        settings = self.settings
        q = proposal_probs(logits, temps, fan_out=settings.fan_out, downweight=settings.downweight)
        q = proposal_codec.canonical(q, settings.probs_dtype)
        # each row's noise from its own generator (reproducible per sequence), one race for all rows
        noise = torch.stack([torch.empty(q.shape[1:]).exponential_(generator=gens[i]) for i in sampled])
        tokens[sampled] = (q[sampled] / noise).argmax(dim=-1)
        return tokens, q


def process_rows(logits: torch.Tensor, histories: list[History | None], extra: torch.Tensor | None) -> torch.Tensor:
    """:func:`~saguaro.logits_processors.process_logits` over [B, X, V] rows, sequence b's
    history for each of its X rows."""
    if all(h is None for h in histories):
        return logits
    b, x, vocab = logits.shape
    flat_extra = None if extra is None else extra.reshape(b * x, -1)
    return process_logits(logits.reshape(b * x, vocab), [h for h in histories for _ in range(x)], flat_extra).view(b, x, vocab)
