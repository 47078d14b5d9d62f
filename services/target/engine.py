"""The target's engine: continuous batching where each decode step is a speculation round.

Modes (per deployment): ``ar`` (plain decoding), ``sd`` (synchronous speculative decoding with
the draft in this process), ``ssd`` (speculative speculative decoding with a draft service that
builds its speculation cache while the target verifies). A request may opt out to ``ar``.
Rows without a proposal — AR requests, draft down, a row the draft could not serve — ride in
the same verify forward as one-token chunks, so a batch never waits for them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from saguaro.config import EngineConfig
from saguaro.engine import LLMEngine
from saguaro.errors import ConfigError, InvalidRequestError
from saguaro.model_runner import CausalChunk
from saguaro.sampling import sample
from saguaro.sequence import Sequence
from saguaro.services.draft.handshake import handshake_request
from saguaro.services.draft.settings import DraftSettings
from saguaro.services.target.channels import DraftChannel
from saguaro.services.target.governor import SpeculationGovernor
from saguaro.speculative.costs import bucket_of
from saguaro.services.target.lookahead import Acceptance, DepthModel, LookaheadModel, SSDRound
from saguaro.services.target.proposer import DraftProposer, Proposal
from saguaro.services.target.verifier import verify_rows
from saguaro.speculative.backup import Backup
from saguaro.speculative.stats import SpecStats

MODES = ("ar", "sd", "ssd")

log = logging.getLogger(__name__)


class SpeculativeEngine(LLMEngine):
    def __init__(
        self,
        config: EngineConfig,
        mode: str = "ar",
        settings: DraftSettings | None = None,
        connect: Callable[[], DraftChannel] | None = None,
        draft_timeout_s: float = 5.0,
        retry_interval_s: float = 1.0,
        governor: SpeculationGovernor | None = None,
        draft_soft_deadline: bool = True,
    ):
        """``connect`` opens a channel to the draft (called again to reconnect after a failure).
        ``governor``: speculate only at batch sizes where it beats plain decoding (None: always).
        ``draft_soft_deadline``: let a round go ahead without a reply that is late by the draft's
        recent standards (False: wait up to ``draft_timeout_s``; see ``DraftProposer``).

        An incompatible draft is refused here with ``IncompatibleDraft``; an unreachable one
        only delays speculation: the engine decodes plainly and keeps retrying.
        """
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if mode != "ar" and connect is None:
            raise ConfigError(f"mode {mode!r} needs a draft")
        self.mode = mode
        self.k = settings.k if mode != "ar" else 0
        super().__init__(config, lookahead=self.k)
        self.proposer: DraftProposer | None = None
        self.governor = governor if mode != "ar" else None
        if self.governor is not None:
            self.governor.bind(mode)
        # under the governor, an SSD deployment sizes its rounds from measurements: the SD arm
        # drafts SD's best lookahead, the SSD arm proposes (and builds) its best depth
        self.acceptance = self.sd_lookahead = self.ssd_depth = None
        if self.governor is not None and mode == "ssd":
            self.acceptance = Acceptance(self.k)  # one estimate, read by both models
            self.sd_lookahead, self.ssd_depth = LookaheadModel(self.k, self.acceptance), DepthModel(self.k, self.acceptance)
        self._ssd_outcomes: dict[int, tuple[int, int]] = {}  # per row of the last SSD round: (n, depth)
        self._last_ssd_round: tuple[int, int] | None = None  # (rows, depth) of the last round, if SSD
        self._last_reply_at = 0.0  # when the last round's draft reply came
        # Per-round metrics and spans (services/target/round_telemetry.py), set by the
        # service; None costs a round nothing.
        self.telemetry = None
        if mode != "ar":
            request = handshake_request(self.runner, settings, config.max_num_seqs)
            self.proposer = DraftProposer(connect, request, settings, self.runner.vocab_size, draft_timeout_s, retry_interval_s,
                                          draft_soft_deadline)
            try:
                self.proposer.connect()
            except ConnectionError as exc:
                log.warning("starting without a draft (will retry): %s", exc)
                self.proposer.available()  # records the failure time for the retry schedule

    def add_request(self, prompt_token_ids, params, output_token_ids=()) -> Sequence:
        if params.mode not in (None, "ar", self.mode):
            raise InvalidRequestError(
                f"this deployment decodes with mode {self.mode!r}; a request may only opt out to 'ar' (got {params.mode!r})"
            )
        seq = super().add_request(prompt_token_ids, params, output_token_ids)
        seq.stats = SpecStats(mode="ar" if params.mode == "ar" else self.mode)
        return seq

    def request_stats(self, seq: Sequence) -> dict:
        return seq.stats.to_json()

    def _speculates(self, seq: Sequence) -> bool:
        return self.proposer is not None and seq.params.mode != "ar"

    def _prefill(self, seqs: list[Sequence]) -> None:
        spec = [s for s in seqs if self._speculates(s)]
        if spec and self.governor is not None:
            rows = sum(1 for s in self.scheduler.running if self._speculates(s))
            if self.governor.prefers(rows) == "ar":  # decoding plainly for now: no draft prefill to wait for;
                spec = []  # the draft gets these prompts with their first speculative round
        pending = self.proposer.start_prefill(spec) if spec else None
        super()._prefill(seqs)
        if pending is not None:
            self.proposer.finish_prefill(pending)
        self._release_finished(seqs)

    def step(self) -> list[Sequence]:
        try:
            return super().step()
        except BaseException as exc:
            if self.telemetry is not None:
                self.telemetry.fail_round(exc)  # a round that raised still ends its span (status ERROR)
            raise

    def _decode(self, seqs: list[Sequence]) -> None:
        round_started = time.perf_counter()
        spec = [s for s in seqs if self._speculates(s)]
        governed = len(spec) if spec and self.governor is not None else 0
        # how this round runs: the governor's arm; else the deployment's mode, or plain without speculating rows
        arm = self.governor.choose(governed) if governed else self.mode if spec else "ar"
        held = bool(governed) and arm == "ar"
        synchronous = arm == "sd" and self.mode == "ssd"  # SD beats SSD at this batch size right now
        lookahead = self._lookahead(arm, len(spec), synchronous)
        if held:  # plain decoding beats speculation at this batch size right now
            self.proposer.skip(spec)
            for s in spec:
                s.stats.policy_rounds += 1
            spec = []
        before = sum(s.num_output_tokens for s in seqs) if governed else 0
        telemetry = self.telemetry
        trace = telemetry.start_round(seqs) if telemetry is not None else None
        started = time.perf_counter()
        carrier = trace.carrier if trace is not None else None
        build_budget = self._build_budget(arm, len(spec), lookahead) if not synchronous else None
        proposals = self.proposer.propose(spec, carrier, synchronous, lookahead, build_budget) if spec else {}
        since_reply, self._last_reply_at = started - self._last_reply_at, time.perf_counter()
        draft_time = self._last_reply_at - started
        chunks = [
            CausalChunk(s.table.blocks, s.num_tokens - 1,
                        s.token_ids[-1:] + (proposals[s.seq_id].tokens if s.seq_id in proposals else []))
            for s in seqs
        ]
        started = time.perf_counter()
        unproposed = [i for i, s in enumerate(seqs) if s.seq_id not in proposals]
        plain = [seqs[i] for i in unproposed]
        verified = [i for i, s in enumerate(seqs) if s.seq_id in proposals]
        picked = [seqs[i] for i in verified]
        props = [proposals[s.seq_id] for s in picked]
        with self.runner.device_step():  # forward, sampling and verification: one launch on a GPU
            logits = self.runner.run_causal(chunks, all_logits=True)
            ends = torch.cumsum(torch.tensor([len(c.token_ids) for c in chunks]), 0)
            if plain:
                rows = logits[ends[unproposed] - 1]
                plain_tokens = sample(rows, [s.params for s in plain], [s.generator for s in plain]).tolist()
            if verified:
                k = len(props[0].tokens)  # K, or a synchronous round's lookahead
                block = logits[(ends[verified, None] - (k + 1) + torch.arange(k + 1)[None, :]).reshape(-1)]
                accepted, next_tokens = verify_rows(
                    block.view(len(picked), k + 1, -1), props, [s.params for s in picked], [s.generator for s in picked]
                )
        if plain:
            for seq, token in zip(plain, plain_tokens):
                self._commit_round(seq, 0, [token], None, draft_time, held)
        if verified:
            for seq, prop, n, r in zip(picked, props, accepted, next_tokens):
                self._commit_round(seq, n, prop.tokens[:n] + [r], prop, draft_time, synchronous=synchronous)
            if telemetry is not None:
                outcome = {s.seq_id: n for s, n in zip(picked, accepted)}
        verify_time = time.perf_counter() - started
        build_time = self.proposer.last_build_s if proposals else 0.0
        for seq in seqs:
            seq.stats.verify_time_s += verify_time
            if seq.seq_id in proposals:
                seq.stats.draft_build_time_s += build_time
        if telemetry is not None:
            telemetry.end_round(trace, self, seqs, spec, proposals, outcome if verified else {}, draft_time, verify_time,
                                arm)
        if self.sd_lookahead is not None:
            self._observe_costs(governed, picked, props, accepted if verified else [], synchronous, verify_time,
                                draft_time, since_reply, time.perf_counter() - round_started)
        if governed:
            committed = sum(s.num_output_tokens for s in seqs) - before
            if held or proposals:
                self.governor.record(governed, arm, committed, time.perf_counter() - round_started)
            else:  # meant to speculate, but the draft gave nothing (late, down): measures neither mode
                self.governor.unanswered()
        self._release_finished(seqs)

    def _lookahead(self, arm: str, rows: int, synchronous: bool) -> int:
        """Tokens each row proposes this round (0: K): SD's best lookahead for a synchronous
        round, SSD's depth for an SSD round (services/target/lookahead.py). A new depth makes
        the governor re-measure the SSD arm at this batch size."""
        if synchronous:
            return self.sd_lookahead.best(rows)
        if arm != "ssd" or self.ssd_depth is None or not rows:
            return 0
        before = self.ssd_depth.depths.get(bucket_of(rows), self.k)
        depth = self.ssd_depth.best(rows)
        if depth != before and self.governor is not None:
            self.governor.forget(rows, "ssd")
        return depth

    def _build_budget(self, arm: str, rows: int, lookahead: int) -> float | None:
        """The time the draft's next build may take without delaying the target (None: no
        estimate; the draft builds its full fan-out)."""
        if arm != "ssd" or self.ssd_depth is None or not rows:
            return None
        return self.ssd_depth.build_budget(rows, lookahead or self.k)

    def _observe_costs(self, batch_size: int, seqs: list[Sequence], props: list[Proposal], accepted: list[int],
                       synchronous: bool, verify_time: float, draft_time: float, since_reply: float,
                       round_time: float) -> None:
        """Feed the lookahead models (services/target/lookahead.py): acceptance from real drafts
        (not fast backups' placeholders); the SD arm's step and transport times from synchronous
        rounds (every row drafted); the SSD arm's verify, host, link and backup times, the
        draft's build after each SSD round, and hits keyed on the previous SSD round's outcome."""
        last_round, self._last_ssd_round = self._last_ssd_round, None
        previous, self._ssd_outcomes = self._ssd_outcomes, {}
        if not props:
            return
        k = len(props[0].tokens)
        self.acceptance.observe([n for p, n in zip(props, accepted) if p.backup != Backup.FAST], k)
        timings = self.proposer.last_timings
        if timings is None:
            return
        lookup_s, backup_s = timings.lookup_us / 1e6, timings.backup_us / 1e6
        if synchronous:
            self.sd_lookahead.observe_times(batch_size, verify_time, draft_time, lookup_s, backup_s, k)
            return
        build_s = None
        if last_round is not None:  # the build this reply reports followed that round
            build_s = timings.prev_build_us / 1e6
            self.ssd_depth.observe_build(*last_round, build_s)
        for seq, prop in zip(seqs, props):
            if seq.seq_id in previous:
                self.ssd_depth.observe_lookup(*previous[seq.seq_id], prop.hit)
        misses = sum(not p.hit for p in props)
        self.ssd_depth.observe_round(SSDRound(batch_size, k, round_time, verify_time, draft_time, backup_s, misses,
                                              sum(p.backup == Backup.FAST for p in props), build_s, since_reply))
        self._ssd_outcomes = {seq.seq_id: (n, k) for seq, n in zip(seqs, accepted)}
        self._last_ssd_round = (batch_size, k)

    def _commit_round(self, seq: Sequence, accepted: int, new_tokens: list[int], proposal: Proposal | None,
                      draft_time: float, held: bool = False, synchronous: bool = False) -> None:
        """``held``: the governor kept this round plain (not a draft failure); ``synchronous``:
        the governor ran it as SD on the SSD draft (no cache lookup to count)."""
        stats = seq.stats
        speculates = self._speculates(seq)
        if speculates:
            stats.transport = self.proposer.transport
        if proposal is None:
            if speculates and not held:
                stats.fallbacks += not stats.in_fallback
                stats.in_fallback = True
                stats.fallback_rounds += 1
        else:
            stats.in_fallback = False
            stats.draft_time_s += draft_time
            if synchronous:
                stats.sync_rounds += 1
            else:
                stats.cache_hits += proposal.hit
                stats.cache_misses += not proposal.hit
                stats.backups_jit += proposal.backup == Backup.JIT
                stats.backups_fast += proposal.backup == Backup.FAST
            self.proposer.observe(seq, accepted)
        before = seq.num_output_tokens
        self.commit(seq, seq.num_tokens + accepted, new_tokens)
        stats.record_round(None if proposal is None else accepted, seq.num_output_tokens - before, self.k)
        if not seq.finished:
            self.runner.blocks.truncate(seq.table, seq.num_tokens + self.k)

    def _release_finished(self, seqs: list[Sequence]) -> None:
        if self.telemetry is not None:
            self.telemetry.release(seqs)
        if self.proposer is not None:
            done = [s.seq_id for s in seqs if s.finished and self._speculates(s)]
            if done:
                self.proposer.release(done)

    def abort(self, seq: Sequence) -> None:
        super().abort(seq)
        self._release_finished([seq])
