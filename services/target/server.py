"""The target service: the public ``Inference`` API over one engine loop.

The engine is not thread safe, so exactly one thread, the ``EngineLoop``, ever touches it.
gRPC handler threads hand requests and aborts to that thread through a queue and read their
request's tokens from a queue of its own. Between two engine steps the loop admits what
arrived and applies aborts: batching is continuous, a new request joins the next round
instead of waiting for the running ones to finish.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from concurrent import futures
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from saguaro.errors import ConfigError, InvalidRequestError
from saguaro.rpc_services import add_service
from saguaro.sampling import SamplingParams
from saguaro.sequence import FinishReason, Sequence, SequenceStatus
from saguaro.tokenizer import decode, encode
from saguaro.telemetry.requests import RequestRecord, RequestTelemetry
from saguaro.telemetry.requests import error_type as request_error_type
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc
from saguaro.v1 import routing_pb2 as rpb
from saguaro.v1 import routing_pb2_grpc as rpb_grpc

if TYPE_CHECKING:
    from saguaro.telemetry.service import TargetTelemetry

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 64  # a request without sampling.max_tokens gets this many tokens at most
CONTROL_THREADS = 16  # worker threads beyond the Generate streams: Health, Abort, facts, KV-event watches
RETRY_AFTER_S = 1  # sent with a Generate refused for want of a stream slot

MODE_TO_PROTO = {"ar": pb.DECODE_MODE_AR, "sd": pb.DECODE_MODE_SD, "ssd": pb.DECODE_MODE_SSD}
PROTO_TO_MODE = {v: k for k, v in MODE_TO_PROTO.items()}
FINISH_TO_PROTO = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH,
                   "abort": pb.FINISH_REASON_ABORT, "error": pb.FINISH_REASON_ERROR}
_DTYPES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


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


@dataclass
class Final:
    finish_reason: str  # "stop" | "length" | "abort" | "error"
    prompt_tokens: int
    completion_tokens: int
    stop_token_id: int | None
    timings: dict[str, float]
    stats: dict  # the engine's request_stats plus lookahead_k and tokens_per_round_histogram
    error_message: str = ""


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
    """Runs a ``SpeculativeEngine`` (or any ``LLMEngine``) on one background thread."""

    def __init__(self, engine):
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
                items = self._take(block=True, timeout=self._reconnect_interval(), on_timeout=self._reconnect_draft)
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

    def _reconnect_interval(self) -> float | None:
        """While idle with a downed draft, wake up to retry it (Health then recovers)."""
        proposer = getattr(self.engine, "proposer", None)
        if proposer is None or proposer.channel is not None:
            return None
        return max(proposer.retry_interval_s, 0.1)

    def _reconnect_draft(self) -> None:
        proposer = getattr(self.engine, "proposer", None)
        if proposer is not None and proposer.channel is None:
            try:
                proposer.available()
            except Exception:  # an incompatible draft: keep serving without it
                log.exception("draft reconnect failed")

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
            telemetry = getattr(self.engine, "telemetry", None)
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
        waiting = {sid for sid, live in self._by_seq.items() if live.seq.status is SequenceStatus.WAITING}
        started = time.perf_counter()
        try:
            advanced = self.engine.step()
        except Exception as exc:
            log.exception("engine step failed; failing the running requests")
            self._finish_all("error", f"engine error: {exc}")
            return True
        if not advanced:
            return False
        prefill = any(seq.seq_id in waiting for seq in advanced)  # a step is all prefill or all decode
        for seq in advanced:
            live = self._by_seq.get(seq.seq_id)
            if live is None:
                continue
            if live.queue_s is None:
                live.queue_s = started - live.handle.arrival
            if not prefill:
                n = seq.num_output_tokens - live.emitted
                if n >= len(live.histogram):
                    live.histogram.extend([0] * (n + 1 - len(live.histogram)))
                live.histogram[n] += 1
            self._publish(live)
        return True

    def _publish(self, live: _Live) -> None:
        """Send the tokens committed since the last delta; the Final once finished."""
        seq = live.seq
        new = seq.output_token_ids[live.emitted:]
        if new:
            live.handle._events.put(Delta(new, live.emitted, live.steps, seq.finished))
            live.emitted += len(new)
            live.steps += 1
        if seq.finished:
            reason = seq.finish_reason.value if seq.finish_reason else "abort"
            live.handle._events.put(self._final(live, reason))
            with self._lock:
                self._live.pop(live.handle.request_id, None)
            self._by_seq.pop(seq.seq_id, None)

    def _final(self, live: _Live, reason: str, error: str = "") -> Final:
        seq, now = live.seq, time.perf_counter()
        arrival = live.handle.arrival
        stats = dict(self.engine.request_stats(seq))
        speculative = stats.get("mode", "ar") != "ar"
        k = getattr(self.engine, "k", 0) if speculative else 0
        histogram = live.histogram + [0] * max(0, k + 2 - len(live.histogram))
        stats.update(lookahead_k=k, tokens_per_round_histogram=histogram)
        out = seq.output_token_ids
        return Final(
            finish_reason=reason,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=len(out),
            stop_token_id=out[-1] if seq.finish_reason is FinishReason.STOP and out else None,
            timings={
                "time_to_first_token_s": seq.first_token_time - arrival if seq.first_token_time else 0.0,
                "total_s": now - arrival,
                "queue_s": live.queue_s if live.queue_s is not None else now - arrival,
            },
            stats=stats,
            error_message=error,
        )

    def _finish_all(self, reason: str, error: str) -> None:
        for live in list(self._live.values()):
            try:
                self.engine.abort(live.seq)
            except Exception:
                log.exception("could not abort request %s", live.handle.request_id)
            new = live.seq.output_token_ids[live.emitted:]
            if new:
                live.handle._events.put(Delta(new, live.emitted, live.steps, True))
            live.handle._events.put(self._final(live, reason, error))
        with self._lock:
            self._live.clear()
        self._by_seq.clear()


# -- request conversion ------------------------------------------------------------------------
def sampling_from_proto(sampling: pb.SamplingParams, decode_mode: int, server_mode: str) -> SamplingParams:
    """The request's sampling parameters; raises ``InvalidRequestError`` with the reason."""
    if not math.isfinite(sampling.temperature):
        raise InvalidRequestError(f"temperature must be a finite number >= 0, got {sampling.temperature}")
    if decode_mode != pb.DECODE_MODE_DEFAULT and decode_mode not in PROTO_TO_MODE:
        raise InvalidRequestError(f"unknown decode_mode {decode_mode}; use DECODE_MODE_DEFAULT (0), DECODE_MODE_AR (1), "
                                  f"DECODE_MODE_SD (2) or DECODE_MODE_SSD (3)")
    mode = PROTO_TO_MODE.get(decode_mode)  # None: DECODE_MODE_DEFAULT, the server's mode
    if mode in ("sd", "ssd") and mode != server_mode:
        raise InvalidRequestError(
            f"this server decodes with mode {server_mode!r}; a request may ask for DECODE_MODE_DEFAULT, "
            f"DECODE_MODE_AR{'' if server_mode == 'ar' else ' or DECODE_MODE_' + server_mode.upper()} "
            f"(got DECODE_MODE_{mode.upper()})"
        )
    params = SamplingParams(
        max_tokens=sampling.max_tokens if sampling.HasField("max_tokens") else DEFAULT_MAX_TOKENS,
        temperature=sampling.temperature,
        top_p=sampling.top_p if sampling.top_p != 0 else 1.0,
        top_k=sampling.top_k,
        seed=sampling.seed if sampling.HasField("seed") else None,
        stop_token_ids=list(sampling.stop_token_ids),
        ignore_eos=sampling.ignore_eos,
        mode="ar" if mode == "ar" else None,
    )
    params.validate()
    return params


def prompt_from_proto(request: pb.GenerateRequest, tokenizer) -> list[int]:
    kind = request.WhichOneof("prompt")
    if kind is None:
        raise InvalidRequestError("the request has no prompt: set prompt_text or prompt_token_ids")
    if kind == "prompt_token_ids":
        return list(request.prompt_token_ids.ids)
    if tokenizer is None:
        raise InvalidRequestError("this server's model has no tokenizer: send prompt_token_ids instead of prompt_text")
    return encode(tokenizer, request.prompt_text)


def speculation_to_proto(stats: dict) -> pb.SpeculationStats:
    k = stats.get("lookahead_k", 0)
    accepted = stats.get("accepted_per_position", [])
    mode = stats.get("mode", "ar")
    transport = stats.get("transport", "")
    return pb.SpeculationStats(
        decode_mode=MODE_TO_PROTO.get(mode, pb.DECODE_MODE_AR),
        transport="" if transport == "none" or mode == "ar" else transport,
        rounds=stats.get("rounds", 0),
        lookahead_k=k,
        mean_tokens_per_round=stats.get("tokens_per_round", 0.0),
        tokens_per_round_histogram=stats.get("tokens_per_round_histogram", []),
        accepted_per_position=accepted,
        draft_tokens=stats.get("spec_rounds", 0) * k,
        accepted_draft_tokens=sum(accepted),
        cache_hits=stats.get("cache_hits", 0),
        cache_misses=stats.get("cache_misses", 0),
        jit_backups=stats.get("backups_jit", 0),
        fast_backups=stats.get("backups_fast", 0),
        ar_fallbacks=stats.get("fallbacks", 0),
        ar_fallback_rounds=stats.get("fallback_rounds", 0),
        policy_ar_rounds=stats.get("policy_rounds", 0),
        policy_sd_rounds=stats.get("sync_rounds", 0),
        draft_time_s=stats.get("draft_time_s", 0.0),
        verify_time_s=stats.get("verify_time_s", 0.0),
        draft_build_time_s=stats.get("draft_build_time_s", 0.0),
    )


def final_to_proto(final: Final) -> pb.GenerateFinal:
    out = pb.GenerateFinal(
        finish_reason=FINISH_TO_PROTO[final.finish_reason],
        error_message=final.error_message,
        usage=pb.Usage(prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens,
                       total_tokens=final.prompt_tokens + final.completion_tokens),
        timings=pb.Timings(**final.timings),
        speculation=speculation_to_proto(final.stats),
    )
    if final.stop_token_id is not None:
        out.stop_token_id = final.stop_token_id
    return out


class TextStream:
    """Incremental detokenisation: each piece is the new suffix of the decoded completion.

    A decode that ends in U+FFFD may be a multi-byte character cut in half, so that text is
    held back until a later token completes it (or the request ends). A resumed request starts
    from the tokens and text its caller already has, so the text continues exactly where the
    broken stream stopped (a character split across the break comes out whole).
    """

    def __init__(self, tokenizer, lock: threading.Lock, resume: pb.Resume | None = None):
        self.tokenizer = tokenizer
        self.lock = lock
        self.token_ids: list[int] = list(resume.token_ids) if resume is not None else []
        self.sent = resume.text if resume is not None else ""
        if self.sent:
            with lock:
                text = decode(tokenizer, self.token_ids)
            if not text.startswith(self.sent):
                raise InvalidRequestError("resume.text is not the text of resume.token_ids (nor a prefix of it): "
                                          "send the text received with those tokens")

    def push(self, token_ids: list[int], flush: bool) -> str:
        self.token_ids.extend(token_ids)
        with self.lock:
            text = decode(self.tokenizer, self.token_ids)
        if not flush and text.endswith("\ufffd"):
            return ""
        piece = text[len(self.sent):]
        self.sent += piece
        return piece


# -- the gRPC service ---------------------------------------------------------------------------
class InferenceService(pb_grpc.InferenceServicer):
    def __init__(self, loop: EngineLoop, tokenizer=None, draft_model_name: str = "",
                 telemetry: RequestTelemetry | None = None, max_streams: int = 32):
        """``max_streams``: Generate streams served at once (each holds a worker thread); more
        are refused with RESOURCE_EXHAUSTED and ``retry-after``, while Health and the other
        unary calls keep threads of their own (``serve_target``)."""
        self.loop = loop
        self.max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams)
        self.engine = loop.engine
        self.tokenizer = tokenizer
        self.draft_model_name = draft_model_name
        self.mode = getattr(self.engine, "mode", "ar")
        # A fast tokenizer is not safe to call from several threads at once ("Already borrowed").
        self._tokenizer_lock = threading.Lock()
        # Request span, request metrics, the per-request log line (saguaro.telemetry.requests).
        self.telemetry = telemetry or RequestTelemetry(self.engine.runner.model_dir.name)

    def Generate(self, request: pb.GenerateRequest, context):
        if not self._streams.acquire(blocking=False):
            context.set_trailing_metadata((("retry-after", str(RETRY_AFTER_S)),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"this target serves {self.max_streams} streams at once; retry in {RETRY_AFTER_S} s")
        try:
            record = self.telemetry.start(request.request_id or uuid.uuid4().hex, context.invocation_metadata(),
                                          time.perf_counter())
            try:
                yield from self._generate(request, context, record)
            except BaseException as exc:  # refused, cancelled by the client (GeneratorExit), a bug
                record.fail(request_error_type(exc, context))
                raise
        finally:
            self._streams.release()

    def _generate(self, request: pb.GenerateRequest, context, record: RequestRecord):
        arrival, request_id = record.arrival, record.request_id
        resume = request.resume if request.HasField("resume") else None
        try:
            with self._tokenizer_lock:
                prompt = prompt_from_proto(request, self.tokenizer)
            params = sampling_from_proto(request.sampling, request.decode_mode, self.mode)
            text = TextStream(self.tokenizer, self._tokenizer_lock, resume) if self.tokenizer is not None else None
            handle = self.loop.submit(request_id, prompt, params, arrival, record.span_context,
                                      resume.token_ids if resume is not None else ())
            record.admitted(len(prompt), params)
        except InvalidRequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except LoopStopped as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if not context.add_callback(lambda: self.loop.cancel(handle)):
            self.loop.cancel(handle)  # the client is already gone
        for event in handle.events():
            if isinstance(event, Final):
                record.finish(event)
                yield pb.GenerateResponse(request_id=request_id, final=final_to_proto(event))
                return
            record.delta(len(event.token_ids))
            pieces = [[t] for t in event.token_ids] if request.stream_tokens_individually else [event.token_ids]
            offset = event.offset
            for i, tokens in enumerate(pieces):
                delta = pb.TokenDelta(token_ids=tokens, offset=offset, round=event.round)
                if text is not None:
                    delta.text = text.push(tokens, flush=event.last and i == len(pieces) - 1)
                offset += len(tokens)
                yield pb.GenerateResponse(request_id=request_id, delta=delta)

    def Abort(self, request: pb.AbortRequest, context) -> pb.AbortResponse:
        try:
            return pb.AbortResponse(found=self.loop.abort(request.request_id))
        except LoopStopped:
            return pb.AbortResponse(found=False)

    def Health(self, request: pb.HealthRequest, context) -> pb.HealthResponse:
        proposer = getattr(self.engine, "proposer", None)
        connected = proposer is not None and proposer.channel is not None
        if not self.loop.alive:
            state = dict(status=pb.SERVING_STATUS_NOT_SERVING, mode=MODE_TO_PROTO[self.mode],
                         message="the engine loop is not running")
        elif self.mode != "ar" and not connected:
            state = dict(status=pb.SERVING_STATUS_DEGRADED, draft_connected=False, mode=pb.DECODE_MODE_AR,
                         message="draft unavailable, decoding without speculation")
        else:
            state = dict(status=pb.SERVING_STATUS_SERVING, draft_connected=connected, mode=MODE_TO_PROTO[self.mode])
        load = self.loop.load
        return pb.HealthResponse(
            **state, num_running=load.num_running, num_waiting=load.num_waiting,
            kv_cache_usage=load.kv_cache_usage, max_num_seqs=self.engine.config.max_num_seqs,
            prefix_cache_queried_tokens=load.prefix_cache_queried_tokens,
            prefix_cache_hit_tokens=load.prefix_cache_hit_tokens)

    def ModelInfo(self, request: pb.ModelInfoRequest, context) -> pb.ModelInfoResponse:
        runner = self.engine.runner
        info = pb.ModelInfoResponse(
            model_name=runner.model_dir.name,
            architecture=runner.model_config.architecture,
            vocab_size=runner.vocab_size,
            max_model_len=runner.max_model_len,
            dtype=_DTYPES.get(str(runner.dtype), str(runner.dtype)),
            decode_mode=MODE_TO_PROTO[self.mode],
            has_tokenizer=self.tokenizer is not None,
            eos_token_ids=sorted(self.engine.requests.eos_ids),
            draft_model_name=self.draft_model_name if self.mode != "ar" else "",
        )
        proposer = getattr(self.engine, "proposer", None)
        if proposer is not None:
            if proposer.draft_model is not None and proposer.draft_model.model_name:
                info.draft_model_name = proposer.draft_model.model_name
            info.lookahead_k = proposer.settings.k
            info.fan_out = proposer.settings.fan_out
            info.fan_out_list.extend(proposer.settings.fan_out_hit)
        return info


# -- the routing service (KV events and tokenizer, for gateways) ------------------------------------
class KvEventHub:
    """The target's prefix-cache events for gateways.

    It is the block manager's listener, so it is called on the engine thread; WatchKvEvents
    handlers read it from gRPC threads. The current set of hashes (for snapshots) and the last
    ``buffer`` events (to resume a watcher or catch up a slow one) change under one lock, so a
    snapshot always agrees with the sequence number it is reported at.
    """

    def __init__(self, block_size: int, initial: Iterable[int] = (), buffer: int = 4096):
        self.instance_id = uuid.uuid4().hex
        self.block_size = block_size
        self._cond = threading.Condition()
        self._hashes: set[int] = set(initial)
        self._events: deque[tuple[int, int, list[int]]] = deque(maxlen=buffer)  # (seq, kind, hashes)
        self._seq = 0

    def blocks_stored(self, hashes: list[int]) -> None:
        self._append(rpb.KV_EVENT_KIND_STORED, hashes)

    def blocks_evicted(self, hashes: list[int]) -> None:
        self._append(rpb.KV_EVENT_KIND_EVICTED, hashes)

    def _append(self, kind: int, hashes: list[int]) -> None:
        with self._cond:
            if kind == rpb.KV_EVENT_KIND_STORED:
                self._hashes.update(hashes)
            else:
                self._hashes.difference_update(hashes)
            self._seq += 1
            self._events.append((self._seq, kind, hashes))
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every waiting reader (a watcher went away and should notice)."""
        with self._cond:
            self._cond.notify_all()

    def read(self, after_seq: int | None, timeout: float) -> tuple[bool, int, list]:
        """``(False, seq, events after after_seq)``, waiting up to ``timeout`` for one (none:
        a heartbeat); or ``(True, seq, all hashes)`` when ``after_seq`` is None or no longer
        replayable."""
        with self._cond:
            if after_seq is not None and after_seq == self._seq:
                self._cond.wait(timeout)
            oldest = self._events[0][0] if self._events else self._seq + 1
            if after_seq is None or not oldest - 1 <= after_seq <= self._seq:
                return True, self._seq, list(self._hashes)
            return False, self._seq, list(itertools.islice(self._events, after_seq - oldest + 1, None))


HEARTBEAT_S = 2.0  # a watch stream with no events still sends a batch this often


class TargetRoutingService(rpb_grpc.TargetRoutingServicer):
    def __init__(self, hub: KvEventHub, tokenizer, tokenizer_lock: threading.Lock):
        self.hub = hub
        self.tokenizer = tokenizer
        self._tokenizer_lock = tokenizer_lock
        self._tokenizer_files: rpb.TokenizerFiles | None = None

    def WatchKvEvents(self, request: rpb.WatchKvEventsRequest, context):
        hub = self.hub
        after = request.after_seq if request.instance_id == hub.instance_id else None
        context.add_callback(hub.wake)
        while context.is_active():
            snapshot, seq, payload = hub.read(after, HEARTBEAT_S)
            batch = rpb.KvEventBatch(instance_id=hub.instance_id, block_size=hub.block_size, seq=seq,
                                     snapshot=snapshot)
            if snapshot:
                batch.snapshot_hashes.extend(payload)
            else:
                batch.events.extend(rpb.KvEvent(seq=s, kind=k, block_hashes=h) for s, k, h in payload)
            yield batch
            after = seq

    def GetTokenizer(self, request: rpb.GetTokenizerRequest, context) -> rpb.TokenizerFiles:
        if self.tokenizer is None:
            return rpb.TokenizerFiles(has_tokenizer=False)
        with self._tokenizer_lock:
            if self._tokenizer_files is None:
                with tempfile.TemporaryDirectory(prefix="saguaro-tokenizer-") as tmp:
                    self.tokenizer.save_pretrained(tmp)
                    files = {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}
                self._tokenizer_files = rpb.TokenizerFiles(has_tokenizer=True, files=files)
            return self._tokenizer_files


def serve_target(engine, tokenizer, address: str, draft_model_name: str = "",
                 max_workers: int | None = None, telemetry: TargetTelemetry | None = None,
                 credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, EngineLoop]:
    """Start the engine loop and the Inference service on ``address`` ("host:port" or "unix:/path");
    TLS (or mTLS) with ``credentials`` (``saguaro.tls.server_credentials``), else plaintext.

    Next to ``Inference`` it serves ``TargetRouting`` (KV-cache events and the tokenizer) for
    gateways. Every open Generate or WatchKvEvents stream holds a worker thread. Generate
    streams beyond ``max_workers`` (default: 4 × max_num_seqs, at least 32) are refused with
    RESOURCE_EXHAUSTED; ``CONTROL_THREADS`` more threads serve Health, Abort, the model's facts
    and the KV-event watches, so a loaded target still answers its health checks (a busy pod is
    not an unhealthy one).
    """
    streams = max_workers or max(32, 4 * engine.config.max_num_seqs)
    blocks = engine.runner.blocks
    hub = KvEventHub(blocks.block_size, initial=blocks.by_hash)
    blocks.listener = hub  # set before the loop thread starts: from then on only it changes blocks
    loop = EngineLoop(engine).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=streams + CONTROL_THREADS,
                                                    thread_name_prefix="inference"))
    if telemetry is not None:  # metrics and traces (saguaro.telemetry.service), from the command line
        telemetry.attach(engine, loop)
    service = InferenceService(loop, tokenizer, draft_model_name, telemetry.requests if telemetry else None,
                               max_streams=streams)
    add_service(server, pb.DESCRIPTOR.services_by_name["Inference"], service)
    add_service(server, rpb.DESCRIPTOR.services_by_name["TargetRouting"],
                TargetRoutingService(hub, tokenizer, service._tokenizer_lock))
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0 and not address.startswith("unix:"):
        loop.stop()
        raise ConfigError(f"cannot listen on {address}: the address is in use or invalid")
    server.start()
    return server, loop
