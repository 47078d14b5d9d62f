"""How many tokens a governed SSD deployment's rounds propose: the lookahead models' bookkeeping.

Under the governor, an SSD deployment sizes its rounds from measurements (docs/speculation.md,
"Never slower than AR or SD" and "SSD's depth"; the models are in services/target/lookahead.py): a round of
the SD arm drafts SD's best lookahead, a round of the SSD arm proposes (and has the draft
build) SSD's best depth. ``RoundSizer`` answers those two questions before a round and learns
from each ``RoundResult`` after it.
"""

from __future__ import annotations

from saguaro.services.target.governor import SpeculationGovernor
from saguaro.services.target.lookahead import Acceptance, DepthModel, LookaheadModel, SSDRound
from saguaro.services.target.round import RoundResult
from saguaro.speculative.backup import Backup
from saguaro.speculative.costs import bucket_of


class RoundSizer:
    """The SD arm's lookahead and the SSD arm's depth per batch size, from one acceptance estimate."""

    def __init__(self, k: int, governor: SpeculationGovernor | None):
        self.k = k
        self.governor = governor  # re-measures the SSD arm at a batch size whose depth changed (None: none to tell)
        self.acceptance = Acceptance(k)  # one estimate, read by both models
        self.sd_lookahead, self.ssd_depth = LookaheadModel(k, self.acceptance), DepthModel(k, self.acceptance)
        self._ssd_outcomes: dict[int, tuple[int, int]] = {}  # per row of the last SSD round: (n, depth)
        self._last_ssd_round: tuple[int, int] | None = None  # (rows, depth) of the last round, if SSD

    def lookahead(self, arm: str, rows: int, synchronous: bool) -> int:
        """Tokens each row proposes this round (0: K): SD's best lookahead for a synchronous
        round, SSD's depth for an SSD round. A new depth makes the governor re-measure the SSD
        arm at this batch size."""
        if synchronous:
            return self.sd_lookahead.best(rows)
        if arm != "ssd" or not rows:
            return 0
        before = self.ssd_depth.depths.get(bucket_of(rows), self.k)
        depth = self.ssd_depth.best(rows)
        if depth != before and self.governor is not None:
            self.governor.forget(rows, "ssd")
        return depth

    def build_budget(self, arm: str, rows: int, lookahead: int) -> float | None:
        """The time the draft's next build may take without delaying the target (None: no
        estimate; the draft builds its full fan-out)."""
        if arm != "ssd" or not rows:
            return None
        return self.ssd_depth.build_budget(rows, lookahead or self.k)

    def observe(self, result: RoundResult) -> None:
        """Feed the models: acceptance from real drafts (not fast backups' placeholders); the SD
        arm's step and transport times from synchronous rounds (every row drafted); the SSD
        arm's verify, host, link and backup times, the draft's build after each SSD round, and
        hits keyed on the previous SSD round's outcome."""
        last_round, self._last_ssd_round = self._last_ssd_round, None
        previous, self._ssd_outcomes = self._ssd_outcomes, {}
        proposed, timings = result.proposed, result.timings
        if not proposed:
            return
        k, batch_size = result.depth, result.plan.governed
        self.acceptance.observe([r.accepted for r in proposed if r.proposal.backup != Backup.FAST], k)
        if timings is None:
            return
        lookup_s, backup_s = timings.lookup_us / 1e6, timings.backup_us / 1e6
        verify_s, draft_s = result.verify_time_s, result.draft_time_s
        if result.plan.synchronous:
            self.sd_lookahead.observe_times(batch_size, verify_s, draft_s, lookup_s, backup_s, k)
            return
        build_s = None
        if last_round is not None:  # the build this reply reports followed that round
            build_s = timings.prev_build_us / 1e6
            self.ssd_depth.observe_build(*last_round, build_s)
        for row in proposed:
            if row.seq.seq_id in previous:
                self.ssd_depth.observe_lookup(*previous[row.seq.seq_id], row.proposal.hit)
        lookups = result.lookups
        self.ssd_depth.observe_round(SSDRound(batch_size, k, result.elapsed_s(), verify_s, draft_s, backup_s,
                                              lookups.misses, lookups.fast, build_s, result.since_reply_s))
        self._ssd_outcomes = {row.seq.seq_id: (row.accepted, k) for row in proposed}
        self._last_ssd_round = (batch_size, k)
