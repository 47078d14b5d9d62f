"""Never slower than plain decoding: speculate only at batch sizes where it pays.

Speculation pays when a round's tokens per second beat plain (AR) decoding's. That depends on
the batch size (the target's verify cost grows with B·(K+1) tokens, the draft's with B·M
branches), the acceptance rate and the hardware, so the governor measures instead of
modelling: per batch-size bucket it keeps the recent throughput of speculative rounds and of
plain rounds, and runs the better mode. The draft's own adaptations (fan-out from acceptance,
JIT vs fast backup from round economics; ``services/draft/policy.py``) act first; this is the
last resort, when even the best speculation loses.

Estimates go stale (acceptance drifts with the text, load changes), so the losing mode is
re-measured in a short burst every ``interval`` rounds. A burst of the loser costs time in
proportion to how much it loses, so the interval is at least what keeps that cost under
``probe_budget`` (0.5 %) of the rounds' time — a mode 3× slower is probed every few hundred
rounds, a near-tie every few dozen; it also doubles each time a burst confirms the choice and
falls back when the choice flips (the first decision, from few rounds, is re-checked after
``base_interval`` rounds whatever the cost). The first speculative round after plain rounds is a
guaranteed cache miss (the draft was idle and must catch up), so it is not counted: the
estimate is of steady state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EMA = 0.2  # weight of the newest round in the throughput estimates


def bucket_of(batch_size: int) -> int:
    """Batch sizes 1, 2, 3-4, 5-8, 9-16, ... share a bucket (the upper bound)."""
    return 1 << max(batch_size - 1, 0).bit_length()


@dataclass
class _Rate:
    """Exponentially weighted tokens and seconds (their ratio is the throughput)."""

    tokens: float = 0.0
    seconds: float = 0.0
    rounds: int = 0

    def add(self, tokens: int, seconds: float) -> None:
        w = 1.0 if self.rounds == 0 else EMA
        self.tokens += w * (tokens - self.tokens)
        self.seconds += w * (seconds - self.seconds)
        self.rounds += 1

    @property
    def per_second(self) -> float | None:
        return self.tokens / self.seconds if self.rounds and self.seconds > 0 else None


@dataclass
class _Bucket:
    spec: _Rate
    plain: _Rate
    interval: int
    since_probe: int = 0  # rounds in the preferred mode since the last burst of the other
    probe_left: int = 0  # rounds left in the current burst of the other mode
    probe_spec: bool = False  # the burst's mode
    probing: bool = False  # the round being run belongs to a burst
    choice_before_probe: bool = True
    decided: bool = False  # both modes measured once, or a choice inherited from another bucket
    inherited: bool | None = None  # the choice taken over while a mode is unmeasured here


class SpeculationGovernor:
    def __init__(self, base_interval: int = 16, max_interval: int = 4096, burst: int = 4, min_rounds: int = 3,
                 probe_budget: float = 0.005):
        """``burst`` rounds re-measure the losing mode every ``interval`` rounds (from
        ``base_interval`` up to ``max_interval``, and long enough that probing costs at most
        ``probe_budget`` of the time; 0 disables that bound); each mode needs ``min_rounds``
        measured rounds before it can win."""
        if not 1 <= base_interval <= max_interval or burst < 2 or min_rounds < 1 or not 0 <= probe_budget < 1:
            raise ValueError("need 1 <= base_interval <= max_interval, burst >= 2, min_rounds >= 1, "
                             "0 <= probe_budget < 1")
        self.base_interval, self.max_interval = base_interval, max_interval
        self.burst, self.min_rounds, self.probe_budget = burst, min_rounds, probe_budget
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
        """A cold bucket takes over a neighbour's choice where the usual shape of the economics
        makes it safe — speculation that loses at a smaller batch loses at a larger one, and
        speculation that wins at a larger batch wins at a smaller one — and then only probes the
        other mode, instead of paying to measure both (batch sizes wander as requests come and go)."""
        bucket = _Bucket(_Rate(), _Rate(), self.base_interval)
        for other_key, other in self.buckets.items():
            prefers = self._measured_choice(other)
            if prefers is not None and ((other_key < key and not prefers) or (other_key > key and prefers)):
                bucket.inherited, bucket.decided = prefers, True  # probed after base_interval rounds
                break
        return bucket

    def _measured_choice(self, bucket: _Bucket) -> bool | None:
        spec, plain = bucket.spec.per_second, bucket.plain.per_second
        if spec is None or plain is None or min(bucket.spec.rounds, bucket.plain.rounds) < self.min_rounds:
            return None
        return spec >= plain

    def _prefers_spec(self, bucket: _Bucket) -> bool | None:
        """The measured choice; until both modes are measured, the inherited one (or None)."""
        measured = self._measured_choice(bucket)
        return bucket.inherited if measured is None else measured

    def speculate(self, batch_size: int) -> bool:
        """Whether this round of ``batch_size`` speculating rows should speculate."""
        bucket = self._bucket(batch_size)
        prefers = self._prefers_spec(bucket)
        if prefers is None:  # measure speculation first, then plain rounds
            bucket.probing = False
            return bucket.spec.rounds < self.min_rounds or bucket.plain.rounds >= self.min_rounds
        if bucket.probe_left == 0 and bucket.since_probe >= bucket.interval:
            bucket.since_probe, bucket.probe_left = 0, self.burst
            bucket.probe_spec, bucket.choice_before_probe = not prefers, prefers
        bucket.probing = bucket.probe_left > 0
        if bucket.probing:
            bucket.probe_left -= 1
            return bucket.probe_spec
        bucket.since_probe += 1
        return prefers

    def record(self, batch_size: int, speculated: bool, tokens: int, seconds: float) -> None:
        """The round that just ran (as ``speculate`` decided): committed tokens and wall time."""
        bucket = self._bucket(batch_size)
        warm_up = speculated and not self._last_spec
        self._last_spec = speculated
        if not warm_up:
            (bucket.spec if speculated else bucket.plain).add(tokens, seconds)
        if not bucket.decided and self._prefers_spec(bucket) is not None:
            bucket.decided = True  # first look: probe again soon, before the cost bound applies
            bucket.interval = self.base_interval
        elif bucket.probing and bucket.probe_left == 0:  # a burst ended: did it confirm the choice?
            bucket.probing = False
            confirmed = self._prefers_spec(bucket) == bucket.choice_before_probe
            bucket.interval = self._interval(bucket, bucket.interval * 2 if confirmed else self.base_interval)

    def unanswered(self) -> None:
        """A round meant to speculate ran plainly because the draft did not answer in time (or
        is down): it measures neither mode, and the next speculative round is a warm-up."""
        self._last_spec = False

    def _interval(self, bucket: _Bucket, wanted: int) -> int:
        """``wanted``, raised so that a burst of the losing mode costs at most the probe budget."""
        if self.probe_budget > 0 and self._measured_choice(bucket) is not None:
            rates = sorted((bucket.spec.per_second, bucket.plain.per_second))
            lost = self.burst * (rates[1] / rates[0] - 1)  # rounds' worth of time a burst of the loser costs
            wanted = max(wanted, math.ceil(lost / self.probe_budget))
        return min(max(wanted, self.base_interval), self.max_interval)

    def describe(self) -> dict[int, dict]:
        """Per bucket: measured tokens/s of each mode and the current choice (for logs and tests)."""
        return {k: {"speculative_tps": b.spec.per_second, "plain_tps": b.plain.per_second,
                    "speculates": self._prefers_spec(b), "interval": b.interval}
                for k, b in sorted(self.buckets.items())}
