"""Fan-out (branches per depth) of the speculation cache, docs/speculation.md, "Fan-out".

Depth j in 0..K of a round's speculation corresponds to the verification outcome n = j:
the target accepts j draft tokens and emits r' after them. The draft pre-computes one
branch per (j, candidate r') for the F_j most likely candidates under its glue row j. The
budget M = sum_j F_j is the same for the hit and miss lists of a build, and the session's M
sizes every buffer of the tree decode; a build narrower than M (``scale_fan_out``, when a full
tree would outlast the target's verify) uses a prefix of them.

Exactness never depends on the fan-out: fork tokens are chosen deterministically from the
draft logits and only decide *which* outcomes are covered, not the proposal law of a
covered outcome (docs/speculation.md, "Why the output is exact"). Fan-out is purely a speed
knob (hit rate vs. tree compute).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import torch
from torch import Tensor

__all__ = [
    "depth_probabilities",
    "geometric_fan_out",
    "scale_fan_out",
    "select_fan_out",
    "shorten_fan_out",
    "uniform_fan_out",
    "validate_fan_out",
]


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


def _check_at_least(value: int, minimum: int, label: str) -> None:
    """Refuse ``value`` below ``minimum``, naming it by ``label`` (e.g. "k (lookahead)"), so every
    argument's range is checked and reported alike."""
    if value < minimum:
        raise ValueError(f"{label} must be >= {minimum}, got {value}")


def uniform_fan_out(k: int, f: int) -> list[int]:
    """The reference default: F branches at every depth, ``[f] * (k + 1)``."""
    k = _as_int(k, "k")
    f = _as_int(f, "f")
    _check_at_least(k, 0, "k (lookahead)")
    _check_at_least(f, 1, "f (fan-out per depth)")
    return [f] * (k + 1)


def validate_fan_out(fan_out: Sequence[int], k: int) -> list[int]:
    """Check a fan-out list for lookahead k and return it as a list of Python ints.

    Requirements: exactly k + 1 entries (depths 0..K), each a non-negative int, and a
    positive sum (M = sum must be >= 1 so at least one branch exists).
    """
    k = _as_int(k, "k")
    _check_at_least(k, 0, "k (lookahead)")
    if isinstance(fan_out, (str, bytes)) or not isinstance(fan_out, Sequence):
        raise ValueError(f"fan_out must be a sequence of k+1={k + 1} ints, got {fan_out!r}")
    if len(fan_out) != k + 1:
        raise ValueError(
            f"fan_out must have k+1={k + 1} entries (one per depth 0..{k}), got {len(fan_out)}"
        )
    out: list[int] = []
    for j, f in enumerate(fan_out):
        if isinstance(f, bool) or not isinstance(f, Integral):
            raise ValueError(f"fan_out[{j}] must be an int, got {f!r}")
        if f < 0:
            raise ValueError(f"fan_out[{j}] must be >= 0, got {f}")
        out.append(int(f))
    if sum(out) <= 0:
        raise ValueError("fan_out must have a positive sum (total branch budget M >= 1)")
    return out


def depth_probabilities(k: int, acceptance: float) -> list[float]:
    """P(n = j) for i.i.d. per-token acceptance α: α^j (1 - α) for j < K, α^K for j = K."""
    k = _as_int(k, "k")
    _check_at_least(k, 0, "k (lookahead)")
    if isinstance(acceptance, bool) or not isinstance(acceptance, Real):
        raise ValueError(f"acceptance must be a real number in [0, 1], got {acceptance!r}")
    a = float(acceptance)
    if not (0.0 <= a <= 1.0):  # also rejects NaN
        raise ValueError(f"acceptance must be in [0, 1], got {acceptance!r}")
    return [a**j * (1.0 - a) for j in range(k)] + [a**k]


def _capped_proportional(
    weights: list[float], budget: float, cap: float | None, alloc: list[float]
) -> float:
    """Water-fill ``budget`` onto the positive-weight depths ∝ weight, at most ``cap`` each.

    Depths whose proportional share would exceed the cap are pinned at the cap and the rest
    is redistributed over the others. Updates ``alloc`` in place and returns what could not
    be placed (> 0 only when every positive-weight depth is capped).
    """
    free = [j for j, w in enumerate(weights) if w > 0 and (cap is None or alloc[j] < cap)]
    remaining = budget
    while free and remaining > 0:
        scale = remaining / sum(weights[j] for j in free)
        over = [j for j in free if cap is not None and alloc[j] + weights[j] * scale >= cap]
        if not over:
            for j in free:
                alloc[j] += weights[j] * scale
            return 0.0
        for j in over:
            remaining -= cap - alloc[j]
            alloc[j] = float(cap)
        free = [j for j in free if j not in over]
    return remaining


def geometric_fan_out(
    k: int,
    budget: int,
    acceptance: float,
    power: float = 1.0,
    cap: int | None = None,
) -> list[int]:
    """Budget-optimal fan-out over depths 0..K (the paper's capped geometric series;
    docs/speculation.md, "Fan-out").

    Derivation. With per-token acceptance α the outcome n of a round has
    P(n=j) = α^j (1-α) for j < K and P(n=K) = α^K. Model the miss probability of depth j
    with F_j cached candidates as c·F_j^(-r) (the paper's power law, r = ``power`` > 0).
    The expected hit rate is H(F) = Σ_j P(n=j) (1 - c F_j^(-r)); maximise it subject to
    Σ_j F_j = M. Stationarity of the Lagrangian gives, for every depth,
        c r P(n=j) F_j^(-r-1) = λ   ⇒   F_j = (c r P(n=j) / λ)^(1/(1+r)) ∝ P(n=j)^(1/(1+r)).
    H is concave in F (F^(-r) is convex), so this is the maximum. For j < K the shares decay
    geometrically with ratio α^(1/(1+r)); depth K lacks the (1-α) factor and is boosted.
    Example: α=0.8, r=1, K=7, M=24 gives ≈[3.9, 3.5, 3.1, 2.8, 2.5, 2.2, 2.0, 4.0].

    Integer form. A per-depth ``cap`` pins depths at the cap and redistributes the excess
    proportionally over the others (water-filling, i.e. the KKT solution with the bound);
    the real shares are then rounded by largest remainder (ties: more probable depth first,
    then shallower depth), never pushing a depth above its cap, so the result sums to
    exactly ``budget`` — M is fixed so buffers stay static. Every depth gets >= 0.

    Edge cases. α = 0: all probability is on n = 0, so the whole budget goes to depth 0
    (with a cap, the excess fills depths 1, 2, ... in order, the α → 0+ limit). α = 1: all
    budget goes to depth K (with a cap, the excess is spread evenly over depths 0..K-1,
    which are equally likely in the α → 1- limit). The same ascending fill is used if α^j
    underflows to 0 for very deep j.

    Args:
        k: lookahead K >= 0 (K+1 depths).
        budget: M >= 1, total number of branches per sequence.
        acceptance: α in [0, 1].
        power: r > 0, exponent of the miss-rate power law.
        cap: optional maximum F_j (>= 1); requires cap * (k + 1) >= budget.
    Returns:
        list of k + 1 non-negative ints summing to ``budget``.
    """
    k = _as_int(k, "k")
    budget = _as_int(budget, "budget")
    _check_at_least(k, 0, "k (lookahead)")
    _check_at_least(budget, 1, "budget (total branches M)")
    probs = depth_probabilities(k, acceptance)
    if isinstance(power, bool) or not isinstance(power, Real):
        raise ValueError(f"power must be a positive real number, got {power!r}")
    r = float(power)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"power (miss-rate exponent r) must be finite and > 0, got {power!r}")
    if cap is not None:
        cap = _as_int(cap, "cap")
        _check_at_least(cap, 1, "cap")
        if cap * (k + 1) < budget:
            raise ValueError(
                f"cap={cap} over {k + 1} depths allows at most {cap * (k + 1)} branches, "
                f"less than budget={budget}"
            )

    weights = [p ** (1.0 / (1.0 + r)) for p in probs]
    alloc = [0.0] * (k + 1)
    remaining = _capped_proportional(weights, float(budget), cap, alloc)
    if remaining > 1e-9:
        # Only possible with a cap and zero-probability depths: use the α-limit order.
        assert cap is not None
        if float(acceptance) >= 1.0:
            spread = [1.0 if (j < k and weights[j] == 0) else 0.0 for j in range(k + 1)]
            remaining = _capped_proportional(spread, remaining, cap, alloc)
        for j in range(k + 1):
            if remaining <= 1e-9:
                break
            if weights[j] == 0:
                take = min(cap - alloc[j], remaining)
                alloc[j] += take
                remaining -= take

    # Largest-remainder rounding that respects the cap.
    floors = [min(math.floor(a + 1e-9), cap if cap is not None else budget) for a in alloc]
    fracs = [max(a - f, 0.0) for a, f in zip(alloc, floors)]
    short = budget - sum(floors)
    order = sorted(range(k + 1), key=lambda j: (-round(fracs[j], 9), -weights[j], j))
    while short > 0:
        progressed = False
        for j in order:
            if short == 0:
                break
            if cap is None or floors[j] < cap:
                floors[j] += 1
                short -= 1
                progressed = True
        if not progressed:  # pragma: no cover - excluded by the feasibility check above
            raise AssertionError("fan-out rounding could not place the budget")
    while short < 0:  # pragma: no cover - only under pathological float error
        j = max((j for j in range(k + 1) if floors[j] > 0), key=lambda j: (-fracs[j], j))
        floors[j] -= 1
        short += 1
    return floors


def placeholder_fan_out(k: int, budget: int, vocab_size: int) -> list[int] | None:
    """The fan-out of a row whose proposal was a fast backup's placeholder tokens.

    The target rejects a placeholder at once unless it happens to equal the target's own token,
    so such a row comes back with n = 0 and only depth 0 can hit: every branch goes there, up to
    the V - 1 tokens depth 0 can hold (the placeholder s_1 is excluded), and any rest to the bonus
    depth K. Keeps the budget M (static buffers). None when even that cannot hold M.
    """
    first = min(budget, vocab_size - 1)
    rest = budget - first
    if k == 0 or rest > vocab_size:
        return None
    return [first] + [0] * (k - 1) + [rest]


def shorten_fan_out(fan_out: Sequence[int], k: int) -> list[int]:
    """A fan-out list for a round of depth ``k`` <= K, from one for depth K (same budget M).

    A proposal of k tokens has outcomes n = 0..k, and n = k ("all accepted") is the union of the
    K-round outcomes n >= k, so the branches of depths k..K go to depth k. That depth excludes
    no draft token (its token is the bonus), so it can hold them all up to V.
    """
    fan = list(fan_out)
    if not 1 <= k <= len(fan) - 1:
        raise ValueError(f"a round's depth must be in 1..{len(fan) - 1}, got {k}")
    return fan[:k] + [sum(fan[k:])]


def scale_fan_out(fan_out: Sequence[int], budget: int) -> list[int]:
    """The list with ``budget`` branches, 1 <= budget <= M, each depth keeping its share.

    The draft narrows its tree this way when a full one would not fit in the time the target
    gives it (docs/speculation.md, "Branches per batch size"). Shares are rounded by largest
    remainder, ties to the shallower depth (it is the likelier outcome), so the result sums
    to exactly ``budget`` and never exceeds the original at any depth.
    """
    fan = list(fan_out)
    total = sum(fan)
    budget = _as_int(budget, "budget")
    if not 1 <= budget <= total:
        raise ValueError(f"budget must be in 1..{total} (the list's M), got {budget}")
    shares = [f * budget / total for f in fan]
    scaled = [math.floor(x) for x in shares]
    order = sorted(range(len(fan)), key=lambda j: (-(shares[j] - scaled[j]), j))
    for j in order[: budget - sum(scaled)]:
        scaled[j] += 1
    return scaled


def select_fan_out(
    hit: Tensor, hit_fan_out: Sequence[int], miss_fan_out: Sequence[int]
) -> Tensor:
    """Per-row fan-out LongTensor[B, K+1]: ``hit_fan_out`` where ``hit``, else the miss list.

    Both lists must have the same length and the same sum M (one build's buffers).
    """
    k = len(hit_fan_out) - 1
    hit_list = validate_fan_out(hit_fan_out, k)
    miss_list = validate_fan_out(miss_fan_out, k)
    if sum(hit_list) != sum(miss_list):
        raise ValueError(
            f"hit and miss fan-out lists must have the same sum M, got {sum(hit_list)} "
            f"and {sum(miss_list)}"
        )
    if hit.dim() != 1:
        raise ValueError(f"hit must be a [B] tensor, got shape {tuple(hit.shape)}")
    h = torch.tensor(hit_list, dtype=torch.long, device=hit.device)
    m = torch.tensor(miss_list, dtype=torch.long, device=hit.device)
    return torch.where(hit.to(torch.bool).unsqueeze(1), h, m)
