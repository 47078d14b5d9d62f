"""The target engine's round observer: per-round metrics and ``ssd.round`` spans.

Rounds are batched: one verify forward serves every running sequence. The span design:

* A round gets at most **one** span, whatever the batch size (spans per round stay constant).
* Its **parent** is the request span of the *primary* request: the oldest sequence in the batch
  whose request is sampled (batch order is admission order, so the primary stays the same
  request for as long as it runs — its trace shows an unbroken sequence of rounds).
* Every other sampled request in the batch gets a **span link** from the round
  (``ssd.seq_id``, ``ssd.link.role = batched_request``): from any request's trace one reaches the
  rounds it rode in, and a round lists every request it served.
* Scalar row fields (``ssd.accepted``, ``ssd.cache.hit``, ``ssd.backup``, ``ssd.bonus``) describe
  the primary row; ``ssd.rows.*`` arrays carry every row, ``ssd.batch.*`` the batch totals.
* The round's W3C context goes to the draft inside the ``SpeculateRequest`` (``trace_context``),
  so the draft's ``ssd.speculate`` span is a child of the round.

Only requests whose span is sampled are bound, so an unsampled request costs one dict lookup
per round, and with tracing off ``start_round`` returns at its first test. ``end_round`` reads
the finished round's ``RoundResult`` (services/target/round.py; docs/speculation.md, "One
round").
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from saguaro.speculative.backup import Backup
from saguaro.telemetry import attributes as A
from saguaro.telemetry import tracing

if TYPE_CHECKING:
    from saguaro.services.target.proposer import DraftProposer
    from saguaro.services.target.round import RoundResult
    from saguaro.telemetry.metrics import RoundTotals, TargetMetrics
    from saguaro.v1 import speculation_pb2 as pb


class RoundTrace:
    """An open ``ssd.round`` span and the carrier that sends its context to the draft."""

    __slots__ = ("span", "carrier", "index", "primary")

    def __init__(self, span: Any, carrier: dict[str, str], index: int, primary: int):
        self.span, self.carrier, self.index, self.primary = span, carrier, index, primary


class RoundTelemetry:
    """Set as ``SpeculativeEngine.telemetry``; called by the engine thread once per round."""

    def __init__(self, metrics: TargetMetrics | None = None, tracer: Any = None, round_ratio: float | None = None):
        self.metrics = metrics
        self._tracer = tracer if tracer is not None else tracing.tracer()
        self._ratio = tracing.round_ratio() if round_ratio is None else round_ratio
        self._credit = 0.0
        self._contexts: dict[int, Any] = {}  # seq_id -> SpanContext of its sampled request span
        self.rounds = 0
        self._round_start = 0.0  # perf_counter when the current round asked the draft
        self._prev_reply: float | None = None  # perf_counter when the last draft reply arrived
        self._open: RoundTrace | None = None  # the span start_round opened and end_round has not ended

    # -- request binding (engine thread) ----------------------------------------------------
    def bind(self, seq_id: int, span_context: Any) -> None:
        """Make ``seq_id``'s rounds traceable under its request span (sampled ones only)."""
        if self._tracer is not None and span_context is not None and span_context.trace_flags.sampled:
            self._contexts[seq_id] = span_context

    def forget(self, seq_id: int) -> None:
        self._contexts.pop(seq_id, None)

    def release(self, seqs: list) -> None:
        """Unbind the finished ones among ``seqs`` (after prefill, a round or an abort)."""
        if self._contexts:
            for s in seqs:
                if s.finished:
                    self._contexts.pop(s.seq_id, None)

    # -- rounds -------------------------------------------------------------------------------
    def start_round(self, seqs: list) -> RoundTrace | None:
        """Open the round's span if it is traced (before the draft is asked), else None."""
        self.rounds += 1
        self._round_start = time.perf_counter()
        contexts = self._contexts
        if not contexts:
            return None
        if self._ratio < 1.0:
            self._credit += self._ratio
            if self._credit < 1.0:
                return None
            self._credit -= 1.0
        bound = [(s, contexts[s.seq_id]) for s in seqs if s.seq_id in contexts]
        if not bound:
            return None
        from opentelemetry import trace

        (primary, parent), others = bound[0], bound[1:]
        links = [trace.Link(ctx, {A.SSD_SEQ_ID: s.seq_id, A.SSD_LINK_ROLE: "batched_request"}) for s, ctx in others]
        span = self._tracer.start_span(A.ROUND_SPAN, context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
                                       links=links)
        index = primary.stats.rounds if primary.stats is not None else 0
        self._open = RoundTrace(span, tracing.carrier_for(span), index, primary.seq_id)
        return self._open

    def fail_round(self, exc: BaseException) -> None:
        """The engine step raised mid-round: end the open round span, if any, with status ERROR
        (else it would never be exported and the request's trace would lose the failing round)."""
        trace, self._open = self._open, None
        if trace is None:
            return
        from opentelemetry.trace import Status, StatusCode

        trace.span.record_exception(exc)
        trace.span.set_attribute(A.ERROR_TYPE, type(exc).__name__)
        trace.span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
        trace.span.end()

    def end_round(self, trace: RoundTrace | None, result: RoundResult, proposer: DraftProposer | None) -> None:
        """Account a finished round (its arm: ar, sd or ssd; docs/speculation.md, the speculation
        governor)."""
        timings = result.timings
        build = overlap = gap = 0.0
        if timings is not None:
            # The draft built the previous round's cache while the target worked (verify,
            # commit, scheduling, prefills) between receiving that reply and sending this
            # request: ``gap``. The build was hidden for min(build, gap). A lower bound: the
            # transport's latency hides a little more, which the target cannot see.
            build = result.build_time_s
            gap = self._round_start - self._prev_reply if self._prev_reply is not None else build
            overlap = min(build, max(0.0, gap))
            self._prev_reply = self._round_start + result.draft_time_s
        m = self.metrics
        if m is not None:
            self._count(m.rounds, result, build, overlap)
        if trace is not None:
            self._finish(trace, result, proposer, build, overlap, gap)
        self._open = None

    @staticmethod
    def _count(t: RoundTotals, result: RoundResult, build: float, overlap: float) -> None:
        """Add the round to the plain-number totals a scrape exports (no locks, no calls out)."""
        plan, timings, draft_time, k = result.plan, result.timings, result.draft_time_s, result.depth
        t.observe_round(draft_time + result.verify_time_s)
        t.verify += result.verify_time_s
        t.arm_rounds[plan.arm] = t.arm_rounds.get(plan.arm, 0) + 1
        if plan.speculating:
            t.draft_wait += draft_time
        if timings is not None:
            t.transport += _transport_s(draft_time, timings)
        proposed = result.proposed
        t.fallback_rounds += len(plan.speculating) - len(proposed)
        if not proposed:
            return
        n_prop = len(proposed)
        t.drafts += n_prop
        t.draft_tokens += n_prop * k
        per_pos = t.per_pos
        if len(per_pos) < k:
            per_pos.extend([0] * (k - len(per_pos)))
        for row in proposed:
            n = row.accepted
            t.accepted += n
            for i in range(n):
                per_pos[i] += 1
        if plan.arm != "sd":  # a synchronous round looks nothing up
            lookups = result.lookups
            t.hits += lookups.hits
            t.misses += lookups.misses
            t.jit += lookups.jit
            t.fast += lookups.fast
        if timings is not None:
            t.build += build
            t.overlap += overlap

    def _finish(self, trace: RoundTrace, result: RoundResult, proposer: DraftProposer | None, build: float,
                overlap: float, gap: float) -> None:
        plan, timings, k = result.plan, result.timings, result.depth
        rows, proposed, lookups = result.rows, result.proposed, result.lookups
        attrs: dict[str, Any] = {
            A.SSD_ROUND_INDEX: trace.index,
            A.SSD_ENGINE_ROUND: self.rounds,
            A.SSD_K: k,
            A.SSD_ARM: plan.arm,
            A.SSD_TRANSPORT: result.transport,
            A.SSD_BATCH_SIZE: len(rows),
            A.SSD_BATCH_SPECULATIVE: len(plan.speculating),
            A.SSD_BATCH_ACCEPTED: sum(r.accepted for r in proposed),
            A.SSD_BATCH_HITS: lookups.hits,
            A.SSD_BATCH_MISSES: lookups.misses,
            A.SSD_BATCH_FALLBACKS: len(plan.speculating) - len(proposed),
            A.SSD_ROWS_SEQ_ID: [r.seq.seq_id for r in rows],
            A.SSD_ROWS_ACCEPTED: [r.accepted if r.proposal is not None else -1 for r in rows],
            A.SSD_ROWS_HIT: [r.proposal is not None and r.proposal.hit for r in rows],
            A.SSD_ROWS_BACKUP: [r.proposal.backup.label if r.proposal is not None else Backup.NONE.label for r in rows],
            A.SSD_DRAFT_TIME: result.draft_time_s,
            A.SSD_VERIFY_TIME: result.verify_time_s,
            A.SSD_SEQ_ID: trace.primary,
        }
        if proposer is not None:
            attrs[A.SSD_FAN_OUT] = list(proposer.settings.fan_out_hit)
        primary = next((r for r in rows if r.seq.seq_id == trace.primary), None)
        if primary is not None and primary.proposal is not None:
            n = primary.accepted
            attrs.update({A.SSD_ACCEPTED: n, A.SSD_BONUS: n == k, A.SSD_CACHE_HIT: bool(primary.proposal.hit),
                          A.SSD_BACKUP: primary.proposal.backup.label})
        else:
            attrs[A.SSD_BACKUP] = Backup.NONE.label
            attrs[A.SSD_FALLBACK] = any(s.seq_id == trace.primary for s in plan.speculating)
        if timings is not None:
            attrs.update({
                A.SSD_DRAFT_LOOKUP: timings.lookup_us / 1e6,
                A.SSD_DRAFT_BACKUP: timings.backup_us / 1e6,
                A.SSD_DRAFT_PREV_BUILD: build,
                A.SSD_DRAFT_IDLE: timings.idle_us / 1e6,
                A.SSD_TRANSPORT_TIME: _transport_s(result.draft_time_s, timings),
                A.SSD_OVERLAP: overlap,
                A.SSD_TARGET_GAP: gap,
            })
            if build > 0:
                attrs[A.SSD_OVERLAP_RATIO] = overlap / build
        span = trace.span
        span.set_attributes(attrs)
        span.end()


def _transport_s(draft_time: float, timings: pb.DraftTimings) -> float:
    """The draft wait not spent in the draft's lookup and backup: transport and queuing."""
    return max(0.0, draft_time - (timings.lookup_us + timings.backup_us) / 1e6)
