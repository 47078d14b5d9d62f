"""Draft data parallelism: several draft workers share one target's speculation load.

Each sequence belongs to one worker, which holds its draft KV and builds its speculation tree;
a round's rows are split across the workers, which answer and build in parallel, so each builds
trees for a fraction of the batch — the time it saves can buy a larger fan-out budget (a bigger
speculation cache) without the draft becoming the critical path. The split is by sequence, not
by branches of one tree: a tree's branches share its glue forward and the sequence's KV, and a
worker building part of a tree would have to learn the proposal the target actually used from
another worker before it could start (a second message per round). So a batch of one gains
nothing from more workers (docs/parallelism.md).

``DraftPool`` is a ``DraftChannel``: the proposer talks to it exactly as to one draft.
A sequence is assigned, on first sight, to the worker holding the fewest sequences and stays
there until released. A failure of any worker fails the round, and the proposer's fallback
(plain decoding, reconnect, re-prefill) handles it as it does for one draft.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from saguaro.services.target.channels import DraftChannel
from saguaro.v1 import speculation_pb2 as pb


class DraftPool:
    def __init__(self, workers: Sequence[DraftChannel]):
        if len(workers) < 2:
            raise ValueError("a draft pool needs at least two workers")
        self.workers = list(workers)
        self.owner: dict[int, int] = {}  # seq_id -> worker index
        self.load = [0] * len(self.workers)  # sequences per worker
        self.rows_speculated = [0] * len(self.workers)  # speculate rows sent to each worker

    @property
    def name(self) -> str:
        """The workers' transport (the same for all of them in practice)."""
        names = sorted({w.name for w in self.workers})
        return names[0] if len(names) == 1 else "+".join(names)

    def handshake(self, request: pb.HandshakeRequest, timeout: float) -> pb.HandshakeResponse:
        """Every worker must accept; the first refusal is the pool's answer."""
        first = None
        for index, worker in enumerate(self.workers):
            response = worker.handshake(request, timeout)
            if not response.accepted:
                response.error_message = f"draft worker {index}: {response.error_message}"
                return response
            first = first or response
        return first

    def close(self) -> None:
        for worker in self.workers:
            worker.close()

    # -- routing ---------------------------------------------------------------------------
    def _worker_of(self, seq_id: int) -> int:
        index = self.owner.get(seq_id)
        if index is None:
            index = min(range(len(self.workers)), key=self.load.__getitem__)
            self.owner[seq_id] = index
            self.load[index] += 1
        return index

    def _release(self, seq_id: int) -> int | None:
        index = self.owner.pop(seq_id, None)
        if index is not None:
            self.load[index] -= 1
        return index

    def submit(self, request: pb.SpeculationRequest) -> Future:
        kind = request.WhichOneof("kind")
        if kind == "prefill":
            return self._scatter(request.prefill.sequences, lambda s: s.seq_id, _prefill_part, _merge_prefill)
        if kind == "speculate":
            context = dict(request.speculate.trace_context)
            future = self._scatter(request.speculate.rows, lambda r: r.seq_id,
                                   lambda rows: _speculate_part(rows, context), _merge_speculate)
            for row in request.speculate.rows:
                self.rows_speculated[self.owner[row.seq_id]] += 1
            return future
        if kind == "release":
            parts: dict[int, list[int]] = {}
            for seq_id in request.release.seq_ids:
                index = self._release(seq_id)
                if index is not None:
                    parts.setdefault(index, []).append(seq_id)
            futures = {i: self.workers[i].submit(pb.SpeculationRequest(release=pb.ReleaseRequest(seq_ids=ids)))
                       for i, ids in parts.items()}
            return _gather(futures, lambda replies: pb.SpeculationResponse(release=pb.ReleaseReply(
                released=sum(r.release.released for r in replies.values()))))
        return self.workers[0].submit(request)  # malformed: let one worker answer with its error

    def _scatter(self, items, seq_id_of: Callable, make_part: Callable, merge: Callable) -> Future:
        """Send each worker its items (in order); merge the replies back in the request's order."""
        parts: dict[int, list] = {}
        for item in items:
            parts.setdefault(self._worker_of(seq_id_of(item)), []).append(item)
        futures = {i: self.workers[i].submit(make_part(part)) for i, part in parts.items()}
        order = [seq_id_of(item) for item in items]
        return _gather(futures, lambda replies: merge(replies, order))


def _prefill_part(sequences) -> pb.SpeculationRequest:
    return pb.SpeculationRequest(prefill=pb.PrefillRequest(sequences=sequences))


def _speculate_part(rows, trace_context: dict[str, str]) -> pb.SpeculationRequest:
    speculate = pb.SpeculateRequest(rows=rows)
    speculate.trace_context.update(trace_context)
    return pb.SpeculationRequest(speculate=speculate)


def _in_order(rows_by_worker, order: list[int]) -> list:
    by_id = {row.seq_id: row for rows in rows_by_worker for row in rows}
    return [by_id[seq_id] for seq_id in order]


def _merge_prefill(replies: dict[int, pb.SpeculationResponse], order: list[int]) -> pb.SpeculationResponse:
    rows = _in_order((r.prefill.rows for r in replies.values()), order)
    return pb.SpeculationResponse(prefill=pb.PrefillReply(
        rows=rows, prefill_us=max(r.prefill.prefill_us for r in replies.values())))


def _merge_speculate(replies: dict[int, pb.SpeculationResponse], order: list[int]) -> pb.SpeculationResponse:
    """Rows in the request's order; timings of the slowest worker (the one the round waited
    for), idle time of the least idle one."""
    speculates = [r.speculate for r in replies.values()]
    timings = pb.DraftTimings(
        lookup_us=max(s.timings.lookup_us for s in speculates),
        backup_us=max(s.timings.backup_us for s in speculates),
        prev_build_us=max(s.timings.prev_build_us for s in speculates),
        prev_build_branches=max(s.timings.prev_build_branches for s in speculates),
        idle_us=min(s.timings.idle_us for s in speculates),
    )
    return pb.SpeculationResponse(speculate=pb.SpeculateReply(
        rows=_in_order((s.rows for s in speculates), order), probs_dtype=speculates[0].probs_dtype, timings=timings))


def _gather(futures: dict[int, Future], merge: Callable[[dict[int, pb.SpeculationResponse]], pb.SpeculationResponse]
            ) -> Future:
    """One future for all the workers' replies: the merged reply, the first error reply as it
    is (naming the worker), or the first exception."""
    result: Future = Future()
    if not futures:
        result.set_result(merge({}))
        return result
    replies: dict[int, pb.SpeculationResponse] = {}
    lock = threading.Lock()

    def done(index: int, future: Future) -> None:
        if result.done():
            return
        exc = future.exception()
        with lock:
            if result.done():
                return
            if exc is not None:
                result.set_exception(exc)
                return
            reply = future.result()
            if reply.WhichOneof("kind") == "error":
                reply.error.message = f"draft worker {index}: {reply.error.message}"
                result.set_result(reply)
                return
            replies[index] = reply
            complete = len(replies) == len(futures)
        if complete:
            try:
                result.set_result(merge(replies))
            except Exception as merge_error:  # a worker answered rows it was not asked about
                result.set_exception(merge_error)

    for index, future in futures.items():
        future.add_done_callback(lambda f, i=index: done(i, f))
    return result
