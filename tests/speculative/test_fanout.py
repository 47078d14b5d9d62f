"""Tests for saguaro.speculative.fanout."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from saguaro.speculative.fanout import (
    depth_probabilities,
    geometric_fan_out,
    scale_fan_out,
    select_fan_out,
    uniform_fan_out,
    validate_fan_out,
)
from saguaro.speculative.fork import fork_candidates

# --------------------------------------------------------------------------------------
# uniform / validate / scale
# --------------------------------------------------------------------------------------


@given(fan=st.lists(st.integers(0, 12), min_size=2, max_size=9).filter(lambda f: sum(f) > 0), data=st.data())
@settings(max_examples=200, deadline=None)
def test_property_scale_fan_out_keeps_the_shares_within_one_branch(fan: list[int], data) -> None:
    budget = data.draw(st.integers(1, sum(fan)))
    scaled = scale_fan_out(fan, budget)
    assert sum(scaled) == budget and len(scaled) == len(fan)
    for original, new in zip(fan, scaled):
        assert 0 <= new <= original
        assert abs(new - original * budget / sum(fan)) < 1


def test_scale_fan_out_examples_and_bounds() -> None:
    assert scale_fan_out([3, 3, 3, 3], 4) == [1, 1, 1, 1]
    assert scale_fan_out([3, 3, 3, 3], 1) == [1, 0, 0, 0]  # a tie goes to the shallower, likelier depth
    assert scale_fan_out([3, 3, 3, 3], 12) == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="budget must be in 1..12"):
        scale_fan_out([3, 3, 3, 3], 13)
    with pytest.raises(ValueError, match="budget must be in 1..12"):
        scale_fan_out([3, 3, 3, 3], 0)


def test_uniform_fan_out() -> None:
    assert uniform_fan_out(7, 3) == [3] * 8
    assert uniform_fan_out(0, 2) == [2]
    with pytest.raises(ValueError, match="f"):
        uniform_fan_out(3, 0)
    with pytest.raises(ValueError, match="k"):
        uniform_fan_out(-1, 2)


def test_validate_fan_out() -> None:
    assert validate_fan_out([1, 0, 2], 2) == [1, 0, 2]
    assert validate_fan_out((1, 0, 2), 2) == [1, 0, 2]
    out = validate_fan_out([torch.tensor(2).item(), 1], 1)
    assert out == [2, 1] and all(type(x) is int for x in out)
    with pytest.raises(ValueError, match="k\\+1=3 entries"):
        validate_fan_out([1, 2], 2)
    with pytest.raises(ValueError, match=r"fan_out\[1\] must be >= 0"):
        validate_fan_out([1, -1, 2], 2)
    with pytest.raises(ValueError, match=r"fan_out\[0\] must be an int"):
        validate_fan_out([1.5, 1, 2], 2)
    with pytest.raises(ValueError, match=r"fan_out\[2\] must be an int"):
        validate_fan_out([1, 1, True], 2)
    with pytest.raises(ValueError, match="positive sum"):
        validate_fan_out([0, 0, 0], 2)
    with pytest.raises(ValueError, match="sequence"):
        validate_fan_out("123", 2)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# geometric fan-out
# --------------------------------------------------------------------------------------


def test_depth_probabilities() -> None:
    probs = depth_probabilities(3, 0.5)
    assert probs == [0.5, 0.25, 0.125, 0.125]
    assert depth_probabilities(2, 0.0) == [1.0, 0.0, 0.0]
    assert depth_probabilities(2, 1.0) == [0.0, 0.0, 1.0]
    assert depth_probabilities(0, 0.3) == [1.0]
    with pytest.raises(ValueError, match="acceptance"):
        depth_probabilities(2, 1.2)
    with pytest.raises(ValueError, match="acceptance"):
        depth_probabilities(2, float("nan"))


def test_geometric_fan_out_spec_example() -> None:
    # the specification's worked example: alpha=0.8, r=1, K=7, M=24 gives ~[4, 3.5, 3, 3, 2.5, 2, 2, 4]
    out = geometric_fan_out(7, 24, 0.8, power=1.0)
    assert sum(out) == 24 and len(out) == 8
    probs = depth_probabilities(7, 0.8)
    w = [p**0.5 for p in probs]
    ideal = [24 * x / sum(w) for x in w]
    assert all(abs(f - x) < 1 for f, x in zip(out, ideal))
    assert out[0] == 4 and out[-1] == 4 and out[6] == 2
    assert all(out[j] >= out[j + 1] for j in range(6))  # geometric decay before depth K


def test_geometric_fan_out_edge_cases() -> None:
    assert geometric_fan_out(3, 10, 0.0) == [10, 0, 0, 0]
    assert geometric_fan_out(3, 10, 1.0) == [0, 0, 0, 10]
    assert geometric_fan_out(0, 5, 0.4) == [5]
    # caps redistribute: alpha = 0 fills depths in order, alpha = 1 spreads over 0..K-1
    assert geometric_fan_out(3, 10, 0.0, cap=4) == [4, 4, 2, 0]
    assert geometric_fan_out(3, 10, 1.0, cap=4) == [2, 2, 2, 4]
    assert geometric_fan_out(2, 9, 0.5, cap=3) == [3, 3, 3]
    # large r flattens the allocation towards uniform over likely depths
    flat = geometric_fan_out(3, 12, 0.5, power=1000.0)
    assert flat == [3, 3, 3, 3]
    # r -> small approaches proportional-to-probability
    prop = geometric_fan_out(3, 16, 0.5, power=1e-9)
    assert prop == [8, 4, 2, 2]


def test_geometric_fan_out_validation() -> None:
    with pytest.raises(ValueError, match="budget"):
        geometric_fan_out(3, 0, 0.5)
    with pytest.raises(ValueError, match="acceptance"):
        geometric_fan_out(3, 8, -0.1)
    with pytest.raises(ValueError, match="power"):
        geometric_fan_out(3, 8, 0.5, power=0.0)
    with pytest.raises(ValueError, match="cap"):
        geometric_fan_out(3, 8, 0.5, cap=0)
    with pytest.raises(ValueError, match="less than budget"):
        geometric_fan_out(3, 9, 0.5, cap=2)
    with pytest.raises(ValueError, match="k"):
        geometric_fan_out(-1, 9, 0.5)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    k=st.integers(0, 8),
    budget=st.integers(1, 60),
    acceptance=st.one_of(st.sampled_from([0.0, 1.0, 1e-12, 1 - 1e-12]), st.floats(0.0, 1.0)),
    power=st.floats(0.05, 20.0),
    cap=st.one_of(st.none(), st.integers(1, 60)),
)
def test_property_geometric_fan_out(
    k: int, budget: int, acceptance: float, power: float, cap: int | None
) -> None:
    if cap is not None:
        assume(cap * (k + 1) >= budget)
    out = geometric_fan_out(k, budget, acceptance, power=power, cap=cap)
    assert len(out) == k + 1
    assert all(type(f) is int and f >= 0 for f in out)
    assert sum(out) == budget
    if cap is not None:
        assert max(out) <= cap
    assert validate_fan_out(out, k) == out
    if cap is None:
        # largest remainder: every depth within 1 of its ideal real share
        w = [p ** (1 / (1 + power)) for p in depth_probabilities(k, acceptance)]
        if sum(w) > 0 and all(x == 0 or x > 1e-300 for x in w):
            ideal = [budget * x / sum(w) for x in w]
            assert all(abs(f - x) < 1 + 1e-6 for f, x in zip(out, ideal))


# --------------------------------------------------------------------------------------
# fork candidates
# --------------------------------------------------------------------------------------


def naive_forks(
    glue: torch.Tensor, draft: torch.Tensor, fan: list[list[int]]
) -> tuple[list[list[int]], list[list[int]]]:
    b_size, k1, v = glue.shape
    k = k1 - 1
    tokens, depths = [], []
    for b in range(b_size):
        row_t, row_d = [], []
        for j in range(k1):
            vals = glue[b, j].float().tolist()
            order = sorted(range(v), key=lambda i: (-vals[i], i))
            if j < k:
                order = [i for i in order if i != int(draft[b, j])]
            row_t += order[: fan[b][j]]
            row_d += [j] * fan[b][j]
        tokens.append(row_t)
        depths.append(row_d)
    return tokens, depths


def test_fork_candidates_hand_built() -> None:
    glue = torch.tensor(
        [
            [[0.0, 5.0, 4.0, 3.0], [9.0, 1.0, 2.0, 3.0], [1.0, 1.0, 7.0, 0.0]],
        ]
    )
    draft = torch.tensor([[1, 0]])
    tokens, depth = fork_candidates(glue, draft, [2, 1, 3])
    # depth 0 excludes token 1 -> (2, 3); depth 1 excludes 0 -> (3); depth 2 nothing excluded
    assert tokens.tolist() == [[2, 3, 3, 2, 0, 1]]
    assert depth.tolist() == [[0, 0, 1, 2, 2, 2]]
    assert tokens.dtype == torch.long and depth.dtype == torch.long


def test_fork_candidates_per_row_fan_out_and_select() -> None:
    torch.manual_seed(0)
    glue = torch.randn(3, 3, 6)
    draft = torch.tensor([[0, 1], [2, 3], [4, 5]])
    hit = torch.tensor([True, False, True])
    fan = select_fan_out(hit, [2, 2, 2], [4, 1, 1])
    assert fan.tolist() == [[2, 2, 2], [4, 1, 1], [2, 2, 2]]
    tokens, depth = fork_candidates(glue, draft, fan)
    ref_t, ref_d = naive_forks(glue, draft, fan.tolist())
    assert tokens.tolist() == ref_t and depth.tolist() == ref_d
    with pytest.raises(ValueError, match="same sum"):
        select_fan_out(hit, [2, 2, 2], [4, 1, 2])
    with pytest.raises(ValueError, match="same sum M"):
        fork_candidates(glue, draft, torch.tensor([[2, 2, 2], [4, 1, 2], [2, 2, 2]]))


def test_fork_candidates_bf16_ties_deterministic() -> None:
    # all-equal logits: ranking falls back to token id, excluding the draft token
    glue = torch.zeros(1, 2, 5, dtype=torch.bfloat16)
    tokens, depth = fork_candidates(glue, torch.tensor([[0]]), [3, 2])
    assert tokens.tolist() == [[1, 2, 3, 0, 1]]
    assert depth.tolist() == [[0, 0, 0, 1, 1]]
    # excluded token is never chosen even when other tokens are also -inf
    glue = torch.full((1, 2, 4), float("-inf"))
    glue[0, 0, 3] = 0.0
    tokens, _ = fork_candidates(glue, torch.tensor([[0]]), [3, 1])
    assert tokens.tolist() == [[3, 1, 2, 0]]


def test_fork_candidates_validation() -> None:
    glue = torch.randn(2, 3, 4)
    draft = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="only 3 candidate tokens"):
        fork_candidates(glue, draft, [4, 1, 1])
    assert fork_candidates(glue, draft, [3, 0, 4])[0].shape == (2, 7)  # depth K may use all V
    with pytest.raises(ValueError, match="only 4 candidate"):
        fork_candidates(glue, draft, [1, 1, 5])
    with pytest.raises(ValueError, match="draft_tokens shape"):
        fork_candidates(glue, draft[:, :1], [1, 1, 1])
    with pytest.raises(ValueError, match="k\\+1=3"):
        fork_candidates(glue, draft, [1, 1])
    with pytest.raises(ValueError, match="fan_out tensor shape"):
        fork_candidates(glue, draft, torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        fork_candidates(glue, draft, torch.tensor([[2, -1, 2], [1, 1, 1]]))
    with pytest.raises(ValueError, match="integer"):
        fork_candidates(glue, draft.float(), [1, 1, 1])


@st.composite
def fork_cases(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, list[list[int]], bool]:
    b = draw(st.integers(1, 3))
    k = draw(st.integers(0, 3))
    v = draw(st.integers(2, 7))
    # small integer logits (+ occasional -inf) to force many ties
    values = st.one_of(st.integers(-2, 2).map(float), st.just(float("-inf")))
    row = st.lists(values, min_size=v, max_size=v)
    block = st.lists(row, min_size=k + 1, max_size=k + 1)
    glue = torch.tensor(draw(st.lists(block, min_size=b, max_size=b)), dtype=torch.float32)
    draft_row = st.lists(st.integers(0, v - 1), min_size=k, max_size=k)
    draft = torch.tensor(
        draw(st.lists(draft_row, min_size=b, max_size=b)), dtype=torch.long
    ).reshape(b, k)
    limits = [v - 1] * k + [v]
    first = draw(st.tuples(*[st.integers(0, lim) for lim in limits]))
    m = sum(first)
    assume(m > 0)
    per_row = draw(st.booleans())
    fans = [list(first)]
    for _ in range(b - 1):
        if not per_row:
            fans.append(list(first))
            continue
        # another list with the same sum M within the limits (greedy redistribution)
        row = [draw(st.integers(0, lim)) for lim in limits]
        diff = m - sum(row)
        for j in range(k + 1):
            if diff > 0:
                add = min(diff, limits[j] - row[j])
                row[j] += add
                diff -= add
            elif diff < 0:
                sub = min(-diff, row[j])
                row[j] -= sub
                diff += sub
        assert sum(row) == m
        fans.append(row)
    return glue, draft, fans, per_row


@settings(max_examples=50, deadline=None, derandomize=True)
@given(case=fork_cases())
def test_property_fork_candidates(
    case: tuple[torch.Tensor, torch.Tensor, list[list[int]], bool],
) -> None:
    glue, draft, fans, per_row = case
    b, k1, _ = glue.shape
    k = k1 - 1
    fan_arg: list[int] | torch.Tensor = torch.tensor(fans) if per_row else fans[0]
    tokens, depth = fork_candidates(glue, draft, fan_arg)
    m = sum(fans[0])
    assert tokens.shape == (b, m) and depth.shape == (b, m)
    ref_t, ref_d = naive_forks(glue, draft, fans)
    assert tokens.tolist() == ref_t
    assert depth.tolist() == ref_d
    for bi in range(b):
        for j in range(k1):
            at_j = tokens[bi][depth[bi] == j].tolist()
            assert len(at_j) == fans[bi][j]
            assert len(set(at_j)) == len(at_j)  # distinct per depth -> unique cache keys
            if j < k:
                assert int(draft[bi, j]) not in at_j
    # depths are non-decreasing along the row (depth 0's branches first)
    assert bool((depth[:, 1:] >= depth[:, :-1]).all())


def test_fork_candidates_large_vocab_matches_sort() -> None:
    torch.manual_seed(1)
    b, k, v = 4, 3, 1000
    glue = torch.randn(b, k + 1, v).bfloat16()  # bf16: plenty of exact ties
    draft = torch.randint(0, v, (b, k))
    fan = [5, 4, 3, 6]
    tokens, depth = fork_candidates(glue, draft, fan)
    ref_t, ref_d = naive_forks(glue, draft, [fan] * b)
    assert tokens.tolist() == ref_t and depth.tolist() == ref_d
    assert math.prod(tokens.shape) == b * sum(fan)
