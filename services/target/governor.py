"""Never slower than plain decoding: speculate only at batch sizes where it pays.

Speculation pays when a round's tokens per second beat plain (AR) decoding's. That depends on
the batch size (the target's verify cost grows with B·(K+1) tokens, the draft's with B·M
branches), the acceptance rate and the hardware, so the governor measures instead of
modelling: per batch-size bucket it keeps the throughput of the last ``WINDOW`` speculative
rounds and plain rounds, with its standard error, and runs the better mode. The draft's own adaptations (fan-out from acceptance,
JIT vs fast backup from round economics; ``services/draft/policy.py``) act first; this is the
last resort, when even the best speculation loses.

Plain decoding is the safe default: a bucket the governor has not measured decodes plainly
(unless speculation already wins at a larger batch, which makes it all but certain to win here)
and tries speculation in a short burst only after ``base_interval`` rounds, so the transient
batch sizes a batch passes through as requests finish never pay for measuring. Speculation must
beat plain decoding by ``margin`` to be chosen: a switch has costs the steady-state estimates
leave out, and a near-tie is not worth them.

Estimates go stale (acceptance drifts with the text, load changes), so the losing mode is
re-measured in a burst every ``interval`` rounds: ``burst`` rounds, more (up to ``max_burst``)
while the two estimates are within ``Z`` standard errors — a clearly worse mode is dropped
fast, and a long burst happens only when the modes are close, where it costs little. The interval doubles each time a burst
confirms the choice (back to ``base_interval`` when it flips) and is at least what keeps a
burst's measured cost under ``probe_budget`` (0.2 %) of the rounds' time. That cost includes the
switch: the first speculative round after plain rounds is a guaranteed cache miss (the draft was
idle and must catch up), so it is measured apart (the *warm-up* rate) and left out of the
speculative estimate, which is of steady state.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW = 32  # rounds of each mode an estimate rests on
Z = 2.0  # standard errors that make a difference between the modes conclusive


def bucket_of(batch_size: int) -> int:
    """Batch sizes 1, 2, 3-4, 5-8, 9-16, ... share a bucket (the upper bound)."""
    return 1 << max(batch_size - 1, 0).bit_length()


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
    spec: _Rate
    plain: _Rate
    warm: _Rate  # speculative rounds right after plain ones: cache misses, the cost of a switch
    interval: int
    inherited: bool  # the choice until both modes are measured here
    since_probe: int = 0  # rounds in the preferred mode since the last burst of the other
    probe_left: int = 0  # rounds left in the current burst of the other mode
    probe_spec: bool = False  # the burst's mode
    probing: bool = False  # the round being run belongs to a burst
    burst_rounds: int = 0  # rounds the current burst has run
    choice_before_probe: bool = False


def _excess(rate: _Rate, per_second: float) -> float:
    """Seconds a round at ``rate`` takes beyond what ``per_second`` needs for its tokens."""
    return max(0.0, rate.seconds - rate.tokens / per_second)


class SpeculationGovernor:
    def __init__(self, base_interval: int = 16, max_interval: int = 4096, burst: int = 4, min_rounds: int = 3,
                 probe_budget: float = 0.002, margin: float = 0.02, max_burst: int = WINDOW):
        """``burst`` rounds re-measure the losing mode every ``interval`` rounds (from
        ``base_interval`` up to ``max_interval``, and long enough that probing costs at most
        ``probe_budget`` of the time; 0 disables that bound), and up to ``max_burst`` while the
        two modes' estimates are too close to call; each mode needs ``min_rounds`` measured
        rounds before it can win; speculation wins only by more than ``margin``."""
        if (not 1 <= base_interval <= max_interval or not 2 <= burst <= max_burst or min_rounds < 1
                or not 0 <= probe_budget < 1 or not 0 <= margin < 1):
            raise ValueError("need 1 <= base_interval <= max_interval, 2 <= burst <= max_burst, min_rounds >= 1, "
                             "0 <= probe_budget < 1, 0 <= margin < 1")
        self.base_interval, self.max_interval = base_interval, max_interval
        self.burst, self.max_burst, self.min_rounds = burst, max_burst, min_rounds
        self.probe_budget, self.margin = probe_budget, margin
        self.buckets: dict[int, _Bucket] = {}
        # whether the previous round speculated: the first speculative round after plain ones
        # (and the very first: the draft has just prefilled) is a warm-up cache miss
        self._last_spec = False

    def _bucket(self, batch_size: int) -> _Bucket:
        key = bucket_of(batch_size)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = self._new_bucket(key)
        return bucket

    def _new_bucket(self, key: int) -> _Bucket:
        """A cold bucket decodes plainly, unless speculation wins at a larger batch: with the
        usual shape of the economics it then wins here too."""
        spec_wins_above = any(k > key and self._measured_choice(b) for k, b in self.buckets.items())
        return _Bucket(_Rate(), _Rate(), _Rate(), self.base_interval, inherited=spec_wins_above)

    def _measured_choice(self, bucket: _Bucket) -> bool | None:
        spec, plain = bucket.spec.per_second, bucket.plain.per_second
        if spec is None or plain is None or min(bucket.spec.rounds, bucket.plain.rounds) < self.min_rounds:
            return None
        return spec > plain * (1 + self.margin)

    def _prefers_spec(self, bucket: _Bucket) -> bool:
        """The measured choice; until both modes are measured, the inherited one."""
        measured = self._measured_choice(bucket)
        return bucket.inherited if measured is None else measured

    def prefers(self, batch_size: int) -> bool:
        """The current choice at ``batch_size``, without running a round: whether sequences just
        admitted should be sent to the draft now, or with their first speculative round."""
        return self._prefers_spec(self._bucket(batch_size))

    def speculate(self, batch_size: int) -> bool:
        """Whether this round of ``batch_size`` speculating rows should speculate."""
        bucket = self._bucket(batch_size)
        prefers = self._prefers_spec(bucket)
        if bucket.probe_left == 0 and bucket.since_probe >= bucket.interval:
            bucket.since_probe, bucket.probe_left, bucket.burst_rounds = 0, self.burst, 0
            bucket.probe_spec, bucket.choice_before_probe = not prefers, prefers
        bucket.probing = bucket.probe_left > 0
        if bucket.probing:
            bucket.probe_left -= 1
            bucket.burst_rounds += 1
            return bucket.probe_spec
        bucket.since_probe += 1
        return prefers

    def record(self, batch_size: int, speculated: bool, tokens: int, seconds: float) -> None:
        """The round that just ran (as ``speculate`` decided): committed tokens and wall time."""
        bucket = self._bucket(batch_size)
        warm_up = speculated and not self._last_spec
        self._last_spec = speculated
        (bucket.warm if warm_up else bucket.spec if speculated else bucket.plain).add(tokens, seconds)
        if bucket.probing and bucket.probe_left == 0:
            if bucket.burst_rounds < self.max_burst and self._too_close(bucket):
                bucket.probe_left = 1  # one more round of the burst
                return
            bucket.probing = False  # the burst ended: did it confirm the choice?
            confirmed = self._prefers_spec(bucket) == bucket.choice_before_probe
            bucket.interval = self._interval(bucket, bucket.interval * 2 if confirmed else self.base_interval)

    def _too_close(self, bucket: _Bucket) -> bool:
        """Whether the estimates cannot yet tell which mode wins (by ``Z`` standard errors)."""
        spec, plain = bucket.spec, bucket.plain
        if min(spec.rounds, plain.rounds) < self.min_rounds:
            return True
        gap = spec.per_second - plain.per_second * (1 + self.margin)
        return abs(gap) < Z * math.hypot(spec.standard_error(), plain.standard_error() * (1 + self.margin))

    def unanswered(self) -> None:
        """A round meant to speculate ran plainly because the draft did not answer in time (or
        is down): it measures neither mode, and the next speculative round is a warm-up."""
        self._last_spec = False

    def _interval(self, bucket: _Bucket, wanted: int) -> int:
        """``wanted``, raised so that a burst of the losing mode costs at most the probe budget."""
        if self.probe_budget > 0 and self._measured_choice(bucket) is not None:
            wanted = max(wanted, math.ceil(self._burst_cost(bucket) / self.probe_budget))
        return min(max(wanted, self.base_interval), self.max_interval)

    def _burst_cost(self, bucket: _Bucket) -> float:
        """Rounds of the preferred mode's time that a burst of the other mode loses, the switch
        to speculation (its warm-up round) included."""
        warm = bucket.warm if bucket.warm.rounds else bucket.spec
        if self._prefers_spec(bucket):
            rate = bucket.spec.per_second
            return (self.burst * _excess(bucket.plain, rate) + _excess(warm, rate)) / bucket.spec.seconds
        rate = bucket.plain.per_second
        return (_excess(warm, rate) + (self.burst - 1) * _excess(bucket.spec, rate)) / bucket.plain.seconds

    def describe(self) -> dict[int, dict]:
        """Per bucket: measured tokens/s of each mode and the current choice (for logs and tests)."""
        return {k: {"speculative_tps": b.spec.per_second, "plain_tps": b.plain.per_second,
                    "speculates": self._prefers_spec(b), "interval": b.interval}
                for k, b in sorted(self.buckets.items())}
