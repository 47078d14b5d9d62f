"""Run one request against the targets: admit, route, stream, retry, cancel.

Both fronts (gRPC and HTTP) hand a prepared upstream ``GenerateRequest`` to
``Dispatcher.stream`` and relay what it yields. Guarantees:

* at most ``max_queue`` requests wait for their first token (else RESOURCE_EXHAUSTED);
* a target that fails before the first token (unreachable, shutting down, overloaded) is
  left for another one, up to ``max_attempts`` targets, within the request's deadline; the
  failure feeds that target's circuit breaker;
* a target that fails after the first token (dies, shuts down, stream broken with a retryable
  code) is left for another one that resumes the request after the tokens already relayed
  (``migration.py``), up to ``max_migrations`` times within the deadline; when that is not
  possible the stream ends with a final FINISH_REASON_ERROR, as the public contract says;
* when the client goes away (cancel, disconnect, deadline), the upstream call is cancelled,
  which the target treats exactly like ``Abort``: the sequence and its KV blocks are freed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc

from saguaro.cache.prefix_hash import block_hashes
from saguaro.services.gateway.admission import Admission, Ticket
from saguaro.services.gateway.config import GatewayConfig
from saguaro.services.gateway.errors import GatewayError
from saguaro.services.gateway.metrics import GatewayMetrics
from saguaro.services.gateway.migration import Progress, resumed_prompt
from saguaro.services.gateway.prefix_index import IndexUnavailable, PrefixIndex
from saguaro.services.gateway.routing import Router, RouteRequest
from saguaro.services.gateway.targets import Target, TargetPool
from saguaro.services.gateway.telemetry import GatewaySpan
from saguaro.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)

# Before the first token these mean "this target could not take the request": try another.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
# ... and of those, these also count against the target's circuit breaker (not mere overload).
TARGET_FAULTS = RETRYABLE - {grpc.StatusCode.RESOURCE_EXHAUSTED}


def routing_hashes(token_ids: Sequence[int], block_size: int, max_blocks: int) -> list[int]:
    """Hashes of the leading blocks a target would prefill, for prefix-aware routing."""
    return block_hashes(list(token_ids[: max_blocks * block_size]), block_size)


@dataclass
class Dispatch:
    """One request on its way through the gateway."""

    request: pb.GenerateRequest  # upstream message: token-id prompt (when tokenised) and scoped request id
    client_id: str  # the request id as the client gave it (or was given it); answers carry this one
    block_hashes: Sequence[int]  # leading prompt blocks, for prefix-aware routing
    deadline: float  # time.monotonic() by which the whole request must be done
    api: str  # metrics label: grpc | completions | chat
    metadata: list[tuple[str, str]] = field(default_factory=list)  # forwarded (trace context)
    prompt_tokens: int = 0  # the prompt alone (usage), without resumed tokens
    target: str | None = None  # address of the target serving it (x-saguaro-target)
    attempts: int = 0
    arrival: float = field(default_factory=time.perf_counter)
    span: GatewaySpan | None = None  # the request's gateway span: told every routing decision
    prefer: str | None = None  # target address to route to while it can take the request (RouteRequest.prefer)
    ticket: Ticket | None = None  # its place in the admission queue, when the front admitted it already


@dataclass
class _Live:
    target: Target | None = None
    call: grpc.aio.UnaryStreamCall | None = None


@dataclass(eq=False)
class Dispatcher:
    """The gateway's requests on their way through the targets (admitted, routed, relayed,
    retried, migrated, cancelled: see the module docstring)."""

    config: GatewayConfig
    pool: TargetPool
    router: Router
    index: PrefixIndex | None
    admission: Admission
    metrics: GatewayMetrics
    live: dict[str, _Live] = field(default_factory=dict, init=False)  # request id -> where it runs
    _background: set[asyncio.Task] = field(default_factory=set, init=False)

    def new_request_id(self) -> str:
        return uuid.uuid4().hex

    async def stream(self, dispatch: Dispatch) -> AsyncIterator[pb.GenerateResponse]:
        """The target's responses, relayed (across migrations); raises ``GatewayError`` before the
        first one."""
        request_id = dispatch.request.request_id
        if request_id in self.live:
            raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"request id {dispatch.client_id!r} is already used by a running request of yours; "
                               "use a unique id or leave it empty", "request_id")
        ticket = dispatch.ticket or self.admission.admit()
        live = self.live[request_id] = _Live()
        self.metrics.inflight.inc()
        progress = Progress(dispatch.request)
        tried: set[str] = set()  # targets that failed this request (or refused it) are not tried again
        try:
            call, message = await self._start(dispatch, live, tried)
            ticket.leave()
            self.metrics.ttft.labels(dispatch.api).observe(time.perf_counter() - dispatch.arrival)
            while True:
                if message.HasField("final"):
                    final = message.final
                    progress.finish(final, dispatch.arrival)
                    self.metrics.tokens.labels("prompt").inc(final.usage.prompt_tokens)
                    self.metrics.tokens.labels("completion").inc(final.usage.completion_tokens)
                    yield message
                    return
                yield message
                progress.relayed(message)
                try:
                    message = await call.read()
                    if message is not grpc.aio.EOF:
                        continue
                    code, details = grpc.StatusCode.UNKNOWN, "the stream ended without a final message"
                except grpc.aio.AioRpcError as exc:
                    code, details = exc.code(), exc.details()
                call, message = await self._migrate(dispatch, live, tried, progress, code, details)
                if call is None:
                    yield message  # the failed final
                    return
        finally:
            ticket.leave()
            self.metrics.inflight.dec()
            self.live.pop(request_id, None)
            if live.target is not None:
                self._release(live.target)
            if live.call is not None and not live.call.done():
                live.call.cancel()  # the client left: the target aborts the sequence

    async def _migrate(self, dispatch: Dispatch, live: _Live, tried: set[str], progress: Progress,
                       code: grpc.StatusCode, details: str) -> tuple[grpc.aio.UnaryStreamCall | None, pb.GenerateResponse]:
        """The target failed mid-stream: resume the request on another one. Returns the new call
        and its first message, or (None, the final message that ends the stream)."""
        failed, request = live.target, dispatch.request
        live.target, live.call = None, None
        self._target_failed(failed, code)
        count = len(progress.output.token_ids)
        why = f"target {failed.address} failed mid-stream after {count} tokens ({code.name}: {details})"
        if code not in RETRYABLE:  # DEADLINE_EXCEEDED: the request's time is up
            return None, self._failed_final(request.request_id, dispatch.prompt_tokens, count, code, why)
        if progress.migrations >= self.config.max_migrations:
            self.metrics.migrations.labels("exhausted").inc()
            log.warning("request %s: %s; not migrated: already migrated %d times (max_migrations %d)", request.request_id,
                        why, progress.migrations, self.config.max_migrations)
            return None, self._failed_final(request.request_id, dispatch.prompt_tokens, count, code,
                                            f"{why}; not migrated: the request was already migrated "
                                            f"{progress.migrations} times (--max-migrations "
                                            f"{self.config.max_migrations})")
        progress.migrations += 1
        request.resume.CopyFrom(progress.output.resume())
        dispatch.block_hashes = routing_hashes(resumed_prompt(request), self.config.block_size,
                                               self.config.max_prefix_blocks)
        dispatch.attempts = 0
        log.warning("request %s: %s; migrating it (migration %d of at most %d)", request.request_id, why,
                    progress.migrations, self.config.max_migrations)
        try:
            call, first = await self._start(dispatch, live, tried)
        except GatewayError as exc:
            self.metrics.migrations.labels("failed").inc()
            return None, self._failed_final(request.request_id, dispatch.prompt_tokens, count, exc.code,
                                            f"{why}; migration failed: {exc.message}")
        if not progress.continues(first):
            self.metrics.migrations.labels("unsupported").inc()
            call.cancel()
            return None, self._failed_final(request.request_id, dispatch.prompt_tokens, count, code,
                                            f"{why}; migration failed: target {dispatch.target} does not resume "
                                            f"streams (it answered at offset {first.delta.offset}, not {count}); "
                                            "upgrade it")
        self.metrics.migrations.labels("resumed").inc()
        return call, first

    async def _start(self, dispatch: Dispatch, live: _Live,
                     tried: set[str]) -> tuple[grpc.aio.UnaryStreamCall, pb.GenerateResponse]:
        """Route and send until a target answers with a first message (never to one in ``tried``)."""
        last_error = ""
        while True:
            remaining = dispatch.deadline - time.monotonic()
            if remaining <= 0:
                raise GatewayError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "the request's deadline passed before a target answered" +
                                   (f" (last error: {last_error})" if last_error else ""))
            if dispatch.attempts >= self.config.max_attempts:
                raise GatewayError(grpc.StatusCode.UNAVAILABLE,
                                   f"{dispatch.attempts} targets failed to serve the request; last error: {last_error}",
                                   retry_after=self.config.retry_after_s)
            route = await self.router.pick(list(self.pool.targets.values()),
                                           RouteRequest(dispatch.block_hashes, exclude=tried,
                                                                        prefer=dispatch.prefer))
            if route is None:
                detail = f"; last error: {last_error}" if last_error else ""
                raise GatewayError(grpc.StatusCode.UNAVAILABLE,
                                   f"no healthy target can take the request ({len(self.pool.healthy())} healthy of "
                                   f"{len(self.pool.targets)} known){detail}", retry_after=self.config.retry_after_s)
            target = route.target
            if dispatch.attempts:
                self.metrics.retries.inc()
            dispatch.attempts += 1
            dispatch.target = target.address
            if dispatch.span is not None:
                dispatch.span.routed(target.address, self.router.policy, route.reason, route.prefix_blocks)
            tried.add(target.address)
            self._provisional(target, dispatch.block_hashes[route.prefix_blocks:])  # what it does not hold yet
            target.breaker.acquire()
            target.inflight += 1
            self.metrics.target_inflight.labels(target.address).set(target.inflight)
            live.target = target
            live.call = call = target.inference.Generate(dispatch.request, timeout=remaining,
                                                         metadata=dispatch.metadata or None)
            try:
                first = await call.read()
                if first is grpc.aio.EOF:
                    raise _EmptyStream()
            except (grpc.aio.AioRpcError, _EmptyStream) as exc:
                code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
                details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "the stream ended without a message"
                live.target, live.call = None, None
                if code not in RETRYABLE:
                    self._release(target)
                    if code is grpc.StatusCode.INVALID_ARGUMENT:
                        target.breaker.success()
                    raise GatewayError(code, details) from None
                self._target_failed(target, code)
                last_error = f"{target.address}: {code.name}: {details}"
                log.warning("request %s: target %s failed before the first token (%s: %s); trying another",
                            dispatch.request.request_id, target.address, code.name, details)
                continue
            target.breaker.success()
            return call, first

    def _target_failed(self, target: Target, code: grpc.StatusCode) -> None:
        """A target could not serve (or finish) a request: release it; faults feed its breaker."""
        self._release(target)
        if code in TARGET_FAULTS:
            target.breaker.failure()
        if code is grpc.StatusCode.UNAVAILABLE:
            self.pool.mark_unreachable(target)

    def _release(self, target: Target) -> None:
        target.inflight -= 1
        if target.address in self.pool.targets:
            self.metrics.target_inflight.labels(target.address).set(target.inflight)

    def _provisional(self, target: Target, hashes: Sequence[int]) -> None:
        """Tell the index the target is about to hold this prefix (not waited for)."""
        if self.index is None or not self.router.uses_prefix or target.instance_id is None or not hashes:
            return
        task = asyncio.get_running_loop().create_task(self._write_provisional(target.instance_id, hashes))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_provisional(self, instance: str, hashes: Sequence[int]) -> None:
        try:
            await self.index.add_provisional(instance, hashes)
        except IndexUnavailable:
            pass  # logged once by the index; routing goes on by load

    @staticmethod
    def _failed_final(request_id: str, prompt_tokens: int, emitted: int, code: grpc.StatusCode,
                      message: str) -> pb.GenerateResponse:
        """The final message of a stream cut after its first token: ABORT for a deadline (as the
        contract says), ERROR otherwise."""
        reason = pb.FINISH_REASON_ABORT if code is grpc.StatusCode.DEADLINE_EXCEEDED else pb.FINISH_REASON_ERROR
        usage = pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=emitted, total_tokens=prompt_tokens + emitted)
        return pb.GenerateResponse(request_id=request_id, final=pb.GenerateFinal(
            finish_reason=reason, error_message=message, usage=usage))

    async def abort(self, request_id: str) -> bool:
        """Forward Abort to the target running the request (its stream then ends with ABORT)."""
        live = self.live.get(request_id)
        if live is None or live.target is None:
            return False
        try:
            answer = await live.target.inference.Abort(pb.AbortRequest(request_id=request_id), timeout=10)
        except grpc.aio.AioRpcError:
            if live.call is not None:
                live.call.cancel()
            return True
        return answer.found


class _EmptyStream(Exception):
    pass
