"""The draft's adaptive choices, from what it measures of each round.

* **Fan-out (geometric).** The per-token acceptance α is estimated from the outcomes the target
  reports (n accepted of the round's k): rounds are truncated geometric draws, so the
  maximum-likelihood estimate is α = Σn / (Σn + #rounds with n < k). The M branches are then spread with
  ``geometric_fan_out`` (F_j ∝ P(n=j)^(1/2), docs/speculation.md, "Fan-out"), recomputed when α moves.
* **Backup (adaptive).** On a miss, JIT drafting buys real proposals for the missed rows at the
  cost of K draft steps on the critical path; the fast backup costs nothing but those rows yield
  one token. With B rows, a round of depth k, hit rate p, expected tokens per drafted row
  E = (1−α^(k+1))/(1−α), target cycle time T (reply → next request) and JIT time T_j = k · (one
  JIT step):
      JIT  : B·E               tokens per  T + (1 − p^B)·T_j
      fast : B·(p·E + 1 − p)   tokens per  T
  and the draft picks the higher rate. Until both times have been measured it uses the batch
  threshold (JIT up to ``jit_max_batch_size`` rows), which also provides the first measurements.
* **Branches per batch size** (``TreeBudget``). The target sends with every SSD round the time it
  expects to spend before its next request. A build of m branches per row at depth k costs
  ``T_fixed + k * T_step(m)`` (glue and fork, then k tree steps), each measured per batch-size
  bucket, T_step on a line in m. A build that fits keeps all M branches. One that overruns
  narrows to the most branches that fit, since a tree that outlasts the verify makes the target
  wait every round, but never below the width whose step is as cheap as one branch's (within
  ``FLAT_STEP``): there narrowing loses hits and saves nothing (docs/speculation.md, "Branches
  per batch size").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from saguaro.speculative.costs import Line, bucket_of, ema
from saguaro.speculative.fanout import geometric_fan_out

EMA = 0.1  # weight of the newest observation
BUILD_MARGIN = 0.1  # share of the target's time a build leaves free: steps vary from round to round
FLAT_STEP = 1.25  # a step at most this much dearer than a one-branch step saves too little to narrow the tree


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a round commits for a drafted row under i.i.d. acceptance α (incl. r')."""
    return float(k + 1) if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def jit_pays(batch: int, k: int, alpha: float, hit_rate: float, cycle_s: float, jit_s: float) -> bool:
    """Whether JIT backup gives more tokens per second than the fast backup (see module doc)."""
    e = expected_tokens(alpha, k)
    jit_rate = batch * e / (cycle_s + (1 - hit_rate**batch) * jit_s)
    fast_rate = batch * (hit_rate * e + 1 - hit_rate) / cycle_s
    return jit_rate >= fast_rate


@dataclass
class RoundEconomics:
    """What the draft has measured of a session's rounds (acceptance, lookup hit rate, round and
    JIT-step times), kept so that the backup policy (``use_jit``) and the geometric fan-out
    (``geometric_lists``) follow the session's real costs instead of fixed guesses."""

    k: int
    budget: int
    accepted: int = 0  # proposed tokens the target accepted
    rejections: int = 0  # rows whose proposal the target cut short
    hit_rate: float | None = None  # EMA of speculation-cache lookups that hit
    cycle_s: float | None = None  # EMA of the time from a reply to the next request (the target's turn)
    jit_step_s: float | None = None  # one step of a JIT backup (a backup of depth k takes k)
    _fan_alpha: float | None = None  # the acceptance the current geometric lists were spread for

    def observe_outcome(self, accepted: int, depth: int) -> None:
        """A row's outcome: ``accepted`` of the ``depth`` tokens it was proposed."""
        self.accepted += accepted
        self.rejections += accepted < depth

    def observe_lookup(self, hit: bool) -> None:
        self.hit_rate = ema(self.hit_rate, float(hit), EMA)

    def observe_cycle(self, seconds: float) -> None:
        self.cycle_s = ema(self.cycle_s, seconds, EMA)

    def observe_jit(self, step_seconds: float) -> None:
        self.jit_step_s = ema(self.jit_step_s, step_seconds, EMA)

    @property
    def acceptance(self) -> float | None:
        total = self.accepted + self.rejections
        return self.accepted / total if total else None

    def use_jit(self, batch: int, threshold: int, depth: int) -> bool:
        """For a round of ``batch`` rows proposing ``depth`` tokens each."""
        alpha = self.acceptance
        if None in (alpha, self.hit_rate, self.cycle_s, self.jit_step_s) or self.cycle_s <= 0:
            return batch <= threshold
        return jit_pays(batch, depth, alpha, self.hit_rate, self.cycle_s, depth * self.jit_step_s)

    def geometric_lists(self, current: list[int], min_change: float = 0.02) -> list[int]:
        """Re-spread the budget when the acceptance estimate has moved; else keep ``current``."""
        alpha = self.acceptance
        if alpha is None or (self._fan_alpha is not None and abs(alpha - self._fan_alpha) < min_change):
            return current
        self._fan_alpha = alpha
        return geometric_fan_out(self.k, self.budget, alpha)


@dataclass
class _BuildCosts:
    fixed_s: float | None = None  # glue and fork
    step: Line = field(default_factory=Line)  # one tree step, by branches per row


class TreeBudget:
    """Branches per row of the next build, so that it fits the time the target gives it."""

    def __init__(self, budget: int):
        self.budget = budget
        self.costs: dict[int, _BuildCosts] = {}

    def observe(self, batch: int, branches: int, depth: int, fixed_s: float, tree_s: float) -> None:
        """A build of ``batch`` rows, ``branches`` per row, ``depth`` tree steps."""
        costs = self.costs.setdefault(bucket_of(batch), _BuildCosts())
        costs.fixed_s = ema(costs.fixed_s, fixed_s)
        costs.step.observe(branches, tree_s / depth)

    def branches(self, batch: int, depth: int, budget_s: float) -> int:
        """Branches per row for the next build: M while the build fits ``budget_s`` (0: no
        estimate yet) or no narrower build is known to; else the most branches that fit, but
        never fewer than a step costs as good as nothing to add.

        A narrower tree hits less, so narrowing must buy a real saving. Where a step's cost is
        flat in its width (a GPU below its knee, a small model whose steps are launch overhead
        on a CPU), the width up to ``FLAT_STEP`` times a one-branch step is kept even when the
        build overruns: the depth model then moves to a shallower round instead. Past the knee
        the tree narrows until it fits. With one width measured the costs in width are unknown:
        a build that overruns tries half the width once, and the line through both decides."""
        costs = self.costs.get(bucket_of(batch))
        if budget_s <= 0 or costs is None or costs.fixed_s is None:
            return self.budget
        room = budget_s * (1 - BUILD_MARGIN) - costs.fixed_s
        if len(costs.step.by_x) < 2:
            measured = next(iter(costs.step.by_x))
            fits = depth * costs.step.at(measured) <= room
            return self.budget if fits or measured < self.budget else max(1, self.budget // 2)
        # the line is affine in m: solve for the widest m under each limit instead of scanning M
        one, full = costs.step.at(1), costs.step.at(self.budget)
        per_branch = (full - one) / (self.budget - 1) if self.budget > 1 else 0.0

        def widest(limit: float) -> int:
            if per_branch <= 0:
                return self.budget if one <= limit else 0
            return min(self.budget, 1 + math.floor((limit - one) / per_branch)) if limit >= one else 0

        return max(1, widest(room / depth), widest(FLAT_STEP * one))
