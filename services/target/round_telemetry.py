"""The target engine's round hook: per-round metrics and ``ssd.round`` spans.

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
per round, and with tracing off ``start_round`` returns at its first test.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from saguaro.speculative.backup import Backup
from saguaro.telemetry import attributes as A
from saguaro.telemetry import tracing

if TYPE_CHECKING:
    from saguaro.telemetry.metrics import RoundTotals, TargetMetrics


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

    def end_round(self, trace: RoundTrace | None, engine: Any, seqs: list, spec: list, proposals: dict,
                  outcome: dict[int, int], draft_time: float, verify_time: float, arm: str = "ssd") -> None:
        """Account a finished round: ``proposals`` by seq_id, ``outcome`` seq_id -> accepted n;
        ``arm``: how it ran (ar, sd or ssd; docs/speculation.md, the speculation governor)."""
        proposer = engine.proposer
        timings = proposer.last_timings if proposals and proposer is not None else None
        build = overlap = gap = 0.0
        if timings is not None:
            # The draft built the previous round's cache while the target worked (verify,
            # commit, scheduling, prefills) between receiving that reply and sending this
            # request: ``gap``. The build was hidden for min(build, gap). A lower bound: the
            # transport's latency hides a little more, which the target cannot see.
            build = timings.prev_build_us / 1e6
            gap = self._round_start - self._prev_reply if self._prev_reply is not None else build
            overlap = min(build, max(0.0, gap))
            self._prev_reply = self._round_start + draft_time
        # the round's depth: K, or fewer tokens chosen by a lookahead model (docs/speculation.md)
        k = len(next(iter(proposals.values())).tokens) if proposals else engine.k
        m = self.metrics
        if m is not None:
            self._count(m.rounds, k, spec, proposals, outcome, draft_time, verify_time, build, overlap, timings, arm)
        if trace is not None:
            self._finish(trace, engine, k, seqs, spec, proposals, outcome, draft_time, verify_time, timings, build,
                         overlap, gap, arm)
        self._open = None

    @staticmethod
    def _count(t: RoundTotals, k: int, spec: list, proposals: dict, outcome: dict[int, int], draft_time: float,
               verify_time: float, build: float, overlap: float, timings: Any, arm: str) -> None:
        """Add the round to the plain-number totals a scrape exports (no locks, no calls out)."""
        t.observe_round(draft_time + verify_time)
        t.verify += verify_time
        t.arm_rounds[arm] = t.arm_rounds.get(arm, 0) + 1
        if spec:
            t.draft_wait += draft_time
        if timings is not None:
            t.transport += max(0.0, draft_time - (timings.lookup_us + timings.backup_us) / 1e6)
        t.fallback_rounds += len(spec) - len(proposals)
        if not proposals:
            return
        n_prop = len(proposals)
        t.drafts += n_prop
        t.draft_tokens += n_prop * k
        per_pos = t.per_pos
        if len(per_pos) < k:
            per_pos.extend([0] * (k - len(per_pos)))
        for n in outcome.values():
            t.accepted += n
            for i in range(n):
                per_pos[i] += 1
        if arm != "sd":  # a synchronous round looks nothing up
            hits = 0
            for p in proposals.values():
                hits += p.hit
                t.jit += p.backup == Backup.JIT
                t.fast += p.backup == Backup.FAST
            t.hits += hits
            t.misses += n_prop - hits
        if timings is not None:
            t.build += build
            t.overlap += overlap

    def _finish(self, trace: RoundTrace, engine: Any, k: int, seqs: list, spec: list, proposals: dict,
                outcome: dict[int, int], draft_time: float, verify_time: float, timings: Any, build: float,
                overlap: float, gap: float, arm: str) -> None:
        proposer = engine.proposer
        ids = [s.seq_id for s in seqs]
        rows = [proposals.get(sid) for sid in ids]
        hits = sum(p.hit for p in proposals.values())
        attrs: dict[str, Any] = {
            A.SSD_ROUND_INDEX: trace.index,
            A.SSD_ENGINE_ROUND: self.rounds,
            A.SSD_K: k,
            A.SSD_ARM: arm,
            A.SSD_TRANSPORT: proposer.transport if proposer is not None else "none",
            A.SSD_BATCH_SIZE: len(seqs),
            A.SSD_BATCH_SPECULATIVE: len(spec),
            A.SSD_BATCH_ACCEPTED: sum(outcome.values()),
            A.SSD_BATCH_HITS: hits,
            A.SSD_BATCH_MISSES: len(proposals) - hits,
            A.SSD_BATCH_FALLBACKS: len(spec) - len(proposals),
            A.SSD_ROWS_SEQ_ID: ids,
            A.SSD_ROWS_ACCEPTED: [outcome.get(sid, -1) for sid in ids],
            A.SSD_ROWS_HIT: [p is not None and p.hit for p in rows],
            A.SSD_ROWS_BACKUP: [p.backup.label if p is not None else Backup.NONE.label for p in rows],
            A.SSD_DRAFT_TIME: draft_time,
            A.SSD_VERIFY_TIME: verify_time,
            A.SSD_SEQ_ID: trace.primary,
        }
        if proposer is not None:
            attrs[A.SSD_FAN_OUT] = list(proposer.settings.fan_out_hit)
        primary = proposals.get(trace.primary)
        if primary is not None:
            n = outcome.get(trace.primary, 0)
            attrs.update({A.SSD_ACCEPTED: n, A.SSD_BONUS: n == k, A.SSD_CACHE_HIT: bool(primary.hit),
                          A.SSD_BACKUP: primary.backup.label})
        else:
            attrs[A.SSD_BACKUP] = Backup.NONE.label
            attrs[A.SSD_FALLBACK] = any(s.seq_id == trace.primary for s in spec)
        if timings is not None:
            attrs.update({
                A.SSD_DRAFT_LOOKUP: timings.lookup_us / 1e6,
                A.SSD_DRAFT_BACKUP: timings.backup_us / 1e6,
                A.SSD_DRAFT_PREV_BUILD: build,
                A.SSD_DRAFT_IDLE: timings.idle_us / 1e6,
                A.SSD_TRANSPORT_TIME: max(0.0, draft_time - (timings.lookup_us + timings.backup_us) / 1e6),
                A.SSD_OVERLAP: overlap,
                A.SSD_TARGET_GAP: gap,
            })
            if build > 0:
                attrs[A.SSD_OVERLAP_RATIO] = overlap / build
        span = trace.span
        span.set_attributes(attrs)
        span.end()
