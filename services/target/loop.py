"""The engine loop: the one thread that ever touches the target's engine.

The engine is not thread safe. gRPC handler threads hand requests and aborts to this thread
through a queue and read their request's tokens from a queue of their own. Between two engine
steps the loop admits what arrived and applies aborts: batching is continuous, a new request
joins the next round instead of waiting for the running ones to finish.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Collection, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saguaro.errors import InvalidRequestError
from saguaro.logprobs import TokenLogprob
from saguaro.sampling import SamplingParams
from saguaro.sequence import FinishReason, Sequence

if TYPE_CHECKING:
    from saguaro.services.target.engine import SpeculativeEngine

log = logging.getLogger(__name__)


class LoopStopped(RuntimeError):
    """The engine loop is shut down; no request can be admitted."""


# -- what the loop hands to a request's reader ------------------------------------------------
@dataclass
class Delta:
    """Newly committed completion tokens of one engine step."""

    token_ids: list[int]
    offset: int  # completion tokens committed before these
    round: int  # 0-based step of this request that committed them (0 = prefill)
    last: bool  # the request finished in this step: the Final follows
    time: float  # perf_counter when the step that committed them ended (inter-token latency per step)
    # Log probabilities (saguaro/logprobs.py) of token_ids, when the request asked; the prompt's
    # on the first delta only, when it asked for them.
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass
class Final:
    finish_reason: str  # "stop" | "length" | "abort" | "error"
    prompt_tokens: int
    completion_tokens: int
    stop_token_id: int | None
    timings: dict[str, float]
    stats: dict  # the engine's request_stats plus lookahead_k and tokens_per_round_histogram
    error_message: str = ""
    stop_string: str | None = None  # the stop string that ended the request (then stop_token_id is None)
    cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache


class RequestHandle:
    """A submitted request, as seen from the thread that reads its results."""

    def __init__(self, request_id: str, arrival: float, trace: Any = None):
        self.request_id = request_id
        self.arrival = arrival
        self.trace = trace  # the request span's context: the engine traces its rounds under it
        self._events: queue.Queue = queue.Queue()

    def events(self, timeout: float | None = None) -> Iterator[Delta | Final]:
        """Deltas in order, then the Final; ``timeout`` bounds each wait (queue.Empty)."""
        while True:
            event = self._events.get(timeout=timeout)
            yield event
            if isinstance(event, Final):
                return


@dataclass(frozen=True)
class LoadReport:
    """The engine's load as the loop thread last saw it (Health reads it; nobody else touches
    the engine from another thread)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queried_tokens: int = 0
    prefix_cache_hit_tokens: int = 0


@dataclass
class _Live:
    """Loop-side state of one running request (touched only by the loop thread)."""

    handle: RequestHandle
    seq: Sequence
    emitted: int = 0
    steps: int = 0
    queue_s: float | None = None
    histogram: list[int] = field(default_factory=list)  # index i: decode rounds that committed i tokens


class EngineLoop:
    """Runs a ``SpeculativeEngine`` on one background thread."""

    def __init__(self, engine: SpeculativeEngine):
        self.engine = engine
        self._inbox: queue.Queue = queue.Queue()
        self._live: dict[str, _Live] = {}  # by request id
        self._by_seq: dict[int, _Live] = {}  # by engine seq_id (loop thread only)
        self._lock = threading.Lock()  # guards _live against readers on other threads
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.load = LoadReport()  # replaced (never mutated) by the loop thread between steps

    # -- API for other threads -------------------------------------------------------------
    def start(self) -> "EngineLoop":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Abort what is running (each reader gets a final ABORT) and end the thread."""
        if not self._stopped:
            self._stopped = True
            self._inbox.put(("stop",))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    def submit(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
               arrival: float | None = None, trace: Any = None,
               resumed: Collection[int] = ()) -> RequestHandle:
        """Admit a request; raises ``InvalidRequestError`` if the engine refuses it.

        ``trace``: the request span's context, under which the engine traces its rounds.
        ``resumed``: completion tokens the request already produced (``GenerateRequest.resume``);
        its deltas continue at offset ``len(resumed)``.
        """
        if not self.alive:
            raise LoopStopped("the target's engine loop is not running")
        handle = RequestHandle(request_id, time.perf_counter() if arrival is None else arrival, trace)
        admitted: Future = Future()
        self._inbox.put(("add", handle, list(prompt_token_ids), params, list(resumed), admitted))
        self._wait(admitted)
        return handle

    def abort(self, request_id: str) -> bool:
        """Abort a running request by id; False when it is unknown or already finished."""
        done: Future = Future()
        self._inbox.put(("abort", request_id, None, done))
        return self._wait(done)

    def _wait(self, future: Future):
        while True:
            try:
                return future.result(timeout=1.0)
            except FutureTimeout:
                if not self._thread.is_alive():
                    raise LoopStopped("the target's engine loop is not running") from None

    def cancel(self, handle: RequestHandle) -> None:
        """Abort exactly this request if it still runs (no wait; for RPC-termination callbacks:
        by handle, so a later request that reuses the id is never hit)."""
        if self.alive:
            self._inbox.put(("abort", handle.request_id, handle, None))

    def live_request_ids(self) -> list[str]:
        with self._lock:
            return list(self._live)

    # -- the loop thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # a bug: fail every request rather than leave readers waiting
            log.exception("the engine loop crashed")
            self._stopped = True
            try:
                self._finish_all("error", f"the target's engine loop crashed: {exc}")
            finally:
                self._refuse_pending()

    def _serve(self) -> None:
        progress = True
        while True:
            self._publish_load()
            if not self.engine.has_work():  # idle: sleep until a request (or a draft retry) is due
                proposer = self.engine.proposer
                items = self._take(block=True, timeout=proposer.reconnect_delay() if proposer else None,
                                   on_timeout=proposer.reconnect_when_idle if proposer else None)
            else:  # between steps; after a step that scheduled nothing, wait a little instead of spinning
                items = self._take(block=not progress, timeout=0.01)
            for item in items:
                if item[0] == "stop":
                    self._finish_all("abort", "")
                    self._refuse_pending()
                    return
                self._apply(item)
            if items:
                self._publish_load()  # admitted requests show as waiting during the step that follows
            if self.engine.has_work():
                progress = self._step()

    def _publish_load(self) -> None:
        scheduler, blocks = self.engine.scheduler, self.engine.runner.blocks
        self.load = LoadReport(len(scheduler.running), len(scheduler.waiting), blocks.usage(),
                               blocks.stats.queried_tokens, blocks.stats.hit_tokens)

    def _take(self, block: bool, timeout: float | None = None, on_timeout=None) -> list[tuple]:
        items = []
        if block:
            try:
                items.append(self._inbox.get(timeout=timeout))
            except queue.Empty:
                if on_timeout is not None:
                    on_timeout()
                return items
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return items

    def _refuse_pending(self) -> None:
        for item in self._take(block=False):
            if item[0] == "add":
                item[-1].set_exception(LoopStopped("the target is shutting down"))
            elif item[0] == "abort" and item[-1] is not None:
                item[-1].set_result(False)

    def _apply(self, item: tuple) -> None:
        if item[0] == "add":
            _, handle, prompt, params, resumed, admitted = item
            if handle.request_id in self._live:
                admitted.set_exception(InvalidRequestError(
                    f"request id {handle.request_id!r} is already used by a running request; "
                    "use a unique id or leave it empty"))
                return
            try:
                seq = self.engine.add_request(prompt, params, resumed)
            except Exception as exc:  # InvalidRequestError, or a bug the caller should see
                admitted.set_exception(exc)
                return
            seq.arrival_time = handle.arrival  # timings count from arrival at the server
            telemetry = self.engine.telemetry
            if handle.trace is not None and telemetry is not None:
                telemetry.bind(seq.seq_id, handle.trace)
            live = _Live(handle, seq, emitted=len(resumed))
            with self._lock:
                self._live[handle.request_id] = live
            self._by_seq[seq.seq_id] = live
            admitted.set_result(None)
            if seq.finished:  # resumed after its last token: only the Final is left to send
                self._publish(live)
        else:
            _, request_id, handle, done = item
            live = self._live.get(request_id)
            found = live is not None and (handle is None or live.handle is handle)
            if found:
                try:
                    self.engine.abort(live.seq)
                except Exception:
                    log.exception("engine abort of request %s failed", request_id)
                self._publish(live)
            if done is not None:
                done.set_result(found)

    def _step(self) -> bool:
        """One engine step; publish what it committed. False when nothing was scheduled."""
        started = time.perf_counter()
        try:
            batch = self.engine.step()
        except Exception as exc:
            log.exception("engine step failed; failing the running requests")
            self._finish_all("error", f"engine error: {exc}")
            return True
        if batch is None:
            return False
        for seq in batch.sequences:
            live = self._by_seq.get(seq.seq_id)
            if live is None:
                continue
            if live.queue_s is None:
                live.queue_s = started - live.handle.arrival
            if not batch.is_prefill:
                n = seq.num_output_tokens - live.emitted
                if n >= len(live.histogram):
                    live.histogram.extend([0] * (n + 1 - len(live.histogram)))
                live.histogram[n] += 1
            self._publish(live)
        return True

    def _publish(self, live: _Live) -> None:
        """Send the tokens committed since the last delta; the Final once finished."""
        seq = live.seq
        self._send_new(live, seq.finished)
        if seq.finished:
            reason = seq.finish_reason.value if seq.finish_reason else "abort"
            live.handle._events.put(self._final(live, reason))
            with self._lock:
                self._live.pop(live.handle.request_id, None)
            self._by_seq.pop(seq.seq_id, None)

    @staticmethod
    def _send_new(live: _Live, last: bool) -> None:
        """Hand the reader the tokens committed since the last delta (if any), with their log
        probabilities, and the prompt's with the first delta."""
        seq, start = live.seq, live.emitted
        new = seq.output_token_ids[start:]
        if not new:
            return
        logprobs = seq.logprobs[start:] if seq.logprobs is not None else None
        prompt_logprobs = seq.prompt_logprobs if live.steps == 0 else None
        live.handle._events.put(Delta(new, start, live.steps, last, time.perf_counter(), logprobs, prompt_logprobs))
        live.emitted += len(new)
        live.steps += 1

    def _final(self, live: _Live, reason: str, error: str = "") -> Final:
        seq, now = live.seq, time.perf_counter()
        arrival = live.handle.arrival
        stats = dict(self.engine.request_stats(seq))
        speculative = stats.get("mode", "ar") != "ar"
        k = self.engine.k if speculative else 0
        histogram = live.histogram + [0] * max(0, k + 2 - len(live.histogram))
        stats.update(lookahead_k=k, tokens_per_round_histogram=histogram)
        out = seq.output_token_ids
        stop_string = seq.stop_string
        return Final(
            finish_reason=reason,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=len(out),
            stop_token_id=out[-1] if seq.finish_reason is FinishReason.STOP and out and stop_string is None else None,
            timings={
                "time_to_first_token_s": seq.first_token_time - arrival if seq.first_token_time else 0.0,
                "total_s": now - arrival,
                "queue_s": live.queue_s if live.queue_s is not None else now - arrival,
            },
            stats=stats,
            error_message=error,
            stop_string=stop_string,
            cached_prompt_tokens=seq.num_cached_prompt_tokens or 0,
        )

    def _finish_all(self, reason: str, error: str) -> None:
        for live in list(self._live.values()):
            try:
                self.engine.abort(live.seq)
            except Exception:
                log.exception("could not abort request %s", live.handle.request_id)
            self._send_new(live, True)
            live.handle._events.put(self._final(live, reason, error))
        with self._lock:
            self._live.clear()
        self._by_seq.clear()
