"""Never slower than the best of plain decoding and synchronous SD: per batch size, run the
fastest of the decoding modes the deployment can serve.

The *arms* are the ways a round can run: ``ar`` (plain decoding), ``sd`` (synchronous
speculative decoding: the draft drafts K tokens while the target waits, and builds nothing)
and, with a draft service, ``ssd`` (the draft answers from the speculation cache it built
during the previous verify). An SD deployment has ``ar`` and ``sd``; an SSD deployment all three
(its ``sd`` arm asks the same draft service for a synchronous round). Which wins depends on the
batch size (the target's verify cost grows with B·(K+1) tokens, the draft's build with B·M
branches), the acceptance rate and the hardware, so the governor measures instead of
modelling: per batch-size bucket it keeps the throughput of the last ``WINDOW`` rounds of each
arm, with its standard error, and runs the best. The draft's own adaptations (fan-out from
acceptance, JIT vs fast backup from round economics; ``services/draft/policy.py``) act first;
this is the last resort.

Plain decoding is the safe default: a bucket the governor has not measured decodes plainly
(unless another arm already wins at a larger batch, which makes it all but certain to win here)
and tries the other arms in short bursts only after ``base_interval`` rounds, so the transient
batch sizes a batch passes through as requests finish never pay for measuring. An arm must beat
the cheaper arms before it (in the order ``ar``, ``sd``, ``ssd``) by ``margin`` to be chosen: a
switch has costs the steady-state estimates leave out, and a near-tie is not worth them.

Estimates go stale (acceptance drifts with the text, load changes), so the losing arms are
re-measured, one burst at a time in turn, every ``interval`` rounds: ``burst`` rounds, more (up
to ``max_burst``) while the burst's arm and the chosen one are within ``Z`` standard errors — a
clearly worse arm is dropped fast, and a long burst happens only when the two are close, where
it costs little. The interval doubles each time a burst confirms the choice (back to
``base_interval`` when it flips) and is at least what keeps a burst's measured cost under
``probe_budget`` (0.2 %) of the rounds' time. That cost includes the switch: the first round of
a speculative arm after rounds of another is a guaranteed cache miss or catch-up (the draft was
idle or built nothing), so it is measured apart (the *warm-up* rate) and left out of the arm's
estimate, which is of steady state.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from saguaro.speculative.costs import bucket_of

WINDOW = 32  # rounds of each arm an estimate rests on
Z = 2.0  # standard errors that make a difference between two arms conclusive
ARMS = ("ar", "sd", "ssd")  # in order of cost: a later arm must beat an earlier one by the margin
ARMS_OF_MODE = {"sd": ("ar", "sd"), "ssd": ARMS}


@dataclass
class _Rate:
    """The last ``WINDOW`` rounds of one mode: throughput (total tokens / total seconds) and its
    standard error. Speculative rounds vary a lot (a round commits 1 to K+1 tokens per row,
    hits and misses differ in cost), so an estimate needs a few dozen of them."""

    window: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    rounds: int = 0  # every round measured, including those the window has dropped
    _tokens: float = 0.0  # sums over the window
    _seconds: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        if len(self.window) == self.window.maxlen:
            old_tokens, old_seconds = self.window[0]
            self._tokens -= old_tokens
            self._seconds -= old_seconds
        self.window.append((tokens, seconds))
        self._tokens += tokens
        self._seconds += seconds
        self.rounds += 1

    @property
    def tokens(self) -> float:
        """Mean tokens of a round."""
        return self._tokens / len(self.window) if self.window else 0.0

    @property
    def seconds(self) -> float:
        """Mean seconds of a round."""
        return self._seconds / len(self.window) if self.window else 0.0

    @property
    def per_second(self) -> float | None:
        return self._tokens / self._seconds if self.window and self._seconds > 0 else None

    def standard_error(self) -> float:
        """Of ``per_second``, a ratio estimator (delta method); infinite below two rounds."""
        n = len(self.window)
        rate = self.per_second
        if n < 2 or rate is None:
            return math.inf
        spread = sum((t - rate * s) ** 2 for t, s in self.window) / (n - 1)
        return math.sqrt(spread / n) / self.seconds


@dataclass
class _Bucket:
    rates: dict[str, _Rate]  # steady-state rounds of each arm
    warm: dict[str, _Rate]  # each speculative arm's first round after another arm's: the cost of a switch
    interval: int
    inherited: str  # the choice until two arms are measured here
    since_probe: int = 0  # rounds of the chosen arm since the last burst of another
    probe_left: int = 0  # rounds left in the current burst
    probe_arm: str = "ar"  # the burst's arm
    probing: bool = False  # the round being run belongs to a burst
    burst_rounds: int = 0  # rounds the current burst has run
    choice_before_probe: str = "ar"
    probes: int = 0  # bursts so far: they visit the other arms in turn


def _excess(rate: _Rate, per_second: float) -> float:
    """Seconds a round at ``rate`` takes beyond what ``per_second`` needs for its tokens."""
    return max(0.0, rate.seconds - rate.tokens / per_second)


class SpeculationGovernor:
    def __init__(self, base_interval: int = 16, max_interval: int = 4096, burst: int = 4, min_rounds: int = 3,
                 probe_budget: float = 0.002, margin: float = 0.02, max_burst: int = WINDOW,
                 arms: tuple[str, ...] | None = None):
        """``burst`` rounds re-measure a losing arm every ``interval`` rounds (from
        ``base_interval`` up to ``max_interval``, and long enough that probing costs at most
        ``probe_budget`` of the time; 0 disables that bound), and up to ``max_burst`` while the
        two arms' estimates are too close to call; each arm needs ``min_rounds`` measured
        rounds before it can win; a costlier arm wins only by more than ``margin``.
        ``arms``: a subset of ``ARMS`` with ``ar``; None: every arm of the engine's mode
        (``bind``), or all of ``ARMS`` for a governor used before any engine binds it."""
        if (not 1 <= base_interval <= max_interval or not 2 <= burst <= max_burst or min_rounds < 1
                or not 0 <= probe_budget < 1 or not 0 <= margin < 1):
            raise ValueError("need 1 <= base_interval <= max_interval, 2 <= burst <= max_burst, min_rounds >= 1, "
                             "0 <= probe_budget < 1, 0 <= margin < 1")
        if arms is not None and ("ar" not in arms or len(arms) < 2 or not set(arms) <= set(ARMS)):
            raise ValueError(f"need arms: 'ar' and at least one of 'sd', 'ssd' (got {arms!r})")
        self.base_interval, self.max_interval = base_interval, max_interval
        self.burst, self.max_burst, self.min_rounds = burst, max_burst, min_rounds
        self.probe_budget, self.margin = probe_budget, margin
        self.arms: tuple[str, ...] | None = None if arms is None else tuple(a for a in ARMS if a in arms)
        self.buckets: dict[int, _Bucket] = {}
        # the previous round's arm: the first round of a speculative arm after another arm's (and
        # the very first: the draft has just prefilled) is a warm-up
        self._last_arm = "ar"

    def bind(self, mode: str) -> None:
        """The engine's mode: its arms, unless given; refuses arms the mode cannot run."""
        available = ARMS_OF_MODE.get(mode)
        if available is None:
            raise ValueError(f"a governor needs a speculative mode (sd or ssd), not {mode!r}")
        if self.arms is None:
            self.arms = available
        elif not set(self.arms) <= set(available):
            raise ValueError(f"mode {mode} cannot run the arms {self.arms}; it has {available}")

    def _bucket(self, batch_size: int) -> _Bucket:
        if self.arms is None:
            self.bind("ssd")
        key = bucket_of(batch_size)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = self._new_bucket(key)
        return bucket

    def _new_bucket(self, key: int) -> _Bucket:
        """A cold bucket decodes plainly, unless a speculative arm wins at a larger batch: with
        the usual shape of the economics it then wins here too (the nearest larger bucket's)."""
        larger = sorted((k, self._measured_choice(b)) for k, b in self.buckets.items() if k > key)
        inherited = next((choice for _, choice in larger if choice not in (None, "ar")), "ar")
        return _Bucket({a: _Rate() for a in self.arms}, {a: _Rate() for a in self.arms}, self.base_interval,
                       inherited=inherited)

    def _measured(self, bucket: _Bucket) -> list[str]:
        return [a for a in self.arms if bucket.rates[a].rounds >= self.min_rounds and bucket.rates[a].per_second]

    def _measured_choice(self, bucket: _Bucket) -> str | None:
        """The fastest measured arm, a costlier one only by the margin; None below two arms."""
        measured = self._measured(bucket)
        if len(measured) < 2:
            return None
        best = measured[0]
        for arm in measured[1:]:
            if bucket.rates[arm].per_second > bucket.rates[best].per_second * (1 + self.margin):
                best = arm
        return best

    def _preferred(self, bucket: _Bucket) -> str:
        """The measured choice; until two arms are measured, the inherited one."""
        measured = self._measured_choice(bucket)
        return bucket.inherited if measured is None else measured

    def prefers(self, batch_size: int) -> str:
        """The current choice at ``batch_size``, without running a round: whether sequences just
        admitted should be sent to the draft now, or with their first speculative round."""
        return self._preferred(self._bucket(batch_size))

    def choose(self, batch_size: int) -> str:
        """The arm this round of ``batch_size`` speculating rows runs."""
        bucket = self._bucket(batch_size)
        preferred = self._preferred(bucket)
        if bucket.probe_left == 0 and bucket.since_probe >= bucket.interval:
            bucket.since_probe, bucket.probe_left, bucket.burst_rounds = 0, self.burst, 0
            bucket.probe_arm, bucket.choice_before_probe = self._next_probe(bucket, preferred), preferred
        bucket.probing = bucket.probe_left > 0
        if bucket.probing:
            bucket.probe_left -= 1
            bucket.burst_rounds += 1
            return bucket.probe_arm
        bucket.since_probe += 1
        return preferred

    def _next_probe(self, bucket: _Bucket, preferred: str) -> str:
        """An arm not yet measured here, else the others in turn."""
        others = [a for a in self.arms if a != preferred]
        unmeasured = [a for a in others if bucket.rates[a].rounds < self.min_rounds]
        bucket.probes += 1
        return unmeasured[0] if unmeasured else others[bucket.probes % len(others)]

    def record(self, batch_size: int, arm: str, tokens: int, seconds: float) -> None:
        """The round that just ran (as ``choose`` decided): committed tokens and wall time."""
        bucket = self._bucket(batch_size)
        warm_up = arm != "ar" and self._last_arm != arm
        self._last_arm = arm
        (bucket.warm if warm_up else bucket.rates)[arm].add(tokens, seconds)
        if bucket.probing and bucket.probe_left == 0:
            if bucket.burst_rounds < self.max_burst and self._too_close(bucket):
                bucket.probe_left = 1  # one more round of the burst
                return
            bucket.probing = False  # the burst ended: did it confirm the choice?
            confirmed = self._preferred(bucket) == bucket.choice_before_probe
            bucket.interval = self._interval(bucket, bucket.interval * 2 if confirmed else self.base_interval)

    def _too_close(self, bucket: _Bucket) -> bool:
        """Whether the estimates cannot yet tell the burst's arm from the choice before it (by
        ``Z`` standard errors; the costlier of the two must win by the margin)."""
        cheap_arm, costly_arm = sorted((bucket.probe_arm, bucket.choice_before_probe), key=ARMS.index)
        cheap, costly = bucket.rates[cheap_arm], bucket.rates[costly_arm]
        if min(cheap.rounds, costly.rounds) < self.min_rounds:
            return True
        gap = costly.per_second - cheap.per_second * (1 + self.margin)
        return abs(gap) < Z * math.hypot(costly.standard_error(), cheap.standard_error() * (1 + self.margin))

    def forget(self, batch_size: int, arm: str) -> None:
        """``arm`` now runs differently at ``batch_size`` (SSD changed its depth): its estimate
        describes what no longer runs, so it starts over, and it is probed again soon."""
        bucket = self._bucket(batch_size)
        bucket.rates[arm], bucket.warm[arm] = _Rate(), _Rate()
        bucket.interval = min(bucket.interval, self.base_interval)
        bucket.since_probe = min(bucket.since_probe, bucket.interval)

    def unanswered(self) -> None:
        """A round meant to speculate ran plainly because the draft did not answer in time (or
        is down): it measures no arm, and the next speculative round is a warm-up."""
        self._last_arm = "ar"

    def _interval(self, bucket: _Bucket, wanted: int) -> int:
        """``wanted``, raised so that a burst of the arm just probed costs at most the probe budget;
        the base interval while an arm is not measured here (its first burst is what tells)."""
        if any(bucket.rates[a].rounds < self.min_rounds for a in self.arms):
            return self.base_interval
        if self.probe_budget > 0 and self._measured_choice(bucket) is not None:
            wanted = max(wanted, math.ceil(self._burst_cost(bucket) / self.probe_budget))
        return min(max(wanted, self.base_interval), self.max_interval)

    def _burst_cost(self, bucket: _Bucket) -> float:
        """Rounds of the preferred arm's time that a burst of the probed arm loses, the switches
        (the warm-up rounds of the probed arm and of the preferred one after it) included."""
        preferred, probe = self._preferred(bucket), bucket.probe_arm
        chosen = bucket.rates[preferred]
        rate = chosen.per_second

        def warm(arm: str) -> _Rate:
            return bucket.warm[arm] if bucket.warm[arm].rounds else bucket.rates[arm]

        if probe == preferred:
            return 0.0
        if probe == "ar":
            cost = self.burst * _excess(bucket.rates["ar"], rate)
        else:
            cost = _excess(warm(probe), rate) + (self.burst - 1) * _excess(bucket.rates[probe], rate)
        if preferred != "ar":
            cost += _excess(warm(preferred), rate)
        return cost / chosen.seconds

    def describe(self) -> dict[int, dict]:
        """Per bucket: measured tokens/s of each arm and the current choice (for logs and tests)."""
        return {k: {"tokens_per_s": {a: r.per_second for a, r in b.rates.items()}, "choice": self._preferred(b),
                    "interval": b.interval}
                for k, b in sorted(self.buckets.items())}
