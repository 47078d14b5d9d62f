"""What one speculation round decided and produced, for the observers that run after it.

The engine's round (services/target/engine.py) only proposes, verifies and commits. Everything
that learns from a round — each request's ``SpecStats``, the round telemetry
(services/target/round_telemetry.py), the lookahead models (services/target/round_sizing.py)
and the speculation governor — reads one ``RoundResult`` once the round is over, so no
bookkeeping sits inside the round and each counter is counted in one place
(docs/speculation.md, "One round").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property

from saguaro.sequence import Sequence
from saguaro.services.target.proposer import Proposal
from saguaro.speculative.stats import CacheLookups
from saguaro.v1 import speculation_pb2 as pb


@dataclass(frozen=True)
class RoundPlan:
    """How a round runs, decided before the draft is asked."""

    arm: str  # ar, sd or ssd: the governor's choice, else the deployment's mode
    speculating: list[Sequence]  # the rows that ask the draft (none when held)
    governed: int  # speculating rows the governor chose the arm for (0: no governor, or none speculate)
    held: bool  # the governor keeps this round plain: speculation does not pay at this batch size
    synchronous: bool  # an SSD deployment's round run as SD: no cache lookup, no build
    lookahead: int  # tokens each row proposes (0: K)
    build_budget_s: float | None  # how long the draft's next build may take (None: no estimate)


@dataclass(frozen=True)
class RoundRow:
    """One sequence's part of the round."""

    seq: Sequence
    speculates: bool  # the request speculates (not an AR request, the deployment has a draft)
    proposal: Proposal | None  # None: the row decoded one plain token
    accepted: int  # proposed tokens the target accepted (0 without a proposal)
    committed: int  # tokens the round added to the output (a stop may cut the verified ones short)


@dataclass(frozen=True)
class RoundResult:
    """A finished round: its plan, every row's outcome and the times it took."""

    plan: RoundPlan
    rows: list[RoundRow]
    k: int  # the deployment's K (accepted counts per position are kept up to it)
    depth: int  # tokens per proposal this round verified (K, or fewer chosen by a lookahead model)
    transport: str  # how the target reaches the draft
    started: float  # perf_counter when the round began
    draft_time_s: float  # waiting for the draft's reply (critical path)
    verify_time_s: float  # forward, sampling, verification and commit
    since_reply_s: float  # from the previous round's reply to this round's request
    timings: pb.DraftTimings | None  # the draft's timings with this round's reply (None: no proposals)

    @cached_property
    def proposed(self) -> list[RoundRow]:
        """The rows that were verified against a proposal."""
        return [r for r in self.rows if r.proposal is not None]

    @cached_property
    def lookups(self) -> CacheLookups:
        """The round's cache hits, misses and backups, over every proposal."""
        return CacheLookups.of(r.proposal for r in self.proposed)

    @property
    def build_time_s(self) -> float:
        """The draft's build it reported with this round's reply (0 without one)."""
        return self.timings.prev_build_us / 1e6 if self.timings is not None else 0.0

    @property
    def committed(self) -> int:
        return sum(r.committed for r in self.rows)

    def elapsed_s(self) -> float:
        """The round's time so far: its observers run inside it, as the governor measures it."""
        return time.perf_counter() - self.started


def record_stats(result: RoundResult) -> None:
    """Add the round to each request's ``SpecStats``."""
    plan = result.plan
    for row in result.rows:
        stats, proposal = row.seq.stats, row.proposal
        if row.speculates:
            stats.transport = result.transport
        if proposal is None:
            if row.speculates and plan.held:
                stats.policy_rounds += 1
            elif row.speculates:
                stats.record_fallback()
        else:
            stats.in_fallback = False
            stats.draft_time_s += result.draft_time_s
            stats.draft_build_time_s += result.build_time_s
            if plan.synchronous:
                stats.sync_rounds += 1  # the draft drafted the row just in time: no lookup to count
            else:
                stats.record_lookups(CacheLookups.of([proposal]))
        stats.record_round(None if proposal is None else row.accepted, row.committed, result.k)
        stats.verify_time_s += result.verify_time_s
