"""The target's side of the speculation protocol: ask the draft, survive its failures.

The proposer keeps, per sequence, what the draft already knows (how many committed tokens it
has seen and the previous round's accepted count n), turns a decode batch into one
``SpeculateRequest``, and turns the reply into proposals. Any failure — timeout, closed stream,
error reply — costs only speculation: the round runs without proposals (plain decoding, still
exact), the proposer marks the draft down, and it reconnects and re-prefills later.

Two deadlines bound what a slow draft costs. A round waits for its reply at most a *soft*
deadline (a few times the recent reply time, at least ``SOFT_FLOOR_S``): past it the round
decodes plainly and the reply, when it comes, is dropped; while it is outstanding the draft is
busy, so rounds decode plainly without asking. Only past the *hard* ``timeout_s`` is the draft
declared down. A stalled draft thus costs one soft wait, not ``timeout_s`` per round
(``soft_deadline=False`` waits for every reply up to ``timeout_s``: rounds then never go ahead
without a healthy draft, which makes speculation reproducible for debugging and tests). Dropping
a reply is safe: the draft has applied the committed tokens it carried, and the next request's
key (``n_prev = -1``) cannot hit a cache built for proposals the target never verified.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import grpc
import torch

from saguaro import structured_output
from saguaro.sequence import Sequence
from saguaro.speculative.settings import DraftSettings
from saguaro.services.target.channels import DraftChannel
from saguaro.speculative import processing_codec, proposal_codec
from saguaro.speculative.backup import Backup
from saguaro.v1 import speculation_pb2 as pb

log = logging.getLogger(__name__)

NO_PREVIOUS_ROUND = -1  # n_prev sentinel: never matches a cache key (0..K), forces a miss
SOFT_FACTOR, SOFT_FLOOR_S = 4.0, 0.05  # soft deadline = max(floor, factor x recent reply time)
REPLY_EMA = 0.1


class IncompatibleDraft(RuntimeError):
    """The draft refused the pairing at handshake (different vocabulary, tokenizer, ...)."""


@dataclass
class Proposal:
    tokens: list[int]
    probs: torch.Tensor | None  # [K, V] canonical proposal law, when the row samples
    is_sample: bool
    hit: bool
    backup: Backup  # how the draft served a miss (NONE: from its cache)


@dataclass
class DraftView:
    """What the draft knows of one sequence."""

    seen: int  # committed tokens the draft has
    n_prev: int = NO_PREVIOUS_ROUND


class DraftProposer:
    def __init__(
        self,
        connect: Callable[[], DraftChannel],
        handshake: pb.HandshakeRequest,
        settings: DraftSettings,
        vocab_size: int,
        timeout_s: float = 5.0,
        retry_interval_s: float = 1.0,
        soft_deadline: bool = True,
    ):
        self._connect = connect
        self._handshake = handshake
        self.settings = settings
        self.vocab_size = vocab_size
        self.timeout_s = timeout_s
        self.retry_interval_s = retry_interval_s
        self.soft_deadline = soft_deadline
        self.channel: DraftChannel | None = None
        self.transport = "none"
        self.views: dict[int, DraftView] = {}
        self._down_since: float | None = None
        self.failures = 0
        self.draft_model: pb.ModelFacts | None = None  # the connected draft's facts (from the handshake)
        self.last_timings: pb.DraftTimings | None = None  # all the draft's timings of its last reply
        self.reply_s: float | None = None  # recent time from request to reply (EMA), for the soft deadline
        self.late_replies = 0  # rounds that went ahead without their reply
        self._late: tuple[list[Future], float] | None = None  # an overdue round: its futures, when sent

    # -- connection -----------------------------------------------------------------------
    def connect(self) -> None:
        """Handshake; raises IncompatibleDraft on refusal, ConnectionError if unreachable."""
        channel = self._connect()
        try:
            response = channel.handshake(self._handshake, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            channel.close()
            raise ConnectionError(f"draft handshake failed: {exc.code().name}: {exc.details()}") from None
        except Exception as exc:
            channel.close()
            raise ConnectionError(f"draft handshake failed: {exc}") from None
        if not response.accepted:
            channel.close()
            raise IncompatibleDraft(f"the draft refused this target: {response.error_message}")
        self.channel = channel
        self.transport = channel.name
        self.draft_model = response.draft_model
        self.views.clear()  # a (re)connected draft knows no sequence
        self._late = None
        self._down_since = None
        log.info("draft connected over %s", self.transport)

    def available(self) -> bool:
        """Whether to speculate this round; retries a downed draft every retry interval."""
        if self.channel is not None:
            return True
        if self._down_since is not None and time.monotonic() - self._down_since < self.retry_interval_s:
            return False
        try:
            self.connect()
            return True
        except (ConnectionError, IncompatibleDraft) as exc:
            log.warning("draft still unavailable: %s", str(exc).splitlines()[0][:200])
            self._down_since = time.monotonic()
            return False

    def reconnect_delay(self) -> float | None:
        """How long an idle target may sleep before retrying a downed draft (None: connected)."""
        return None if self.channel is not None else max(self.retry_interval_s, 0.1)

    def reconnect_when_idle(self) -> None:
        """Retry a downed draft while no request runs, so Health recovers without traffic; a
        draft that still fails, or is incompatible, only logs: the target keeps serving."""
        if self.channel is None:
            try:
                self.available()
            except Exception:
                log.exception("draft reconnect failed")

    def _mark_down(self, reason: str) -> None:
        log.warning("draft unavailable, falling back to plain decoding: %s", reason)
        self.failures += 1
        if self.channel is not None:
            self.channel.close()
        self.channel = None
        self.transport = "none"
        self._down_since = time.monotonic()

    @property
    def reply_overdue(self) -> bool:
        """Whether a round went ahead without its reply and that reply is still outstanding (no
        new soft deadline is set meanwhile: the draft is still busy with it)."""
        return self._late is not None

    def _soft_wait_s(self) -> float:
        if not self.soft_deadline or self.reply_s is None:
            return self.timeout_s
        return min(self.timeout_s, max(SOFT_FLOOR_S, SOFT_FACTOR * self.reply_s))

    def _call(self, futures: list[Future], soft: bool = False) -> list[pb.SpeculationResponse] | None:
        """The replies, or None: the draft was marked down, or (``soft``) the round goes on
        without its overdue reply."""
        sent = time.monotonic()
        wait = self._soft_wait_s() if soft else self.timeout_s
        try:
            responses = [f.result(timeout=max(0.0, sent + wait - time.monotonic())) for f in futures]
        except FutureTimeout:
            if wait < self.timeout_s:
                self._late = (futures, sent)
                self.late_replies += 1
                return None
            self._mark_down(f"no reply within {self.timeout_s:.1f} s")
            return None
        except Exception as exc:
            self._mark_down(str(exc))
            return None
        for r in responses:
            if r.WhichOneof("kind") == "error":
                self._mark_down(f"draft error {pb.ErrorCode.Name(r.error.code)}: {r.error.message}")
                return None
        if soft:
            self._observe_reply(time.monotonic() - sent)
        return responses

    def _observe_reply(self, seconds: float) -> None:
        self.reply_s = seconds if self.reply_s is None else (1 - REPLY_EMA) * self.reply_s + REPLY_EMA * seconds

    def _draft_busy(self) -> bool:
        """Whether an overdue round is still outstanding (dropping its reply once it is in)."""
        if self._late is None:
            return False
        futures, sent = self._late
        if all(f.done() for f in futures):
            self._late = None
            # a late reply raises the deadline to fit it (an overestimate by at most a round), so
            # replies that are slow but steady — JIT backups at a large batch — fit from now on
            self.reply_s = max(self.reply_s or 0.0, time.monotonic() - sent)
            return self._call(futures) is None  # answered: its errors still count
        if time.monotonic() - sent > self.timeout_s:
            self._late = None
            self._mark_down(f"no reply within {self.timeout_s:.1f} s")
        return True

    # -- protocol -------------------------------------------------------------------------
    def _prefill_request(self, seqs: list[Sequence], committed: Callable[[Sequence], int]) -> pb.SpeculationRequest:
        items = []
        for s in seqs:
            c = committed(s)
            item = pb.PrefillSequence(seq_id=s.seq_id, prompt_token_ids=s.token_ids[:c], reset=True)
            if s.params.seed is not None:
                item.seed = s.params.seed
            if s.processing is not None:
                item.processing.CopyFrom(processing_codec.to_proto(s.processing, s.num_prompt_tokens))
            if s.params.structured_output is not None:
                item.structured_output.CopyFrom(structured_output.to_proto(s.params.structured_output))
                item.prompt_len = s.num_prompt_tokens
            items.append(item)
            self.views[s.seq_id] = DraftView(seen=c)
        return pb.SpeculationRequest(prefill=pb.PrefillRequest(sequences=items))

    def start_prefill(self, seqs: list[Sequence]) -> Future | None:
        """Send prompts before the target's own prefill so both run at once."""
        if not seqs or not self.available():
            return None
        return self.channel.submit(self._prefill_request(seqs, lambda s: s.num_tokens))

    def finish_prefill(self, future: Future | None) -> None:
        if future is not None and self.channel is not None:
            self._call([future])

    def propose(self, seqs: list[Sequence], trace_context: dict[str, str] | None = None,
                synchronous: bool = False, lookahead: int = 0, build_budget_s: float | None = None) -> dict[int, Proposal]:
        """One speculation round for ``seqs``; {} when the draft is unavailable.

        ``trace_context``: W3C carrier of the target's round span when the round is traced.
        ``synchronous``: an SD round of an SSD draft (JIT drafting, no cache, no build), of
        ``lookahead`` tokens (0: K). ``build_budget_s``: the time the draft's next build may
        take (None: no estimate yet).
        """
        if not seqs or not self.available() or self._draft_busy():
            return {}
        futures = []
        unsynced = [s for s in seqs if s.seq_id not in self.views]
        if unsynced:
            futures.append(self.channel.submit(self._prefill_request(unsynced, lambda s: s.num_tokens - 1)))
        rows = []
        for s in seqs:
            view = self.views[s.seq_id]
            c = s.num_tokens - 1
            t = s.params.temperature
            rows.append(pb.SpeculateRow(
                seq_id=s.seq_id, n_prev=view.n_prev, recovery_token=s.token_ids[-1], committed_len=c,
                committed_tokens=s.token_ids[view.seen : c], draft_temperature=s.params.proposal_temperature,
                target_temperature=t,
            ))
            view.seen = c
            view.n_prev = NO_PREVIOUS_ROUND  # until this round's outcome is observed
        speculate = pb.SpeculateRequest(rows=rows, synchronous=synchronous, lookahead=lookahead,
                                        build_budget_us=min(max(int((build_budget_s or 0.0) * 1e6), 0), 2**32 - 1))
        if trace_context:
            speculate.trace_context.update(trace_context)
        futures.append(self.channel.submit(pb.SpeculationRequest(speculate=speculate)))
        responses = self._call(futures, soft=True)
        if responses is None:
            return {}
        reply = responses[-1].speculate
        self.last_timings = reply.timings
        if len(reply.rows) != len(seqs):
            self._mark_down(f"reply has {len(reply.rows)} rows for {len(seqs)} sequences")
            return {}
        return self._proposals(seqs, reply, lookahead)

    def _proposals(self, seqs: list[Sequence], reply: pb.SpeculateReply, lookahead: int = 0) -> dict[int, Proposal]:
        """The verifiable proposals of ``reply``: ``lookahead`` tokens each (0: K)."""
        k = lookahead or self.settings.k
        out: dict[int, Proposal] = {}
        for s, row in zip(seqs, reply.rows):
            if row.status != pb.ROW_STATUS_OK or row.seq_id != s.seq_id:
                if row.status in (pb.ROW_STATUS_UNKNOWN_SEQUENCE, pb.ROW_STATUS_DESYNC):
                    self.views.pop(s.seq_id, None)  # re-prefill next round
                continue
            tokens = list(row.tokens)
            if len(tokens) != k or min(tokens) < 0 or max(tokens) >= self.vocab_size:
                log.warning("ignoring malformed proposal for sequence %d", s.seq_id)
                continue
            probs = None
            if row.probs:
                try:
                    probs = proposal_codec.decode(row.probs, reply.probs_dtype, k, self.vocab_size)
                except ValueError as exc:
                    log.warning("ignoring proposal for sequence %d: %s", s.seq_id, exc)
                    continue
            elif row.proposal_is_sample and s.params.temperature > 0:
                continue  # a sampled proposal without its law cannot be verified exactly
            out[s.seq_id] = Proposal(tokens, probs, row.proposal_is_sample, row.hit, Backup(row.backup))
        return out

    def observe(self, seq: Sequence, accepted: int) -> None:
        """The verified outcome of this round becomes the next round's cache key."""
        view = self.views.get(seq.seq_id)
        if view is not None:
            view.n_prev = accepted

    def skip(self, seqs: list[Sequence]) -> None:
        """These sequences decode a round without asking the draft: its cache entries, keyed
        on the previous round's outcome, no longer describe them (the next lookup must miss)."""
        for s in seqs:
            view = self.views.get(s.seq_id)
            if view is not None:
                view.n_prev = NO_PREVIOUS_ROUND

    def release(self, seq_ids: list[int]) -> None:
        for sid in seq_ids:
            self.views.pop(sid, None)
        if seq_ids and self.channel is not None:
            self.channel.submit(pb.SpeculationRequest(release=pb.ReleaseRequest(seq_ids=seq_ids)))

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
