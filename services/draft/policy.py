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
"""

from __future__ import annotations

from dataclasses import dataclass

from saguaro.speculative.fanout import geometric_fan_out

EMA = 0.1  # weight of the newest observation


def _ema(old: float | None, new: float) -> float:
    return new if old is None else (1 - EMA) * old + EMA * new


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
    k: int
    budget: int
    accepted: int = 0
    rejections: int = 0
    hit_rate: float | None = None
    cycle_s: float | None = None
    jit_step_s: float | None = None  # one step of a JIT backup (a backup of depth k takes k)
    _fan_alpha: float | None = None

    def observe_outcome(self, accepted: int, depth: int) -> None:
        """A row's outcome: ``accepted`` of the ``depth`` tokens it was proposed."""
        self.accepted += accepted
        self.rejections += accepted < depth

    def observe_lookup(self, hit: bool) -> None:
        self.hit_rate = _ema(self.hit_rate, float(hit))

    def observe_cycle(self, seconds: float) -> None:
        self.cycle_s = _ema(self.cycle_s, seconds)

    def observe_jit(self, step_seconds: float) -> None:
        self.jit_step_s = _ema(self.jit_step_s, step_seconds)

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
