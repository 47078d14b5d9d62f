"""Verify a batch of proposals against the target's logits (docs/speculation.md, "Why the output is exact").

Every row is first processed by the request's logits processors as plain decoding would at its
position (row j counting the proposal's first j tokens as generated: docs/speculation.md,
"Logits processors"). Greedy rows compare with the processed target argmax. Sampled rows run the
rejection rule against the target distribution *after* the request's own processors,
temperature, min-p, top-k and top-p — the same distribution plain decoding samples from, so the output law equals the target's under those
settings. The proposal law q is exactly what the draft sampled from: the shipped canonical
probabilities, a one-hot for a greedy draft, or nothing at all (q = 0, forcing n = 0) for
fast-backup placeholders, which are not samples of anything.
"""

from __future__ import annotations

import torch

from saguaro.logits_processors import History, process_block
from saguaro.sampling import SamplingParams, filter_logits
from saguaro.services.target.proposer import Proposal
from saguaro.speculative.fused_verify import fused_verify
from saguaro.speculative.verification import draw_verification_uniforms, greedy_verify, rejection_verify


def proposal_law(proposal: Proposal, vocab: int) -> torch.Tensor:
    tokens = torch.tensor(proposal.tokens)
    if not proposal.is_sample:
        return torch.zeros(len(tokens), vocab)
    if proposal.probs is not None:
        return proposal.probs
    return torch.nn.functional.one_hot(tokens, vocab).float()


def _uniforms(params: list[SamplingParams], generators: list[torch.Generator | None], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Acceptance and residual uniforms from each sampled request's own generator (zeros for greedy rows)."""
    uniforms = torch.zeros(len(params), k, dtype=torch.float64)
    residual = torch.zeros(len(params), dtype=torch.float64)
    for i, p in enumerate(params):
        if not p.greedy:
            u, r = draw_verification_uniforms(1, k, generators[i])
            uniforms[i], residual[i] = u[0], r[0]
    return uniforms, residual


def verify_rows(
    logits: torch.Tensor,
    proposals: list[Proposal],
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    histories: list[History | None],
) -> tuple[list[int], list[int]]:
    """logits: [B, K+1, V] target rows for ``[r, s_1..s_K]``; ``histories``: each row's logits
    processors' history, ending with r (None: it has none). Returns (n, r') per row.

    All-greedy batches compare prefixes directly. Otherwise, without min-p/top-k/top-p the whole
    batch goes through the fused verification kernel's dispatch (Triton on CUDA); a batch with
    filtered sampling rows verifies against the filtered p.
    """
    batch, rows, vocab = logits.shape
    tokens = torch.tensor([p.tokens for p in proposals], dtype=torch.long)
    logits = process_block(logits, histories, tokens)
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if not sampled:  # the common greedy batch: a prefix compare, no probabilities at all
        result = greedy_verify(logits, tokens)
        return result.accepted.tolist(), result.next_token.tolist()
    uniforms, residual = _uniforms(params, generators, rows - 1)
    q = torch.stack([proposal_law(p, vocab) for p in proposals])
    if not any(params[i].top_k or params[i].top_p < 1 or params[i].min_p > 0 for i in sampled):
        temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32)
        is_sample = torch.tensor([p.is_sample for p in proposals])
        result = fused_verify(logits, tokens, q, temperature, uniforms, residual, is_sample)
        return result.accepted.tolist(), result.next_token.tolist()
    accepted = torch.zeros(batch, dtype=torch.long)
    next_token = torch.zeros(batch, dtype=torch.long)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if greedy:
        result = greedy_verify(logits[greedy], tokens[greedy])
        accepted[greedy], next_token[greedy] = result.accepted, result.next_token
    repeat = lambda values, dtype: torch.tensor(values, dtype=dtype).repeat_interleave(rows)  # noqa: E731
    p = filter_logits(
        logits[sampled].reshape(-1, vocab),
        repeat([params[i].temperature for i in sampled], torch.float32),
        repeat([params[i].top_k for i in sampled], torch.long),
        repeat([params[i].top_p for i in sampled], torch.float32),
        repeat([params[i].min_p for i in sampled], torch.float32),
    ).view(len(sampled), rows, vocab)
    result = rejection_verify(p, q[sampled], tokens[sampled], uniforms[sampled], residual[sampled])
    accepted[sampled], next_token[sampled] = result.accepted, result.next_token
    return accepted.tolist(), next_token.tolist()
