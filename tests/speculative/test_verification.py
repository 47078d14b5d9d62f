"""Tests for saguaro.speculative.verification and saguaro.speculative.distributions.

The core of this file is an *exact* law computation: the verifier is a deterministic
function of its uniforms, and for fixed (p, q, draft tokens) it is piecewise constant in
each uniform with breakpoints that are known in closed form (the acceptance threshold
p(s)/q(s) for each u_i and the normalised cumulative sums of every possible residual for
the residual uniform). Evaluating the real function once per cell of that grid (at the cell
midpoint) and weighting by cell volume integrates over the randomness exactly, so we get
the exact law of the emitted tokens without Monte Carlo noise and without re-implementing
the acceptance rule in the test. Draft tokens are enumerated with weight prod_i q_i(s_i).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from saguaro.speculative.distributions import (
    probs_from_logits,
    proposal_probs,
    saguaro_rescale,
    sample_inverse_cdf,
    topk_indices,
)
from saguaro.speculative.verification import (
    VerifyResult,
    draw_verification_uniforms,
    greedy_verify,
    rejection_verify,
    verify,
)

TOL = 1e-6

# run(s[N, K] int64, u[N, K] f64, ru[N] f64) -> (n[N], r[N]) as numpy arrays
Runner = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------------------
# exact-law machinery
# --------------------------------------------------------------------------------------


def _cells(breaks: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints and widths of the cells of [0, 1] cut at ``breaks`` (empty cells dropped)."""
    b = np.unique(np.clip(np.asarray([0.0, 1.0, *breaks], dtype=np.float64), 0.0, 1.0))
    lo, hi = b[:-1], b[1:]
    width = hi - lo
    keep = width > 1e-12
    return ((lo + hi) / 2)[keep], width[keep]


def _normalised_cdf(d: np.ndarray) -> list[float]:
    return list(np.cumsum(d) / d.sum()) if d.sum() > 0 else []


def round_law(
    p: np.ndarray, q: np.ndarray, run: Runner, draft_law: np.ndarray | None = None
) -> dict[tuple[int, ...], float]:
    """Exact law of the tuple emitted by one round (s_1..s_n, r').

    p: [K+1, V] target rows; q: [K, V] the proposal law given to the verifier;
    draft_law: [K, V] the law the draft tokens are really drawn from (default q).
    """
    k, v = q.shape[0], p.shape[1]
    draft_law = q if draft_law is None else draft_law
    draft_law = draft_law / draft_law.sum(axis=1, keepdims=True)  # e.g. fp32 q' rows
    breaks: list[float] = _normalised_cdf(p[0])
    for n in range(k + 1):
        breaks += _normalised_cdf(p[n])
        if n < k:
            breaks += _normalised_cdf(np.maximum(p[n] - q[n], 0.0))
    ru_mid, ru_w = _cells(breaks)

    rows_s, rows_u, rows_w = [], [], []
    supports = [np.nonzero(draft_law[i] > 0)[0] for i in range(k)]
    for s in itertools.product(*supports):
        w_s = float(np.prod([draft_law[i, s[i]] for i in range(k)]))
        u_cells = []
        for i in range(k):
            theta = min(1.0, p[i, s[i]] / q[i, s[i]]) if q[i, s[i]] > 0 else 0.0
            u_cells.append(list(zip(*_cells([theta]))))
        for combo in itertools.product(*u_cells):
            rows_s.append(s)
            rows_u.append([c[0] for c in combo])
            rows_w.append(w_s * float(np.prod([c[1] for c in combo])))
    s_arr = np.asarray(rows_s, dtype=np.int64).reshape(len(rows_s), k)
    u_arr = np.asarray(rows_u, dtype=np.float64).reshape(len(rows_u), k)
    w_arr = np.asarray(rows_w, dtype=np.float64)
    r_cells = len(ru_mid)
    s_full = np.repeat(s_arr, r_cells, axis=0)
    u_full = np.repeat(u_arr, r_cells, axis=0)
    ru_full = np.tile(ru_mid, len(s_arr))
    w_full = np.repeat(w_arr, r_cells) * np.tile(ru_w, len(s_arr))

    n, r = run(s_full, u_full, ru_full)
    assert n.min() >= 0 and n.max() <= k
    assert r.min() >= 0 and r.max() < v
    law: dict[tuple[int, ...], float] = defaultdict(float)
    for srow, ni, ri, wi in zip(s_full.tolist(), n.tolist(), r.tolist(), w_full.tolist()):
        law[tuple(srow[:ni]) + (ri,)] += wi
    assert abs(sum(law.values()) - 1.0) < 1e-9
    return dict(law)


def sequence_law(
    positions_p: np.ndarray,
    positions_q: np.ndarray,
    make_run: Callable[[np.ndarray, np.ndarray], Runner],
    length: int,
    k: int,
    draft_positions: np.ndarray | None = None,
) -> dict[tuple[int, ...], float]:
    """Exact joint law of the first ``length`` emitted tokens over as many rounds as needed.

    The target and the draft are context independent but position dependent: the token at
    absolute position t has target law positions_p[t] and proposal law positions_q[t]. A
    round starting at position t verifies rows t..t+K; the next round starts right after
    the last emitted token.
    """
    memo: dict[int, dict[tuple[int, ...], float]] = {}

    def law_at(pos: int) -> dict[tuple[int, ...], float]:
        if pos not in memo:
            p = positions_p[pos : pos + k + 1]
            q = positions_q[pos : pos + k]
            dl = None if draft_positions is None else draft_positions[pos : pos + k]
            memo[pos] = round_law(p, q, make_run(p, q), dl)
        return memo[pos]

    def rec(pos: int, remaining: int) -> dict[tuple[int, ...], float]:
        if remaining == 0:
            return {(): 1.0}
        out: dict[tuple[int, ...], float] = defaultdict(float)
        for t, w in law_at(pos).items():
            if len(t) >= remaining:
                out[t[:remaining]] += w
            else:
                for t2, w2 in rec(pos + len(t), remaining - len(t)).items():
                    out[t + t2] += w * w2
        return out

    return dict(rec(0, length))


def assert_law_is_product(law: dict[tuple[int, ...], float], rows: np.ndarray) -> None:
    """law over tuples of length L must equal rows[0] ⊗ ... ⊗ rows[L-1]."""
    length, v = len(next(iter(law))), rows.shape[1]
    for t in itertools.product(range(v), repeat=length):
        expected = float(np.prod([rows[i, t[i]] for i in range(length)]))
        got = law.get(t, 0.0)
        assert abs(got - expected) < TOL, f"P{t} = {got}, expected {expected}"
        if expected == 0.0:
            assert got == 0.0, f"token tuple {t} with zero target mass was emitted"


def first_token_law(law: dict[tuple[int, ...], float], v: int) -> np.ndarray:
    out = np.zeros(v)
    for t, w in law.items():
        out[t[0]] += w
    return out


def rejection_runner(p: np.ndarray, q: np.ndarray) -> Runner:
    def run(s: np.ndarray, u: np.ndarray, ru: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_rows = len(s)
        tp = torch.tensor(p, dtype=torch.float32).expand(n_rows, -1, -1)
        tq = torch.tensor(q, dtype=torch.float32).expand(n_rows, -1, -1)
        s_t, u_t, ru_t = torch.from_numpy(s), torch.from_numpy(u), torch.from_numpy(ru)
        res = rejection_verify(tp, tq, s_t, u_t, ru_t)
        return res.accepted.numpy(), res.next_token.numpy()

    return run


def verify_runner(
    logits_by_p: dict[bytes, np.ndarray],
    temperature: float,
    use_probs: bool = True,
    proposal_is_sample: bool = True,
) -> Callable[[np.ndarray, np.ndarray], Runner]:
    """Runner through the combined ``verify`` entry point (logits + temperature)."""

    def make(p: np.ndarray, q: np.ndarray) -> Runner:
        logits = logits_by_p[p.tobytes()]

        def run(s: np.ndarray, u: np.ndarray, ru: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            n_rows = len(s)
            tl = torch.tensor(logits, dtype=torch.float32).expand(n_rows, -1, -1)
            tq = torch.tensor(q, dtype=torch.float32).expand(n_rows, -1, -1) if use_probs else None
            res = verify(
                tl,
                torch.from_numpy(s),
                tq,
                torch.full((n_rows,), temperature),
                torch.full((n_rows,), proposal_is_sample, dtype=torch.bool),
                uniforms=torch.from_numpy(u),
                residual_uniforms=torch.from_numpy(ru),
            )
            return res.accepted.numpy(), res.next_token.numpy()

        return run

    return make


def _dirichlet(rng: np.random.RandomState, rows: int, v: int, zeros: float = 0.0) -> np.ndarray:
    x = rng.dirichlet(np.ones(v), size=rows)
    if zeros > 0:
        mask = rng.rand(rows, v) < zeros
        for i in range(rows):
            keep = mask[i].copy()
            if keep.all():
                keep[rng.randint(v)] = False
            x[i, keep] = 0.0
    x = x.astype(np.float32).astype(np.float64)
    return x / x.sum(axis=1, keepdims=True)


def _softmax(logits: np.ndarray, t: float) -> np.ndarray:
    z = logits / t
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------
# exact law tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "v", "p_zeros", "q_zeros", "seed"),
    [
        (1, 3, 0.0, 0.0, 0),
        (2, 4, 0.0, 0.0, 1),
        (3, 4, 0.0, 0.0, 2),
        (2, 5, 0.3, 0.0, 3),  # p with zeros
        (2, 5, 0.0, 0.4, 4),  # q with zeros
        (3, 3, 0.3, 0.3, 5),  # both
    ],
)
def test_rejection_exact_joint_law(
    k: int, v: int, p_zeros: float, q_zeros: float, seed: int
) -> None:
    rng = np.random.RandomState(seed)
    length = k + 1
    positions = length + k
    p = _dirichlet(rng, positions, v, p_zeros)
    q = _dirichlet(rng, positions, v, q_zeros)
    law = sequence_law(p, q, rejection_runner, length, k)
    assert np.allclose(first_token_law(law, v), p[0], atol=TOL, rtol=0)
    assert_law_is_product(law, p)


def test_rejection_exact_when_p_equals_q() -> None:
    rng = np.random.RandomState(10)
    k, v = 2, 4
    p = _dirichlet(rng, 2 * k + 1, v, 0.2)
    law = sequence_law(p, p.copy(), rejection_runner, k + 1, k)
    assert_law_is_product(law, p)
    # identical proposal: everything is accepted, a single round emits K+1 tokens
    round0 = round_law(p[: k + 1], p[:k], rejection_runner(p[: k + 1], p[:k]))
    assert all(len(t) == k + 1 for t in round0)


def test_rejection_exact_disjoint_supports_and_one_hot_proposal() -> None:
    k, v = 2, 4
    p = np.array([[0.5, 0.5, 0.0, 0.0]] * (2 * k + 1))
    q_disjoint = np.array([[0.0, 0.0, 0.3, 0.7]] * (2 * k + 1))
    law = sequence_law(p, q_disjoint, rejection_runner, k + 1, k)
    assert_law_is_product(law, p)
    round0 = round_law(p[: k + 1], q_disjoint[:k], rejection_runner(p[: k + 1], q_disjoint[:k]))
    assert all(len(t) == 1 for t in round0)  # nothing can ever be accepted
    # draft at temperature 0 (one-hot q) with a sampling target
    q_one_hot = np.zeros((2 * k + 1, v))
    q_one_hot[:, 1] = 1.0
    rng = np.random.RandomState(11)
    p2 = _dirichlet(rng, 2 * k + 1, v)
    assert_law_is_product(sequence_law(p2, q_one_hot, rejection_runner, k + 1, k), p2)


@pytest.mark.parametrize(("downweight", "fan_out"), [(0.5, 1), (0.5, 2), (1.0, 1), (0.2, 0)])
def test_saguaro_rescaled_proposal_is_exact(downweight: float, fan_out: int) -> None:
    rng = np.random.RandomState(20)
    k, v = 2, 5
    p = _dirichlet(rng, 2 * k + 1, v)
    q = _dirichlet(rng, 2 * k + 1, v, 0.2)
    q_prime = saguaro_rescale(torch.tensor(q, dtype=torch.float32), fan_out, downweight)
    q_prime_np = q_prime.double().numpy()
    if downweight == 1.0:
        assert np.array_equal(q_prime_np, q.astype(np.float32).astype(np.float64))
    else:
        assert not np.allclose(q_prime_np, q)
    # the draft samples from q' and the verifier uses q' -> exact
    law = sequence_law(p, q_prime_np, rejection_runner, k + 1, k)
    assert_law_is_product(law, p)


def test_mismatched_proposal_bookkeeping_is_detected() -> None:
    """Sanity check of the harness: verifying with q while drafting from q' is NOT exact."""
    rng = np.random.RandomState(21)
    k, v = 1, 4
    p = _dirichlet(rng, 2 * k + 1, v)
    q = _dirichlet(rng, 2 * k + 1, v)
    q_prime = saguaro_rescale(torch.tensor(q, dtype=torch.float32), 1, 0.3).double().numpy()
    law = sequence_law(p, q, rejection_runner, 1, k, draft_positions=q_prime)
    assert np.abs(first_token_law(law, v) - p[0]).max() > 1e-3


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_verify_entry_point_exact_law_sampling(temperature: float) -> None:
    rng = np.random.RandomState(30)
    k, v = 2, 4
    logits = rng.randn(2 * k + 1, v) * 2
    logits[1, 3] = -np.inf  # a token with zero target probability at position 1
    p = _softmax(logits, temperature)
    q = _dirichlet(rng, 2 * k + 1, v, 0.25)
    table = {p[i : i + k + 1].tobytes(): logits[i : i + k + 1] for i in range(k + 1)}
    make = verify_runner(table, temperature)
    law = sequence_law(p, q, make, k + 1, k)
    assert_law_is_product(law, p)


def test_verify_entry_point_exact_law_greedy() -> None:
    rng = np.random.RandomState(31)
    k, v = 2, 4
    logits = rng.randn(2 * k + 1, v)
    one_hot = np.eye(v)[logits.argmax(axis=1)]
    q = _dirichlet(rng, 2 * k + 1, v, 0.3)  # arbitrary proposal, zeros included
    table = {one_hot[i : i + k + 1].tobytes(): logits[i : i + k + 1] for i in range(k + 1)}
    law = sequence_law(one_hot, q, verify_runner(table, 0.0), k + 1, k)
    assert_law_is_product(law, one_hot)
    # draft_probs=None is allowed when every row is greedy
    law_none = sequence_law(one_hot, q, verify_runner(table, 0.0, use_probs=False), k + 1, k)
    assert_law_is_product(law_none, one_hot)


def test_verify_forced_rows_have_exact_p0_law() -> None:
    """Non-sample proposals at T > 0: n = 0 and r' ~ p_0, whatever the junk tokens are."""
    rng = np.random.RandomState(32)
    k, v = 2, 4
    logits = rng.randn(k + 1, v)
    logits[0, 2] = -np.inf
    p = _softmax(logits, 1.0)
    q = _dirichlet(rng, k, v)
    junk = np.full((k, v), 1.0 / v)  # junk tokens: uniform, includes p-zero token 2
    make = verify_runner({p.tobytes(): logits}, 1.0, proposal_is_sample=False)
    law = round_law(p, q, make(p, q), draft_law=junk)
    assert all(len(t) == 1 for t in law)
    assert np.allclose(first_token_law(law, v), p[0], atol=TOL, rtol=0)
    assert law.get((2,), 0.0) == 0.0


# --------------------------------------------------------------------------------------
# deterministic unit tests
# --------------------------------------------------------------------------------------


def _logits_with_argmax(argmaxes: list[list[int]], v: int) -> torch.Tensor:
    t = torch.zeros(len(argmaxes), len(argmaxes[0]), v)
    for b, row in enumerate(argmaxes):
        for i, a in enumerate(row):
            t[b, i, a] = 5.0
    return t


def test_greedy_verify_cases() -> None:
    v = 6
    # K = 3; rows: reject first, partial (2 accepted), full acceptance with bonus
    logits = _logits_with_argmax([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]], v)
    tokens = torch.tensor([[0, 2, 3], [1, 2, 5], [1, 2, 3]])
    res = greedy_verify(logits, tokens)
    assert isinstance(res, VerifyResult)
    assert res.accepted.tolist() == [0, 2, 3]
    assert res.next_token.tolist() == [1, 3, 4]
    assert res.accepted.dtype == torch.long and res.next_token.dtype == torch.long
    # a later match after a mismatch does not count
    res2 = greedy_verify(logits[:1], torch.tensor([[1, 0, 3]]))
    assert res2.accepted.tolist() == [1] and res2.next_token.tolist() == [2]


def test_greedy_verify_ties_and_k0() -> None:
    logits = torch.tensor([[[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]]])
    res = greedy_verify(logits, torch.tensor([[1]]))
    assert res.accepted.tolist() == [1] and res.next_token.tolist() == [0]
    res_k0 = greedy_verify(logits[:, :1], torch.zeros(1, 0, dtype=torch.long))
    assert res_k0.accepted.tolist() == [0] and res_k0.next_token.tolist() == [1]


def test_verify_mixed_batch() -> None:
    v, k = 5, 2
    logits = _logits_with_argmax([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]], v)
    tokens = torch.tensor([[1, 2], [1, 2], [1, 2], [1, 4]])
    temps = torch.tensor([0.0, 0.0, 1.0, 1.0])
    is_sample = torch.tensor([True, False, False, True])
    q = torch.full((4, k, v), 1.0 / v)
    res = verify(
        logits,
        tokens,
        q,
        temps,
        is_sample,
        uniforms=torch.full((4, k), 0.0),
        residual_uniforms=torch.tensor([0.5, 0.5, 0.999, 0.0]),
    )
    p = probs_from_logits(logits, temps)
    # greedy rows: full acceptance + bonus argmax, also for the junk (non-sample) row
    assert res.accepted[:2].tolist() == [2, 2]
    assert res.next_token[:2].tolist() == [3, 3]
    # forced row: n = 0, r' from p_0 by inverse CDF
    assert res.accepted[2].item() == 0
    assert res.next_token[2].item() == sample_inverse_cdf(p[2, 0], torch.tensor(0.999)).item()
    # sampled row: u = 0 accepts s_1 (p/q > 0); s_2 = 4 has p_1(4) < q_1(4) but u = 0 < ratio
    assert res.accepted[3].item() == 2
    # with u just above p/q for the second token, it is rejected and the residual used
    ratio = (p[3, 1, 4] / q[3, 1, 4]).item()
    res_rej = verify(
        logits[3:],
        tokens[3:],
        q[3:],
        temps[3:],
        uniforms=torch.tensor([[0.0, min(ratio * 1.01, 0.999)]], dtype=torch.float64),
        residual_uniforms=torch.tensor([0.0], dtype=torch.float64),
    )
    assert res_rej.accepted.tolist() == [1]
    residual = (p[3, 1] - q[3, 1]).clamp_min(0)
    assert residual[4].item() == 0.0
    assert res_rej.next_token.item() == int(torch.nonzero(residual > 0)[0])


def test_q_zero_token_is_never_accepted_and_residual_fallback() -> None:
    p = torch.tensor([[[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]])
    q = torch.tensor([[[0.5, 0.5, 0.0]]])
    # token 2 has q = 0 (could not have been drawn): rejected even though u = 0
    res = rejection_verify(p, q, torch.tensor([[2]]), torch.zeros(1, 1), torch.tensor([0.25]))
    assert res.accepted.tolist() == [0]
    # residual max(0, p - q) is identically 0 -> fallback to p_0
    assert res.next_token.tolist() == [0]
    res = rejection_verify(p, q, torch.tensor([[2]]), torch.zeros(1, 1), torch.tensor([0.75]))
    assert res.next_token.tolist() == [1]
    # q > 0 but p = 0: never accepted, even for u == 0 exactly
    q2 = torch.tensor([[[0.2, 0.2, 0.6]]])
    res = rejection_verify(p, q2, torch.tensor([[2]]), torch.zeros(1, 1), torch.tensor([0.0]))
    assert res.accepted.tolist() == [0]
    assert res.next_token.tolist() == [0]  # residual = [0.3, 0.3, 0]
    res = rejection_verify(p, q2, torch.tensor([[2]]), torch.zeros(1, 1), torch.tensor([0.9999999]))
    assert res.next_token.tolist() == [1]


def test_full_acceptance_bonus_from_last_row() -> None:
    p = torch.tensor([[[0.6, 0.4, 0.0], [0.0, 0.0, 1.0]]])
    q = torch.tensor([[[0.6, 0.4, 0.0]]])
    for u in (0.0, 0.3, 0.999):
        res = rejection_verify(p, q, torch.tensor([[1]]), torch.tensor([[u]]), torch.tensor([u]))
        assert res.accepted.tolist() == [1]
        assert res.next_token.tolist() == [2]


def test_rejection_k0_is_plain_sampling() -> None:
    p = torch.tensor([[[0.0, 0.25, 0.75]]])
    q = torch.zeros(1, 0, 3)
    for u, expected in ((0.0, 1), (0.2499, 1), (0.25, 2), (0.9999, 2)):
        no_tokens = torch.zeros(1, 0, dtype=torch.long)
        res = rejection_verify(p, q, no_tokens, torch.zeros(1, 0), torch.tensor([u]))
        assert res.accepted.tolist() == [0] and res.next_token.tolist() == [expected]


def test_sample_inverse_cdf_intervals_and_zero_mass() -> None:
    probs = torch.tensor([0.0, 0.25, 0.0, 0.5, 0.25, 0.0])
    cases = [(0.0, 1), (0.2499, 1), (0.25, 3), (0.7499, 3), (0.75, 4), (0.99999, 4), (1.0, 4)]
    for u, expected in cases:
        assert sample_inverse_cdf(probs, torch.tensor(u)).item() == expected, u
    # unnormalised rows and batching
    rows = torch.tensor([[0.0, 2.0, 2.0], [3.0, 0.0, 1.0]])
    assert sample_inverse_cdf(rows, torch.tensor([0.5, 0.5])).tolist() == [2, 0]
    assert sample_inverse_cdf(rows, torch.tensor([0.0, 0.8])).tolist() == [1, 2]
    with pytest.raises(ValueError, match="uniforms shape"):
        sample_inverse_cdf(rows, torch.tensor([0.5]))


def test_probs_from_logits() -> None:
    logits = torch.tensor([[[1.0, 3.0, 3.0], [0.0, 1.0, 2.0]], [[1.0, 3.0, 3.0], [0.0, 1.0, 2.0]]])
    p = probs_from_logits(logits, torch.tensor([0.0, 2.0]))
    assert p.dtype == torch.float32
    assert torch.equal(p[0], torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))  # ties: lowest index
    expected = torch.softmax(logits[1].double() / 2.0, dim=-1).float()
    assert torch.allclose(p[1], expected, atol=1e-7)
    assert torch.allclose(probs_from_logits(logits.bfloat16(), 1.0).sum(-1), torch.ones(2, 2))
    # scalar and full-shape temperatures
    assert torch.equal(probs_from_logits(logits, 0.0)[1], p[0])
    full = probs_from_logits(logits, torch.tensor([[0.0, 2.0], [2.0, 0.0]]))
    assert torch.equal(full[0, 0], p[0, 0]) and torch.allclose(full[0, 1], p[1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        probs_from_logits(logits, -1.0)
    with pytest.raises(ValueError, match="prefix"):
        probs_from_logits(logits, torch.ones(3))


def test_saguaro_rescale_unit() -> None:
    q = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25]])
    out = saguaro_rescale(q, 1, 0.5)  # top-2
    # row 0: top-2 = tokens 1 and 3
    raw = torch.tensor([0.1, 0.2, 0.2, 0.15])
    assert torch.allclose(out[0], raw / raw.sum())
    # row 1: all tied -> lowest indices 0 and 1 (deterministic tie rule)
    raw = torch.tensor([0.125, 0.125, 0.25, 0.25])
    assert torch.allclose(out[1], raw / raw.sum())
    assert saguaro_rescale(q, 3, 1.0) is q
    assert torch.allclose(saguaro_rescale(q, 10, 0.3), q)  # F+1 >= V: everything scaled
    # proposal_probs composes temperature softmax and rescale
    logits = torch.log(q)
    assert torch.allclose(proposal_probs(logits, 1.0, fan_out=1, downweight=0.5), out, atol=1e-6)
    for bad in (0.0, -0.5, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="downweight"):
            saguaro_rescale(q, 1, bad)  # type: ignore[arg-type]
    for bad_f in (-1, 1.5, True):
        with pytest.raises(ValueError, match="fan_out"):
            saguaro_rescale(q, bad_f, 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="floating"):
        saguaro_rescale(torch.ones(2, 3, dtype=torch.long), 1, 0.5)


def test_topk_indices_tie_rule() -> None:
    x = torch.tensor([[-0.0, 0.0, 2.0, 2.0, -1.0, float("-inf")]])
    assert topk_indices(x, 4).tolist() == [[2, 3, 0, 1]]  # -0.0 ties with +0.0
    assert topk_indices(x.bfloat16(), 6).tolist() == [[2, 3, 0, 1, 4, 5]]
    allowed = torch.tensor([[True, True, False, True, True, True]])
    assert topk_indices(x, 3, allowed).tolist() == [[3, 0, 1]]
    assert topk_indices(x, 0).shape == (1, 0)
    with pytest.raises(ValueError):
        topk_indices(x, 7)


@pytest.mark.parametrize("seed", range(20))
def test_topk_indices_is_a_sort_by_value_then_index(seed: int) -> None:
    """Against the definition: sort (allowed) entries by value descending, then index
    ascending, and take the first k; values drawn from a few levels so ties are common."""
    g = torch.Generator().manual_seed(seed)
    rows, vocab = 6, int(torch.randint(2, 50, (1,), generator=g))
    x = torch.randint(-3, 4, (rows, vocab), generator=g).float() / 2
    x[torch.rand(rows, vocab, generator=g) < 0.1] = float("-inf")
    allowed = torch.rand(rows, vocab, generator=g) < 0.8
    allowed[:, :2] = True
    k = int(torch.randint(0, int(allowed.sum(-1).min()) + 1, (1,), generator=g))
    got = topk_indices(x, k, allowed)
    for row in range(rows):
        ranked = sorted((i for i in range(vocab) if allowed[row, i]), key=lambda i: (-x[row, i].item(), i))
        assert got[row].tolist() == ranked[:k]


def test_input_validation() -> None:
    p = torch.full((2, 3, 4), 0.25)
    q = torch.full((2, 2, 4), 0.25)
    toks = torch.zeros(2, 2, dtype=torch.long)
    u, ru = torch.zeros(2, 2), torch.zeros(2)
    with pytest.raises(ValueError, match="draft_probs shape"):
        rejection_verify(p, q[:, :1], toks, u, ru)
    with pytest.raises(ValueError, match="draft_tokens shape"):
        rejection_verify(p, q, toks[:, :1], u, ru)
    with pytest.raises(ValueError, match="integer"):
        rejection_verify(p, q, toks.float(), u, ru)
    with pytest.raises(ValueError, match="uniforms shape"):
        rejection_verify(p, q, toks, u[:1], ru)
    with pytest.raises(ValueError, match="residual_uniforms shape"):
        rejection_verify(p, q, toks, u, ru[:1])
    with pytest.raises(ValueError, match=r"\[B, K\+1, V\]"):
        greedy_verify(p[0], toks)
    with pytest.raises(ValueError, match="draft_probs is required"):
        verify(p, toks, None, torch.tensor([0.0, 1.0]), uniforms=u, residual_uniforms=ru)
    with pytest.raises(ValueError, match="need randomness"):
        verify(p, toks, q, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="both"):
        verify(p, toks, q, 1.0, uniforms=u)
    with pytest.raises(ValueError, match="not both"):
        verify(p, toks, q, 1.0, uniforms=u, residual_uniforms=ru, generator=torch.Generator())
    # all-greedy rows need neither draft_probs nor randomness
    res = verify(p, toks, None, torch.zeros(2))
    assert res.accepted.tolist() == [2, 2] and res.next_token.tolist() == [0, 0]


def emitted_tokens(draft_tokens: torch.Tensor, accepted: torch.Tensor, next_token: torch.Tensor) -> torch.Tensor:
    """Tokens a round emits, LongTensor[B, K+1]: ``s_1..s_n, r'`` then -1 (how the chi-square
    test below reads a batch of rounds as emitted sequences)."""
    b, k = draft_tokens.shape
    pad = torch.full((b, 1), -1, dtype=torch.long)
    out = torch.cat([draft_tokens.long(), pad], dim=1)
    out = torch.where(torch.arange(k + 1).unsqueeze(0) < accepted.unsqueeze(1), out, pad)
    return out.scatter(1, accepted.unsqueeze(1), next_token.long().unsqueeze(1))


def test_emitted_tokens() -> None:
    tokens = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 7]])
    out = emitted_tokens(tokens, torch.tensor([0, 2, 3]), torch.tensor([9, 8, 1]))
    assert out.tolist() == [[9, -1, -1, -1], [5, 6, 8, -1], [5, 6, 7, 1]]


def test_draw_verification_uniforms_reproducible_and_separate_streams() -> None:
    u1, r1 = draw_verification_uniforms(3, 2, torch.Generator().manual_seed(7))
    u2, r2 = draw_verification_uniforms(3, 2, torch.Generator().manual_seed(7))
    assert torch.equal(u1, u2) and torch.equal(r1, r2)
    assert u1.shape == (3, 2) and r1.shape == (3,) and u1.dtype == torch.float64
    assert bool(((u1 >= 0) & (u1 < 1)).all()) and bool(((r1 >= 0) & (r1 < 1)).all())
    u3, r3 = draw_verification_uniforms(
        3, 2, torch.Generator().manual_seed(7), residual_generator=torch.Generator().manual_seed(99)
    )
    assert torch.equal(u3, u1)  # acceptance stream unaffected by the residual stream
    expected_r3 = torch.rand(3, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    assert torch.equal(r3, expected_r3)
    with pytest.raises(ValueError, match="Generator"):
        draw_verification_uniforms(3, 2, None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# seeded Monte Carlo
# --------------------------------------------------------------------------------------


def test_monte_carlo_chi_square() -> None:
    n_rows, k, v = 20000, 2, 5
    rng = np.random.RandomState(40)
    target_logits = torch.tensor(rng.randn(k + 1, v) * 1.5, dtype=torch.float32)
    target_logits[0, 4] = -float("inf")
    draft_logits = torch.tensor(rng.randn(k, v), dtype=torch.float32)
    temperature = 0.8
    q = proposal_probs(draft_logits, 1.2, fan_out=1, downweight=0.5)  # draft T differs
    draft_gen = torch.Generator().manual_seed(1)
    tokens = torch.stack(
        [torch.multinomial(q[i], n_rows, replacement=True, generator=draft_gen) for i in range(k)],
        dim=1,
    )
    res = verify(
        target_logits.expand(n_rows, -1, -1),
        tokens,
        q.expand(n_rows, -1, -1),
        torch.full((n_rows,), temperature),
        generator=torch.Generator().manual_seed(2),
        residual_generator=torch.Generator().manual_seed(3),
    )
    p = probs_from_logits(target_logits, temperature).double().numpy()
    out = emitted_tokens(tokens, res.accepted, res.next_token)
    for pos, rows in ((0, torch.ones(n_rows, dtype=torch.bool)), (1, res.accepted >= 1)):
        counts = np.bincount(out[rows, pos].numpy(), minlength=v)
        support = p[pos] > 0
        assert counts[~support].sum() == 0
        expected = p[pos][support] / p[pos][support].sum() * int(rows.sum())
        assert chisquare(counts[support], expected).pvalue > 1e-3
    # the draft was reasonable, so multi-token rounds actually happened
    assert (res.accepted >= 1).float().mean().item() > 0.2


# --------------------------------------------------------------------------------------
# property tests
# --------------------------------------------------------------------------------------


@st.composite
def prob_rows(draw: st.DrawFn) -> torch.Tensor:
    v = draw(st.integers(1, 8))
    rows = draw(st.integers(1, 3))
    data = draw(
        st.lists(
            st.lists(st.sampled_from([0.0, 0.0, 0.1, 0.25, 0.5, 1.0, 3.0]), min_size=v, max_size=v),
            min_size=rows,
            max_size=rows,
        )
    )
    t = torch.tensor(data, dtype=torch.float32)
    t[:, 0] += (t.sum(-1) == 0).float()  # at least one positive entry per row
    return t / t.sum(-1, keepdim=True)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(probs=prob_rows(), fan_out=st.integers(0, 9), downweight=st.floats(0.01, 1.0))
def test_property_saguaro_rescale(probs: torch.Tensor, fan_out: int, downweight: float) -> None:
    out = saguaro_rescale(probs, fan_out, downweight)
    assert torch.allclose(out.sum(-1), torch.ones(probs.shape[0]), atol=1e-5)
    assert torch.equal(out > 0, probs > 0)
    assert bool((out >= 0).all())
    # naive reference: top-(F+1) by (prob desc, index asc), scaled by C, renormalised
    v = probs.shape[1]
    for b in range(probs.shape[0]):
        row = probs[b].tolist()
        top = sorted(range(v), key=lambda i: (-row[i], i))[: fan_out + 1]
        raw = [x * downweight if i in top else x for i, x in enumerate(row)]
        total = sum(raw)
        assert np.allclose(out[b].numpy(), [x / total for x in raw], atol=1e-6)
    # deterministic
    assert torch.equal(out, saguaro_rescale(probs.clone(), fan_out, downweight))
