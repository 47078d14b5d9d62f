"""Fork selection kernel vs ``saguaro.speculative.fork.fork_candidates_reference``: tokens and
depths bit-identical, including ties, signed zeros, infinities and NaNs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saguaro.kernels.fork_triton import fork_triton
from saguaro.speculative.fork import fork_candidates, fork_candidates_reference

SPECIALS = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), -float("nan")])


def awkward_logits(gen: torch.Generator, batch: int, k1: int, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """Tie-heavy small integers with signed zeros, infinities and (fp32 only) NaNs.

    NaNs rank by their bit pattern; widening a half-precision NaN to fp32 does not keep its
    payload the same way in torch, numpy and on a GPU, so half-precision NaNs have no
    single expected order (and NaN logits are a bug upstream anyway).
    """
    values = torch.randint(-2, 3, (batch, k1, vocab), generator=gen).float()
    specials = SPECIALS if dtype == torch.float32 else SPECIALS[:4]
    special = specials[torch.randint(0, len(specials), (batch, k1, vocab), generator=gen)]
    return torch.where(torch.rand(batch, k1, vocab, generator=gen) < 0.2, special, values).to(dtype)


@st.composite
def fan_out_tables(draw, k1: int, vocab: int, batch: int) -> torch.Tensor:
    """Per-row fan-out [B, K+1] with one common sum M >= 1 (hit and miss lists mixed)."""
    limits = [vocab - 1] * (k1 - 1) + [vocab]
    base = [draw(st.integers(0, min(lim, 3))) for lim in limits]
    if sum(base) == 0:
        base[-1] = 1
    rows = [base]
    for _ in range(batch - 1):
        row = list(base)
        src, dst = draw(st.integers(0, k1 - 1)), draw(st.integers(0, k1 - 1))
        if row[src] > 0 and row[dst] < limits[dst]:  # move one branch: same M
            row[src] -= 1
            row[dst] += 1
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 4),
    k=st.integers(0, 3),
    vocab=st.integers(2, 24),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    per_row=st.booleans(),
    data=st.data(),
)
def test_fork_matches_reference(launches, batch, k, vocab, dtype, per_row, data) -> None:
    gen = torch.Generator(torch.get_default_device()).manual_seed(data.draw(st.integers(0, 2**16)))
    logits = awkward_logits(gen, batch, k + 1, vocab, dtype)
    tokens = torch.randint(0, vocab, (batch, k), generator=gen)
    table = data.draw(fan_out_tables(k + 1, vocab, batch))
    fan_out = table if per_row else table[0].tolist()

    expected = fork_candidates_reference(logits, tokens, fan_out)
    with launches("fork"):
        got = fork_candidates(logits, tokens, fan_out, backend="triton")
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


@pytest.mark.slow
@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 3),
    k=st.integers(0, 3),
    vocab=st.integers(2, 30),
    block_v=st.sampled_from([1, 2, 4, 8]),
    data=st.data(),
)
def test_fork_kernel_tiles(launches, batch, k, vocab, block_v, data) -> None:
    """Tiny vocabulary tiles: the running candidate list merges across tiles, ties to the lowest id."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(data.draw(st.integers(0, 2**16)))
    logits = awkward_logits(gen, batch, k + 1, vocab, torch.float32)
    tokens = torch.randint(0, vocab, (batch, k), generator=gen)
    table = data.draw(fan_out_tables(k + 1, vocab, batch))

    expected = fork_candidates_reference(logits, tokens, table)
    with launches("fork"):
        got = fork_triton(logits, tokens, table, int(table[0].sum()), int(table.max()), block_v=block_v)
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


def test_fan_out_is_checked_like_the_reference() -> None:
    logits = torch.randn(2, 3, 4)
    tokens = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="one positive sum"):
        fork_candidates(logits, tokens, torch.tensor([[1, 1, 1], [1, 1, 2]]), backend="triton")
    with pytest.raises(ValueError, match="V-1"):
        fork_candidates(logits, tokens, [4, 0, 0], backend="triton")
