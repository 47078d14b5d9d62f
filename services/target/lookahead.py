"""SD's best lookahead for the governor's synchronous arm: a cost model fed by measurements.

A synchronous (SD) round with lookahead k makes the target wait for the transport and k draft
steps, then verify; it commits per row

    E(k) = 1 + sum_{i=1..k} P(n >= i)

tokens, where P(n >= i) is the chance that the first i draft tokens are all accepted. Its rate
is therefore

    rate(k) = E(k) / (T_verify(k) + k * T_step + T_transport)

and the best lookahead is the k in 1..K that maximises it (docs/speculation.md). An SSD round
costs no draft steps on a hit, which is why SSD's K is larger than SD's best k on the same pair:
the SD arm of an SSD deployment uses this k, not SSD's K.

Every input is measured: P(n >= i) from every speculative round whose proposal was a real draft
(a cache hit or a JIT draft; fast backups' placeholders say nothing about the draft), and the
verify, draft-step and transport times from synchronous rounds (the draft's reply says how long
its JIT drafting and lookup took). The verify time is kept per lookahead and read off a straight
line through the lookaheads measured (weighted by their rounds, never falling), because it
grows with the tokens verified on a CPU and is flat on a GPU below its knee; with one lookahead
measured, it is taken as flat. Acceptance does not depend on the batch size; the times do,
so they are kept per batch-size bucket. Estimates decay exponentially, so they follow drift. Until a bucket has its times, or acceptance was observed at every position, the model
answers K.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from saguaro.services.target.governor import bucket_of

ALPHA = 0.05  # weight of one observation in the moving averages
FULL_WEIGHT = 20  # rounds after which a lookahead's verify time counts fully in the line


def _ema(old: float | None, value: float, alpha: float = ALPHA) -> float:
    return value if old is None else (1 - alpha) * old + alpha * value


@dataclass
class _Times:
    verify_by_k: dict[int, float] = field(default_factory=dict)  # verify time of rounds of lookahead k
    rounds_by_k: dict[int, int] = field(default_factory=dict)  # how many rounds each rests on
    step_s: float | None = None  # one draft step of a JIT draft at this batch size
    transport_s: float | None = None  # draft wait not spent drafting or looking up

    def verify_s(self, k: int) -> float | None:
        """The verify time at lookahead ``k``: a straight line through the lookaheads measured,
        each weighted by its rounds (up to ``FULL_WEIGHT``), never falling with k (it grows with
        the tokens verified on a CPU and is flat on a GPU below its knee; a falling line is
        noise); the one measured time when there is one."""
        points = [(x, t, min(self.rounds_by_k[x], FULL_WEIGHT)) for x, t in sorted(self.verify_by_k.items())]
        if not points:
            return None
        weight = sum(w for _, _, w in points)
        mean_k = sum(x * w for x, _, w in points) / weight
        mean_t = sum(t * w for _, t, w in points) / weight
        spread = sum(w * (x - mean_k) ** 2 for x, _, w in points)
        slope = sum(w * (x - mean_k) * (t - mean_t) for x, t, w in points) / spread if spread else 0.0
        return mean_t + max(0.0, slope) * (k - mean_k)


class LookaheadModel:
    def __init__(self, k_max: int):
        if k_max < 1:
            raise ValueError(f"k_max must be at least 1, got {k_max}")
        self.k_max = k_max
        # decayed counts of rows that reached position i (accepted its token) and of rows asked
        self._reached = [0.0] * k_max
        self._asked = [0.0] * k_max
        self.times: dict[int, _Times] = {}

    @property
    def reach(self) -> list[float | None]:
        """P(n >= i) for i = 1..K (None: position never proposed)."""
        return [r / a if a else None for r, a in zip(self._reached, self._asked)]

    def observe_acceptance(self, accepted: list[int], k: int) -> None:
        """Rows of a round whose proposals were real drafts of ``k`` tokens: n accepted each.
        Positions beyond ``k`` were not proposed and are not observed. Counts decay by ``ALPHA``
        a round, so the estimate follows drift."""
        if not accepted:
            return
        for i in range(min(k, self.k_max)):
            self._reached[i] = (1 - ALPHA) * self._reached[i] + sum(n > i for n in accepted)
            self._asked[i] = (1 - ALPHA) * self._asked[i] + len(accepted)

    def observe_times(self, batch_size: int, verify_s: float, draft_wait_s: float | None = None,
                      lookup_s: float = 0.0, jit_s: float = 0.0, jit_steps: int = 0) -> None:
        """A synchronous round of lookahead ``jit_steps``: its verify time and, from the draft's
        reply (``jit_s`` drafting, ``lookup_s`` looking up), its step time and the transport
        (the wait less lookup and drafting)."""
        times = self.times.setdefault(bucket_of(batch_size), _Times())
        times.verify_by_k[jit_steps] = _ema(times.verify_by_k.get(jit_steps), verify_s)
        times.rounds_by_k[jit_steps] = times.rounds_by_k.get(jit_steps, 0) + 1
        if draft_wait_s is not None and jit_steps > 0:
            times.step_s = _ema(times.step_s, jit_s / jit_steps)
            times.transport_s = _ema(times.transport_s, max(0.0, draft_wait_s - lookup_s - jit_s))

    def rate(self, batch_size: int, k: int) -> float | None:
        """Modelled tokens per second and row of an SD round with lookahead ``k`` (None: not
        yet measured)."""
        times, reach = self.times.get(bucket_of(batch_size)), self.reach[:k]
        if times is None or None in (times.verify_s(k), times.step_s, times.transport_s) or None in reach:
            return None
        tokens = 1.0 + sum(reach)
        return tokens / (times.verify_s(k) + k * times.step_s + times.transport_s)

    def best(self, batch_size: int) -> int:
        """The lookahead with the highest modelled rate; K until every k can be modelled."""
        rates = [self.rate(batch_size, k) for k in range(1, self.k_max + 1)]
        if None in rates:
            return self.k_max
        return 1 + max(range(self.k_max), key=rates.__getitem__)
