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
from saguaro.client.requests import PreparedRequest
from saguaro.client.results import GenerateResult, StreamDelta, Timings, TokenLogprob, Usage
from saguaro.client.settings import RESUMABLE, ClientSettings, remaining
from saguaro.resume import ReceivedOutput
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc
from saguaro.wire import PROTO_TO_FINISH, speculation_from_proto


class ChoiceOutput:
    """One choice's output as it arrives: its tokens and text (what a resume sends), its log
    probabilities, and at its final message, its result."""

    def __init__(self) -> None:
        self.received = ReceivedOutput()  # kept across resumes: what the next resume sends
        # None: not asked for; kept across resumes with the tokens
        self.logprobs: list[TokenLogprob] | None = None
        self.prompt_logprobs: list[TokenLogprob] | None = None
        self.result: GenerateResult | None = None


class StreamOutput:
    """Turns Generate responses into deltas and, at each choice's final message, its result."""

    def __init__(self, address: str, prompt_ids: list[int], n: int):
        self.address = address
        self.prompt_ids = prompt_ids
        self.n = n
        self.request_id = ""
        self.choices = [ChoiceOutput() for _ in range(n)]
        self.answered = False  # a response arrived: the request may no longer be retried

    @property
    def received(self) -> ReceivedOutput:
        """What the (one) choice received: a resume continues a request of one choice only."""
        return self.choices[0].received

    @property
    def results(self) -> list[GenerateResult] | None:
        """Every choice's result, in index order, once all have finished (else None)."""
        if any(c.result is None for c in self.choices):
            return None
        return [c.result for c in self.choices]

    def feed(self, response: pb.GenerateResponse) -> StreamDelta | None:
        self.answered = True
        self.request_id = response.request_id
        if response.index >= self.n:
            raise ServiceError(f"the stream from {self.address} sent choice {response.index} of a request for "
                               f"{self.n}", "DATA_LOSS")
        choice = self.choices[response.index]
        kind = response.WhichOneof("kind")
        if kind == "delta":
            delta = response.delta
            if not choice.received.continues(delta):
                raise ServiceError(f"stream from {self.address} lost or repeated tokens: delta at offset "
                                   f"{delta.offset}, {len(choice.received.token_ids)} tokens received", "DATA_LOSS")
            choice.received.add(delta)
            logprobs = TokenLogprob.from_proto(delta.logprobs)
            prompt_logprobs = TokenLogprob.from_proto(delta.prompt_logprobs)
            if logprobs:
                choice.logprobs = (choice.logprobs or []) + logprobs
            if prompt_logprobs:
                choice.prompt_logprobs = prompt_logprobs
            return StreamDelta(response.request_id, list(delta.token_ids), delta.text, delta.offset, delta.round,
                               logprobs, prompt_logprobs, response.index)
        if kind == "final":
            choice.result = self._result(choice, response.final, response.index)
        return None

    def check_complete(self) -> None:
        if self.results is None:
            missing = sum(c.result is None for c in self.choices)
            raise ServiceError(f"the stream from {self.address} ended without a final message ({missing} of "
                               f"{self.n} choices missing one)", "DATA_LOSS")

    def _result(self, choice: ChoiceOutput, final: pb.GenerateFinal, index: int) -> GenerateResult:
        tokens = list(choice.received.token_ids)
        return GenerateResult(
            request_id=self.request_id, prompt_token_ids=self.prompt_ids, token_ids=tokens,
            text=choice.received.text, finish_reason=PROTO_TO_FINISH.get(final.finish_reason, ""),
            timings=Timings.from_proto(final.timings, len(tokens)), stats=speculation_from_proto(final.speculation),
            usage=Usage.from_proto(final.usage),
            stop_token_id=final.stop_token_id if final.HasField("stop_token_id") else None,
            stop_string=final.stop_string if final.HasField("stop_string") else None,
            logprobs=choice.logprobs, prompt_logprobs=choice.prompt_logprobs, error_message=final.error_message,
            index=index if self.n > 1 else None)


class StreamBase:
    """What the sync and async streams share: the call, its retry and resume inputs and the
    accumulated output."""

    def __init__(self, stub: pb_grpc.InferenceStub, prepared: PreparedRequest, settings: ClientSettings):
        self._stub = stub
        self._request = prepared.request  # sent again, with ``resume`` set, after the stream broke off
        self._settings = settings
        # seconds for the whole request (None: the client's), named in a deadline error
        self._timeout = settings.timeout if prepared.timeout is None else prepared.timeout
        self._deadline = None if self._timeout is None else time.monotonic() + self._timeout
        self._metadata = settings.metadata()  # the caller's trace context, for every attempt
        self._state = StreamOutput(settings.address, prepared.prompt_ids, prepared.n)
        self._cancelled = False
        self._attempt = 1  # of the current submission (the first, or a resume)
        self.resumes = 0  # times the stream was resumed after its server went away
        self._call = self._start()

    request_id = property(lambda self: self._state.request_id)
    token_ids = property(lambda self: self._state.received.token_ids)  # received so far (choice 0's)

    @property
    def results(self) -> list[GenerateResult] | None:
        """Every choice's result in index order once the stream is complete; None before, or
        after a cancel."""
        return self._state.results

    @property
    def result(self) -> GenerateResult | list[GenerateResult] | None:
        """What ``generate`` returns: the result (a request for n > 1 choices: the list of them);
        None before the stream is complete, or after a cancel."""
        results = self._state.results
        return results if results is None or self._state.n > 1 else results[0]

    def _start(self):
        return self._stub.Generate(self._request, timeout=remaining(self._deadline), metadata=self._metadata or None)

    def _delay(self, exc: grpc.RpcError) -> float | None:
        """Seconds to wait before sending the request again after ``exc``, or None: give up.

        Before any response the request is retried (``retries``); once the stream began, a lost
        connection resumes it (``resumes``): the request goes out again with ``resume`` holding
        what arrived, so the server continues after it (no token repeats, the text continues).
        """
        if self._state.answered:  # (a resume continues one choice: a request for several is not resumed)
            if exc.code() not in RESUMABLE or self.resumes >= self._settings.resumes or self._state.n > 1:
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
            if self._state.results is None and not self._cancelled:
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
            if self._state.results is None and not self._call.done():
                self._call.cancel()

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()
