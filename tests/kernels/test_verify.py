"""Fused verification kernel vs ``saguaro.speculative.verification``: n and r' bit-identical.

Two levels: through ``fused_verify`` on logits (the call the target makes), and through the
launcher on hand-made probabilities with tiny vocabulary tiles, so the running CDF crosses
tile boundaries and the edge cases (zero residual, zero rows, ties, boundary uniforms,
u = p/q exactly) come up often.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saguaro.kernels.verify_triton import verify_triton
from saguaro.speculative.distributions import proposal_probs
from saguaro.speculative.fused_verify import fused_verify
from saguaro.speculative.verification import greedy_verify, rejection_verify, verify

ALMOST_ONE = 1.0 - 2.0**-53


def tied_logits(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Small integer logits: argmax ties and equal probabilities are common."""
    return torch.randint(-2, 3, shape, generator=gen).float()


def edge_uniforms(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """U[0, 1) in float64 with 0 and the largest double below 1 mixed in."""
    u = torch.rand(*shape, generator=gen, dtype=torch.float64)
    pick = torch.randint(0, 4, shape, generator=gen)
    return torch.where(pick == 0, 0.0, torch.where(pick == 1, ALMOST_ONE, u))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 5),
    k=st.integers(0, 4),
    vocab=st.integers(1, 24),
    draft_temperature=st.sampled_from([0.0, 1.0]),
    downweight=st.sampled_from([1.0, 0.5]),
    logits_dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_fused_verify_matches_reference(
    launches, batch, k, vocab, draft_temperature, downweight, logits_dtype, seed
) -> None:
    gen = torch.Generator(torch.get_default_device()).manual_seed(seed)
    target_logits = tied_logits(gen, batch, k + 1, vocab).to(logits_dtype)
    q = proposal_probs(tied_logits(gen, batch, k, vocab), draft_temperature, fan_out=1, downweight=downweight)
    sampled = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).view(batch, k) if k else q.new_zeros(batch, 0).long()
    greedy_choice = target_logits[:, :k].argmax(dim=-1)
    source = torch.randint(0, 3, (batch, 1), generator=gen)  # draft sample / target argmax / junk
    junk = torch.randint(0, vocab, (batch, k), generator=gen)
    tokens = torch.where(source == 0, sampled, torch.where(source == 1, greedy_choice, junk))
    temperature = torch.tensor([0.0, 0.7, 1.0, 2.0])[torch.randint(0, 4, (batch,), generator=gen)]
    is_sample = torch.rand(batch, generator=gen) < 0.8
    uniforms, residual = edge_uniforms(gen, batch, k), edge_uniforms(gen, batch)
    # draft_probs may be omitted only when no row needs q.
    draft_probs = None if not bool((is_sample & (temperature > 0)).any()) else q

    expected = verify(target_logits, tokens, draft_probs, temperature, is_sample, uniforms=uniforms, residual_uniforms=residual)
    with launches("verify"):
        got = fused_verify(target_logits, tokens, draft_probs, temperature, uniforms, residual, is_sample, backend="triton")
    assert torch.equal(got.accepted, expected.accepted)
    assert torch.equal(got.next_token, expected.next_token)


def rough_probs(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Unnormalised non-negative fp32 rows with many exact zeros, ties and a few zero rows."""
    scale = torch.rand(*shape[:-1], 1, generator=gen) * 10.0 ** torch.randint(-3, 1, (*shape[:-1], 1), generator=gen)
    mass = torch.randint(0, 4, shape, generator=gen).float() * scale
    empty = torch.rand(*shape[:-1], 1, generator=gen) < 0.1
    return torch.where(empty, 0.0, mass)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 4),
    k=st.integers(0, 3),
    vocab=st.integers(1, 30),
    block_v=st.sampled_from([1, 2, 4, 8]),
    q_dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_verify_kernel_tiles_and_edges(launches, batch, k, vocab, block_v, q_dtype, seed) -> None:
    gen = torch.Generator(torch.get_default_device()).manual_seed(seed)
    kind = torch.randint(0, 3, (batch,), generator=gen)  # greedy / sampled / junk
    greedy, is_sample = kind == 0, kind == 1
    one_hot = torch.nn.functional.one_hot(torch.randint(0, vocab, (batch, k + 1), generator=gen), vocab).float()
    p = torch.where(greedy[:, None, None], one_hot, rough_probs(gen, batch, k + 1, vocab))
    # q: independent, equal to p (zero residual when tokens are rejected), or p with a bump.
    shape = torch.randint(0, 3, (batch, 1, 1), generator=gen)
    bumped = p[:, :k] + rough_probs(gen, batch, k, vocab) * (torch.rand(batch, k, vocab, generator=gen) < 0.2)
    q = torch.where(shape == 0, rough_probs(gen, batch, k, vocab), torch.where(shape == 1, p[:, :k], bumped)).to(q_dtype)
    tokens = torch.randint(0, vocab, (batch, k), generator=gen)
    uniforms = edge_uniforms(gen, batch, k)
    # u = p(s)/q(s) exactly, where representable: the strict test must reject.
    p_tok = p[:, :k].gather(-1, tokens[..., None]).squeeze(-1).double()
    q_tok = q.gather(-1, tokens[..., None]).squeeze(-1).double()
    ratio = p_tok / q_tok
    on_boundary = (torch.rand(batch, k, generator=gen) < 0.2) & (ratio < 1) & (ratio * q_tok == p_tok)
    uniforms = torch.where(on_boundary, ratio, uniforms)
    residual = edge_uniforms(gen, batch)

    greedy_ref = greedy_verify(p, tokens)
    sampled_ref = rejection_verify(p, q * is_sample[:, None, None], tokens, uniforms, residual)
    with launches("verify"):
        accepted, next_token = verify_triton(p, q, tokens, uniforms, residual, greedy, is_sample, block_v=block_v)
    assert torch.equal(accepted, torch.where(greedy, greedy_ref.accepted, sampled_ref.accepted))
    assert torch.equal(next_token, torch.where(greedy, greedy_ref.next_token, sampled_ref.next_token))


def test_zero_residual_falls_back_to_p() -> None:
    """q >= p everywhere with q(s) > p(s): s is rejected and the residual has no mass."""
    p = torch.tensor([[[0.25, 0.25, 0.5], [0.0, 1.0, 0.0]]])
    q = torch.tensor([[[0.25, 0.5, 0.5]]])
    tokens = torch.tensor([[1]])
    for u in (0.0, 0.3, 0.6, ALMOST_ONE):
        residual = torch.tensor([u], dtype=torch.float64)
        accepted, next_token = verify_triton(
            p, q, tokens, torch.tensor([[0.9]], dtype=torch.float64), residual,
            torch.tensor([False]), torch.tensor([True]), block_v=2,
        )
        expected = rejection_verify(p, q, tokens, torch.tensor([[0.9]], dtype=torch.float64), residual)
        assert accepted.item() == expected.accepted.item() == 0
        assert next_token.item() == expected.next_token.item()


@pytest.mark.parametrize("block_v", [2, 4, 8])
def test_cdf_is_the_sequential_scan(launches, block_v) -> None:
    """Mass 2^-53 after a 1.0 vanishes in a left-to-right float64 cumsum (torch's) but not in
    a blocked scan that adds each tile's own prefix sums to the carry: with u just below 1
    the two pick different tokens. The kernel must pick the reference's."""
    tiny = 2.0**-53
    p = torch.tensor([[[1.0] + [tiny] * 7]])
    q = p[:, :0]
    tokens = torch.zeros(1, 0, dtype=torch.long)
    none = torch.zeros(1, 0, dtype=torch.float64)
    for u in (ALMOST_ONE, 1.0 - 2.0**-52, 1.0 - 3 * 2.0**-53, 0.5):
        residual = torch.tensor([u], dtype=torch.float64)
        with launches("verify"):
            _, got = verify_triton(p, q, tokens, none, residual, torch.tensor([False]), torch.tensor([True]), block_v=block_v)
        assert got.item() == rejection_verify(p, q, tokens, none, residual).next_token.item()


def test_missing_draft_probs_is_refused_for_sampled_rows() -> None:
    logits = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="draft_probs is required"):
        fused_verify(logits, torch.zeros(2, 2, dtype=torch.long), None, 1.0, torch.zeros(2, 2), torch.zeros(2), backend="triton")
    with pytest.raises(ValueError, match="float64"):
        fused_verify(logits.double(), torch.zeros(2, 2, dtype=torch.long), None, 0.0, torch.zeros(2, 2), torch.zeros(2), backend="triton")
