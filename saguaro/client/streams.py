"""One Generate call as the caller iterates it: deltas out, retries and resumes inside.

The sync and async streams differ only in how they wait; what they share (the call, its
deadline, when to retry or resume, and the output received so far) is ``StreamBase``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import grpc

from saguaro.client.errors import ServiceError, service_error
from saguaro.client.results import GenerateResult, StreamDelta
from saguaro.client.settings import RESUMABLE, ClientSettings, remaining
from saguaro.resume import ReceivedOutput
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc
from saguaro.wire import PROTO_TO_FINISH, logprobs_from_proto, speculation_from_proto


class StreamOutput:
    """Turns Generate responses into deltas and, at the final message, the result."""

    def __init__(self, address: str, prompt_ids: list[int]):
        self.address = address
        self.prompt_ids = prompt_ids
        self.request_id = ""
        self.received = ReceivedOutput()  # kept across resumes: what the next resume sends
        # as the offline API's (None: not asked for); kept across resumes with the tokens
        self.logprobs: list[dict] | None = None
        self.prompt_logprobs: list[dict] | None = None
        self.result: GenerateResult | None = None
        self.answered = False  # a response arrived: the request may no longer be retried

    def feed(self, response: pb.GenerateResponse) -> StreamDelta | None:
        self.answered = True
        self.request_id = response.request_id
        kind = response.WhichOneof("kind")
        if kind == "delta":
            delta = response.delta
            if not self.received.continues(delta):
                raise ServiceError(f"stream from {self.address} lost or repeated tokens: delta at offset "
                                   f"{delta.offset}, {len(self.received.token_ids)} tokens received", "DATA_LOSS")
            self.received.add(delta)
            if delta.logprobs:
                self.logprobs = (self.logprobs or []) + logprobs_from_proto(delta.logprobs)
            if delta.prompt_logprobs:
                self.prompt_logprobs = logprobs_from_proto(delta.prompt_logprobs)
            return StreamDelta(response.request_id, list(delta.token_ids), delta.text, delta.offset, delta.round,
                               list(delta.logprobs), list(delta.prompt_logprobs))
        if kind == "final":
            self.result = self._result(response.final)
        return None

    def check_complete(self) -> None:
        if self.result is None:
            raise ServiceError(f"the stream from {self.address} ended without a final message", "DATA_LOSS")

    def _result(self, final: pb.GenerateFinal) -> GenerateResult:
        t = final.timings
        n = len(self.received.token_ids)
        decode_time = t.total_s - t.time_to_first_token_s
        out = GenerateResult({
            "request_id": self.request_id,
            "prompt_token_ids": self.prompt_ids,
            "token_ids": list(self.received.token_ids),
            "text": self.received.text,
            "finish_reason": PROTO_TO_FINISH.get(final.finish_reason, ""),
            "timings": {
                "time_to_first_token_s": t.time_to_first_token_s,
                "total_s": t.total_s,
                "decode_tokens_per_s": (n - 1) / decode_time if n > 1 and decode_time > 0 else 0.0,
                "queue_s": t.queue_s,
            },
            "stats": speculation_from_proto(final.speculation),
            "usage": {"prompt_tokens": final.usage.prompt_tokens, "completion_tokens": final.usage.completion_tokens,
                      "total_tokens": final.usage.total_tokens},
        })
        if final.HasField("stop_token_id"):
            out["stop_token_id"] = final.stop_token_id
        out["stop_string"] = final.stop_string if final.HasField("stop_string") else None  # as the offline API
        out["logprobs"], out["prompt_logprobs"] = self.logprobs, self.prompt_logprobs  # likewise
        if final.error_message:
            out["error_message"] = final.error_message
        return out


class StreamBase:
    """What the sync and async streams share: the call, its retry and resume inputs and the
    accumulated output."""

    def __init__(self, stub: pb_grpc.InferenceStub, request: pb.GenerateRequest, settings: ClientSettings,
                 timeout: float | None, prompt_token_ids: list[int]):
        """``timeout``: seconds for the whole request (None: the client's)."""
        self._stub = stub
        self._request = request  # sent again, with ``resume`` set, after the stream broke off
        self._settings = settings
        self._timeout = settings.timeout if timeout is None else timeout  # named in a deadline error
        self._deadline = None if self._timeout is None else time.monotonic() + self._timeout
        self._metadata = settings.metadata()  # the caller's trace context, for every attempt
        self._state = StreamOutput(settings.address, prompt_token_ids)
        self._cancelled = False
        self._attempt = 1  # of the current submission (the first, or a resume)
        self.resumes = 0  # times the stream was resumed after its server went away
        self._call = self._start()

    request_id = property(lambda self: self._state.request_id)
    token_ids = property(lambda self: self._state.received.token_ids)
    result = property(lambda self: self._state.result)

    def _start(self):
        return self._stub.Generate(self._request, timeout=remaining(self._deadline), metadata=self._metadata or None)

    def _delay(self, exc: grpc.RpcError) -> float | None:
        """Seconds to wait before sending the request again after ``exc``, or None: give up.

        Before any response the request is retried (``retries``); once the stream began, a lost
        connection resumes it (``resumes``): the request goes out again with ``resume`` holding
        what arrived, so the server continues after it (no token repeats, the text continues).
        """
        if self._state.answered:
            if exc.code() not in RESUMABLE or self.resumes >= self._settings.resumes:
                return None
            self.resumes += 1
            self._request.resume.CopyFrom(self._state.received.resume())
            self._state.answered = False
            self._attempt = 1
            return 0.0
        delay = self._settings.retry_delay(exc, self._attempt, self._deadline)
        self._attempt += 1
        return delay

    def _error(self, exc: grpc.RpcError) -> ServiceError:
        return service_error(exc, self._settings.address, self._timeout)


class GenerateStream(StreamBase):
    """Iterate for ``StreamDelta``s; afterwards ``result`` holds the whole request's output.

    A failure before the first response is retried (see ``Client``); leaving the loop early or
    calling ``cancel`` cancels the call, which the server treats as ``Abort``."""

    def __iter__(self) -> Iterator[StreamDelta]:
        try:
            while True:
                try:
                    for response in self._call:
                        delta = self._state.feed(response)
                        if delta is not None:
                            yield delta
                    break
                except grpc.RpcError as exc:
                    if self._cancelled and exc.code() is grpc.StatusCode.CANCELLED:
                        return  # stopped on purpose: no result
                    delay = self._delay(exc)
                    if delay is None:
                        raise self._error(exc) from None
                    time.sleep(delay)
                    self._call = self._start()
            self._state.check_complete()
        finally:
            if self._state.result is None and not self._cancelled:
                self._call.cancel()  # abandoned: the server aborts the request

    def cancel(self) -> None:
        """Stop the request (the server aborts it, like Abort); iteration then ends, ``result`` stays None."""
        self._cancelled = True
        self._call.cancel()


class AsyncGenerateStream(StreamBase):
    """``async for`` over ``StreamDelta``s; afterwards ``result`` holds the output. Retries,
    ``cancel`` and early exit behave as in ``GenerateStream``; cancelling the task that reads
    the stream cancels the call too."""

    def __aiter__(self) -> AsyncIterator[StreamDelta]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamDelta]:
        try:
            while True:
                try:
                    async for response in self._call:
                        delta = self._state.feed(response)
                        if delta is not None:
                            yield delta
                    break
                except grpc.aio.AioRpcError as exc:
                    if self._cancelled and exc.code() is grpc.StatusCode.CANCELLED:
                        return
                    delay = self._delay(exc)
                    if delay is None:
                        raise self._error(exc) from None
                    await asyncio.sleep(delay)
                    self._call = self._start()
            self._state.check_complete()
        finally:
            if self._state.result is None and not self._call.done():
                self._call.cancel()

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()
