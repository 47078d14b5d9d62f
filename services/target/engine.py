"""The target's engine: continuous batching where each decode step is a speculation round.

Modes (per deployment): ``ar`` (plain decoding), ``sd`` (synchronous speculative decoding with
the draft in this process), ``ssd`` (speculative speculative decoding with a draft service that
builds its speculation cache while the target verifies). A request may opt out to ``ar``.
Rows without a proposal — AR requests, draft down, a row the draft could not serve — ride in
the same verify forward as one-token chunks, so a batch never waits for them.

A round only proposes, verifies and commits; what learns from it (requests' stats, telemetry,
the lookahead models, the governor) reads its ``RoundResult`` afterwards (services/target/round.py;
docs/speculation.md, "One round").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from saguaro.config import EngineConfig
from saguaro.engine import LLMEngine, scored
from saguaro.logprobs import TokenLogprob
from saguaro.errors import ConfigError, InvalidRequestError
from saguaro.model_runner import CausalChunk
from saguaro.sampling import sample
from saguaro.scheduler import ScheduledBatch
from saguaro.sequence import Sequence
from saguaro.services.target.channels import DraftChannel
from saguaro.services.target.governor import SpeculationGovernor
from saguaro.services.target.proposer import DraftProposer, Proposal
from saguaro.services.target.round import RoundPlan, RoundResult, RoundRow, record_stats
from saguaro.services.target.round_sizing import RoundSizer
from saguaro.services.target.verifier import verify_rows
from saguaro.speculative.handshake import handshake_request
from saguaro.speculative.settings import DraftSettings
from saguaro.speculative.stats import SpecStats
from saguaro.wire import MODES

if TYPE_CHECKING:
    from saguaro.services.target.round_telemetry import RoundTelemetry, RoundTrace

log = logging.getLogger(__name__)

# A row's round: accepted draft tokens, the committed tokens, their log probabilities (None: not asked)
Outcome = tuple[int, list[int], list[TokenLogprob] | None]


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
        # under the governor, an SSD deployment sizes its rounds from measurements
        self.sizing = RoundSizer(self.k, self.governor) if self.governor is not None and mode == "ssd" else None
        self._last_reply_at = 0.0  # when the last round's draft reply came
        # Per-round metrics and spans (services/target/round_telemetry.py), set by the
        # service; None costs a round nothing.
        self.telemetry: RoundTelemetry | None = None
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

    def step(self) -> ScheduledBatch | None:
        try:
            return super().step()
        except BaseException as exc:
            if self.telemetry is not None:
                self.telemetry.fail_round(exc)  # a round that raised still ends its span (status ERROR)
            raise

    def _decode(self, seqs: list[Sequence]) -> None:
        """One round: propose, forward and verify, commit; then the observers learn from it."""
        started = time.perf_counter()
        plan = self._plan(seqs)
        trace = self.telemetry.start_round(seqs) if self.telemetry is not None else None
        proposals, draft_time, since_reply = self._propose(plan, trace)
        verify_started = time.perf_counter()
        outcomes = self._forward(seqs, proposals)
        rows = self._commit_rows(seqs, proposals, outcomes)
        verify_time = time.perf_counter() - verify_started
        result = RoundResult(
            plan, rows, self.k,
            depth=len(next(iter(proposals.values())).tokens) if proposals else self.k,
            transport=self.proposer.transport if self.proposer is not None else "none",
            started=started, draft_time_s=draft_time, verify_time_s=verify_time, since_reply_s=since_reply,
            timings=self.proposer.last_timings if proposals else None,
        )
        self._observe(result, trace)
        self._release_finished(seqs)

    def _plan(self, seqs: list[Sequence]) -> RoundPlan:
        """How this round runs: the governor's arm; else the deployment's mode, or plain when no
        row speculates. A held round tells the draft its speculating rows skip a round."""
        spec = [s for s in seqs if self._speculates(s)]
        governed = len(spec) if spec and self.governor is not None else 0
        arm = self.governor.choose(governed) if governed else self.mode if spec else "ar"
        held = bool(governed) and arm == "ar"  # plain decoding beats speculation at this batch size right now
        synchronous = arm == "sd" and self.mode == "ssd"  # SD beats SSD at this batch size right now
        sizing = self.sizing
        lookahead = sizing.lookahead(arm, len(spec), synchronous) if sizing is not None else 0
        if held:
            self.proposer.skip(spec)
            spec = []
        budget = sizing.build_budget(arm, len(spec), lookahead) if sizing is not None and not synchronous else None
        return RoundPlan(arm, spec, governed, held, synchronous, lookahead, budget)

    def _propose(self, plan: RoundPlan, trace: RoundTrace | None) -> tuple[dict[int, Proposal], float, float]:
        """The speculating rows' proposals by seq_id ({}: none asked, or the draft gave none), the
        wait for the draft's reply, and the time since the previous round's reply."""
        asked = time.perf_counter()
        carrier = trace.carrier if trace is not None else None
        proposals = self.proposer.propose(plan.speculating, carrier, plan.synchronous, plan.lookahead,
                                          plan.build_budget_s) if plan.speculating else {}
        since_reply, self._last_reply_at = asked - self._last_reply_at, time.perf_counter()
        return proposals, self._last_reply_at - asked, since_reply

    def _forward(self, seqs: list[Sequence], proposals: dict[int, Proposal]) -> dict[int, Outcome]:
        """One verify forward for the whole batch: a row with a proposal verifies it, a row
        without one samples a plain token. Per seq_id: the accepted count, the new tokens and,
        for a request that asked, their log probabilities from the verify rows that scored them
        (row j of a verify block scores the j-th committed token, the bonus or correction
        token included: the row plain decoding would have used)."""
        chunks = [
            CausalChunk(s.table.blocks, s.num_tokens - 1,
                        s.token_ids[-1:] + (proposals[s.seq_id].tokens if s.seq_id in proposals else []))
            for s in seqs
        ]
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
                plain_tokens = sample(rows, [s.params for s in plain], [s.generator for s in plain],
                                      [s.history for s in plain]).tolist()
            if verified:
                k = len(props[0].tokens)  # K, or a synchronous round's lookahead
                block = logits[(ends[verified, None] - (k + 1) + torch.arange(k + 1)[None, :]).reshape(-1)]
                block = block.view(len(picked), k + 1, -1)
                accepted, next_tokens = verify_rows(block, props, [s.params for s in picked], [s.generator for s in picked],
                                                    [s.history for s in picked])
            outcomes = {s.seq_id: (0, [token], scored(s, rows[i:i + 1], [token]))
                        for i, (s, token) in enumerate(zip(plain, plain_tokens))} if plain else {}
            if verified:
                for i, (s, p, n, r) in enumerate(zip(picked, props, accepted, next_tokens)):
                    tokens = p.tokens[:n] + [r]
                    outcomes[s.seq_id] = (n, tokens, scored(s, block[i, :n + 1], tokens))
        return outcomes

    def _commit_rows(self, seqs: list[Sequence], proposals: dict[int, Proposal],
                     outcomes: dict[int, Outcome]) -> list[RoundRow]:
        """Commit every row's new tokens (plain rows first: the order their KV blocks are
        registered in) and give the draft each verified row's outcome, its next cache key."""
        committed: dict[int, int] = {}
        for seq in sorted(seqs, key=lambda s: s.seq_id in proposals):
            accepted, new_tokens, logprobs = outcomes[seq.seq_id]
            if seq.seq_id in proposals:
                self.proposer.observe(seq, accepted)
            before = seq.num_output_tokens
            self.commit(seq, seq.num_tokens + accepted, new_tokens, logprobs)
            committed[seq.seq_id] = seq.num_output_tokens - before
            if not seq.finished:
                self.runner.blocks.truncate(seq.table, seq.num_tokens + self.k)
        return [RoundRow(s, self._speculates(s), proposals.get(s.seq_id), outcomes[s.seq_id][0], committed[s.seq_id])
                for s in seqs]

    def _observe(self, result: RoundResult, trace: RoundTrace | None) -> None:
        """The round's observers, in order: requests' stats, round telemetry, lookahead models,
        and the governor, whose measure of the round includes them all."""
        record_stats(result)
        if self.telemetry is not None:
            self.telemetry.end_round(trace, result, self.proposer)
        if self.sizing is not None:
            self.sizing.observe(result)
        plan = result.plan
        if plan.governed:
            if plan.held or result.proposed:
                self.governor.record(plan.governed, plan.arm, result.committed, result.elapsed_s())
            else:  # meant to speculate, but the draft gave nothing (late, down): measures neither mode
                self.governor.unanswered()

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
