"""How many tokens a speculative round proposes, per batch size: cost models fed by measurements.

Two arms of the governor speculate, and each has its own best lookahead on the same pair:

* **SD** (a synchronous round on the draft service): the target waits for the transport and k
  draft steps, then verifies. Its rate is

      rate_sd(k) = E(k) / (T_verify(k) + k * T_step + T_transport)

* **SSD**: the draft answers from its cache and then builds the next round's tree while the
  target verifies, so a round costs the longer of the two (docs/speculation.md, "SSD's
  depth"):

      rate_ssd(k) = tokens(k) / (max(T_verify(k) + T_host + T_link, T_build(k)) + k * T_jit)

  On a GPU the build of a K-deep tree hides inside the verify and the deepest k wins. Where a
  draft step costs a large share of a target step (a CPU pair: 1 : 2 instead of 1 : 7.5), a deep
  build outlasts the verify and the target waits for it every round: a shallower tree then
  commits fewer tokens a round but runs more rounds.

Per row, a round with k proposed tokens commits ``E(k) = 1 + sum_{i=1..k} P(n >= i)`` tokens
when its proposal is a real draft (a cache hit, a JIT backup), one when it is a fast backup's
placeholder: ``tokens(k) = E(k) - (1 - h(k)) * fast_share * (E(k) - 1)``. The hit rate depends on
k through the outcome it must cover: ``h(k) = sum_{j<k} P(n = j) * g_j + P(n >= k) * g_all``, with
g_j the measured chance that the cache held the outcome "rejected at position j+1" and g_all the
chance that it held "all accepted" (a bonus token, drawn without exclusion).

Every input is measured: P(n >= i) from every round whose proposal was a real draft (``Acceptance``,
shared by both models); the verify time, the build time (the draft reports its last build with
every reply), the target's own host time per round, the link (the wait for a reply less the
draft's backup and less the time the request waited for a build that outlasted the target's
own work since the previous reply) and the backups per batch-size bucket. Times that grow with k are read off a straight line through the
lookaheads measured (``Line``); with one lookahead measured, a verify is taken as flat and a build
as proportional to its k + 1 device steps (the glue and k tree steps). Estimates decay
exponentially, so they follow drift. Until a bucket has its times, or acceptance was observed
at every position, a model answers K.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from saguaro.speculative.costs import ALPHA, Line, bucket_of, ema

ACCEPTANCE_DECAY = 0.01  # acceptance drifts slowly with the text: a window of about 100 rounds
MIN_ROWS = 30  # rows proposed a position before its acceptance counts as measured
DEPTH_MARGIN = 0.03  # SSD changes its depth only for a modelled gain above this (a change costs a round of misses)


class Acceptance:
    """P(n >= i), the chance that the first i draft tokens are all accepted, for i = 1..K."""

    def __init__(self, k_max: int):
        if k_max < 1:
            raise ValueError(f"k_max must be at least 1, got {k_max}")
        self.k_max = k_max
        # decayed counts of rows that reached position i (accepted its token) and of rows asked
        self._reached = [0.0] * k_max
        self._asked = [0.0] * k_max

    @property
    def reach(self) -> list[float | None]:
        """P(n >= i) for i = 1..K (None: position proposed to fewer than ``MIN_ROWS`` rows; a
        handful of rounds that happened never to accept it would read as P = 0)."""
        return [r / a if a >= MIN_ROWS else None for r, a in zip(self._reached, self._asked)]

    def observe(self, accepted: list[int], k: int) -> None:
        """Rows of a round whose proposals were real drafts of ``k`` tokens: n accepted each.
        Positions beyond ``k`` were not proposed and are not observed. Counts decay by
        ``ACCEPTANCE_DECAY`` a round, so the estimate follows drift."""
        if not accepted:
            return
        keep = 1 - ACCEPTANCE_DECAY
        for i in range(min(k, self.k_max)):
            self._reached[i] = keep * self._reached[i] + sum(n > i for n in accepted)
            self._asked[i] = keep * self._asked[i] + len(accepted)

    def expected_tokens(self, k: int) -> float | None:
        """E(k): tokens a row commits from a real draft of k tokens (None: not yet measured)."""
        reach = self.reach[:k]
        return None if None in reach else 1.0 + sum(reach)

    def outcome(self, j: int, k: int) -> float | None:
        """P(n = j) in a round of ``k`` proposed tokens (n = k: all accepted)."""
        reach = [1.0] + self.reach[:k]
        if None in reach:
            return None
        return reach[j] - (reach[j + 1] if j < k else 0.0)


@dataclass
class _SDTimes:
    verify: Line = field(default_factory=Line)  # verify time of rounds of lookahead k
    step_s: float | None = None  # one draft step of a JIT draft at this batch size
    transport_s: float | None = None  # draft wait not spent drafting or looking up


class LookaheadModel:
    """SD's best lookahead for the governor's synchronous arm. An SSD round costs no draft steps
    on a hit, which is why SSD's K is larger than SD's best k on the same pair: the SD arm of an
    SSD deployment uses this k, not SSD's K."""

    def __init__(self, k_max: int, acceptance: Acceptance | None = None):
        self.acceptance = acceptance or Acceptance(k_max)
        self.k_max = k_max
        self.times: dict[int, _SDTimes] = {}

    @property
    def reach(self) -> list[float | None]:
        return self.acceptance.reach

    def observe_times(self, batch_size: int, verify_s: float, draft_wait_s: float | None = None,
                      lookup_s: float = 0.0, jit_s: float = 0.0, jit_steps: int = 0) -> None:
        """A synchronous round of lookahead ``jit_steps``: its verify time and, from the draft's
        reply (``jit_s`` drafting, ``lookup_s`` looking up), its step time and the transport
        (the wait less lookup and drafting)."""
        times = self.times.setdefault(bucket_of(batch_size), _SDTimes())
        times.verify.observe(jit_steps, verify_s)
        if draft_wait_s is not None and jit_steps > 0:
            times.step_s = ema(times.step_s, jit_s / jit_steps)
            times.transport_s = ema(times.transport_s, max(0.0, draft_wait_s - lookup_s - jit_s))

    def rate(self, batch_size: int, k: int) -> float | None:
        """Modelled tokens per second and row of an SD round with lookahead ``k`` (None: not
        yet measured)."""
        times, tokens = self.times.get(bucket_of(batch_size)), self.acceptance.expected_tokens(k)
        if times is None or None in (times.verify.at(k), times.step_s, times.transport_s, tokens):
            return None
        return tokens / (times.verify.at(k) + k * times.step_s + times.transport_s)

    def best(self, batch_size: int) -> int:
        """The lookahead with the highest modelled rate; K until every k can be modelled."""
        rates = [self.rate(batch_size, k) for k in range(1, self.k_max + 1)]
        if None in rates:
            return self.k_max
        return 1 + max(range(self.k_max), key=rates.__getitem__)


@dataclass
class SSDRound:
    """What one SSD round measured, for ``DepthModel.observe_round``."""

    batch_size: int
    depth: int  # tokens proposed per row
    round_s: float  # the whole round at the target
    verify_s: float
    draft_wait_s: float  # request sent to reply received
    backup_s: float  # the draft's backups (its reply's timings)
    misses: int  # rows whose lookup missed, and of them those given a fast backup's placeholders
    fast: int
    # after an SSD round: the draft's build since (its reply's timings), and the target's time
    # from that round's reply to this request; the build overran the target by their difference
    build_s: float | None = None
    gap_s: float | None = None


@dataclass
class _SSDTimes:
    verify: Line = field(default_factory=Line)
    build: Line = field(default_factory=Line)  # the draft's build after a round of depth k
    host_s: float | None = None  # the target's round outside the verify and the wait for the draft
    link_s: float | None = None  # transport both ways and the lookup
    jit_step_s: float = 0.0  # backup time a round, per proposed token (0 while fast backups serve)
    fast_share: float = 0.0  # of the rows that missed, those given placeholders


class DepthModel:
    """SSD's depth per batch size: how many tokens a round proposes, and so how deep a tree the
    draft builds for the next one (at most the session's K)."""

    def __init__(self, k_max: int, acceptance: Acceptance | None = None):
        self.acceptance = acceptance or Acceptance(k_max)
        self.k_max = k_max
        self.times: dict[int, _SSDTimes] = {}
        self.depths: dict[int, int] = {}  # per bucket: the depth chosen last
        # decayed hits and lookups per previous outcome: index j < K "rejected at j+1", K "all accepted"
        self._hits = [0.0] * (k_max + 1)
        self._lookups = [0.0] * (k_max + 1)

    def observe_round(self, measured: SSDRound) -> None:
        times = self.times.setdefault(bucket_of(measured.batch_size), _SSDTimes())
        times.verify.observe(measured.depth, measured.verify_s)
        times.host_s = ema(times.host_s, max(0.0, measured.round_s - measured.verify_s - measured.draft_wait_s))
        if measured.build_s is not None and measured.gap_s is not None:
            overrun = max(0.0, measured.build_s - measured.gap_s)  # the request waited for the build
            times.link_s = ema(times.link_s, max(0.0, measured.draft_wait_s - measured.backup_s - overrun))
        times.jit_step_s = ema(times.jit_step_s, measured.backup_s / measured.depth)
        if measured.misses:
            times.fast_share = ema(times.fast_share, measured.fast / measured.misses)

    def observe_build(self, batch_size: int, depth: int, build_s: float) -> None:
        """The draft's build that followed a round of ``depth`` at ``batch_size`` rows."""
        self.times.setdefault(bucket_of(batch_size), _SSDTimes()).build.observe(depth, build_s)

    def observe_lookup(self, previous: int, previous_depth: int, hit: bool) -> None:
        """A row's lookup, keyed on its previous round's outcome: ``previous`` of
        ``previous_depth`` tokens accepted."""
        j = self.k_max if previous >= previous_depth else previous
        self._hits[j] = (1 - ALPHA) * self._hits[j] + hit
        self._lookups[j] = (1 - ALPHA) * self._lookups[j] + 1

    def hit_rate(self, k: int) -> float | None:
        """h(k): the chance that a round of depth ``k`` finds the next outcome in the cache.
        An outcome never looked up takes the pooled rate of all lookups (None: none yet)."""
        lookups = sum(self._lookups)
        pooled = sum(self._hits) / lookups if lookups else None
        rates = [h / n if n else pooled for h, n in zip(self._hits, self._lookups)]
        total = 0.0
        for j in range(k + 1):
            p, g = self.acceptance.outcome(j, k), rates[self.k_max if j == k else j]
            if p is None or g is None:
                return None
            total += p * g
        return total

    def build_budget(self, batch_size: int, k: int) -> float | None:
        """The target's time from a reply to its next request in rounds of depth ``k``: its
        verify, its own work and the link. The draft's build hides behind the verify while it
        fits in this time (None: not yet measured)."""
        times = self.times.get(bucket_of(batch_size))
        if times is None or times.host_s is None:
            return None
        verify = times.verify.at(k)
        return None if verify is None else verify + times.host_s + (times.link_s or 0.0)

    def rate(self, batch_size: int, k: int) -> float | None:
        """Modelled tokens per second and row of SSD rounds of depth ``k`` (None: not yet
        measured)."""
        times = self.times.get(bucket_of(batch_size))
        expected, hit = self.acceptance.expected_tokens(k), self.hit_rate(k)
        if times is None or None in (expected, hit, times.host_s):
            return None
        target, build = self.build_budget(batch_size, k), times.build.at(k, per_unit_offset=1)
        if target is None or build is None:
            return None
        tokens = expected - (1 - hit) * times.fast_share * (expected - 1)
        seconds = max(target, build) + k * times.jit_step_s
        return tokens / seconds

    def best(self, batch_size: int) -> int:
        """The depth with the highest modelled rate, kept until another beats it by
        ``DEPTH_MARGIN``; K until every depth can be modelled."""
        key = bucket_of(batch_size)
        current = self.depths.get(key, self.k_max)
        rates = {k: self.rate(batch_size, k) for k in range(1, self.k_max + 1)}
        if None in rates.values():
            return current
        best = max(rates, key=rates.__getitem__)
        if rates[best] > rates[current] * (1 + DEPTH_MARGIN):
            self.depths[key] = current = best
        return current
