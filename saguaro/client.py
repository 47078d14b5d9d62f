"""Python clients for the public ``Inference`` gRPC API (the gateway, or one target service).

Synchronous::

    from saguaro.client import Client

    with Client("127.0.0.1:50050") as client:
        out = client.generate("def add(a, b):", max_tokens=32)
        print(out.text, out.finish_reason, out.usage, out.stats["tokens_per_round"])

        stream = client.stream("import os", max_tokens=64, stream_tokens_individually=True)
        for delta in stream:            # StreamDelta(token_ids, text, offset, round)
            print(delta.text, end="", flush=True)
            if "\\n" in delta.text:
                stream.cancel()         # the server aborts the request (its KV is freed)
        print(stream.result)            # None after a cancel

asyncio::

    from saguaro.client import AsyncClient

    async with AsyncClient("gateway.example.com:443", tls=True, api_key="sk-...") as client:
        out = await client.generate("def add(a, b):", max_tokens=32, timeout=30)
        async for delta in client.stream("import os", max_tokens=64):
            ...

``generate`` returns a ``GenerateResult``: the JSON object of ``saguaro generate --json`` (a
dict) with typed accessors (``text``, ``token_ids``, ``finish_reason``, ``usage``, ``stats``:
the request's speculation statistics, ``timings``). gRPC failures surface as ``ServiceError``
subclasses carrying the server's message and status code.

Both clients give every call a deadline (``timeout``: a whole Generate; ``call_timeout``: the
small calls), retry a request that failed *before its first token* because the server was
unreachable or overloaded (``retries``, honouring the server's ``retry-after``), resume a stream
whose server went away *after* it began (``resumes``: the request is sent again with the tokens
received so far, and continues exactly where it broke off), and send with
each call: ``authorization: Bearer <api_key>`` when an API key is set, and the W3C trace
context (``traceparent`` / ``tracestate``) of the current OpenTelemetry context when
``opentelemetry`` is installed. TLS: ``tls=True`` (system roots) or ``root_certificates``; mTLS:
add ``client_certificate`` and ``client_key`` (PEM bytes or file paths).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from saguaro.errors import InvalidRequestError, SaguaroError
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc
from saguaro.wire import MODE_TO_PROTO, PROTO_TO_FINISH, PROTO_TO_MODE, STATUS_NAMES, speculation_from_proto

DEFAULT_PORT = 50051  # a target service
GATEWAY_PORT = 50050  # the gateway (`saguaro up` / `saguaro gateway`)
MODES = {None: pb.DECODE_MODE_DEFAULT, **MODE_TO_PROTO}  # a request's mode; None: the server's
# Before the first token, these mean "not served": sending the request again is safe.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
# After it, this means the connection to the server was lost: the stream may be resumed.
RESUMABLE = (grpc.StatusCode.UNAVAILABLE,)


class ServiceError(SaguaroError):
    """A call to a Saguaro service failed; ``code`` is the gRPC status name and ``retry_after``
    the seconds the server asked to wait before retrying (None when it did not say)."""

    def __init__(self, message: str, code: str = "UNKNOWN", retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class InvalidArgumentError(ServiceError, InvalidRequestError):
    """The server refused the request (INVALID_ARGUMENT): the message says why."""


class ServiceUnavailableError(ServiceError):
    """The service cannot be reached, is overloaded, or did not answer in time."""


class AuthenticationError(ServiceError):
    """The server wants a (different) API key (UNAUTHENTICATED)."""


@dataclass
class StreamDelta:
    request_id: str
    token_ids: list[int]
    text: str  # "" while a multi-byte character is incomplete, or when the server has no tokenizer
    offset: int  # completion tokens before this delta
    round: int


class GenerateResult(dict):
    """One request's output: a JSON-ready dict (as ``saguaro generate --json`` prints it) with
    typed accessors."""

    @property
    def request_id(self) -> str:
        return self["request_id"]

    @property
    def text(self) -> str:
        return self["text"]

    @property
    def token_ids(self) -> list[int]:
        return self["token_ids"]

    @property
    def finish_reason(self) -> str:
        """"stop", "length", "abort" or "error" (then see ``self.get("error_message")``)."""
        return self["finish_reason"]

    @property
    def usage(self) -> dict[str, int]:
        """``prompt_tokens``, ``completion_tokens``, ``total_tokens`` (tokens, not messages)."""
        return self["usage"]

    @property
    def stats(self) -> dict[str, Any]:
        """Speculation statistics (see ``saguaro.wire.speculation_from_proto``)."""
        return self["stats"]

    @property
    def timings(self) -> dict[str, float]:
        return self["timings"]


def _retry_after(exc: grpc.RpcError) -> float | None:
    try:
        trailers = exc.trailing_metadata() or ()
    except Exception:  # not a call error (no trailers)
        return None
    for key, value in trailers:
        if key == "retry-after":
            try:
                return float(value)
            except ValueError:
                return None
    return None


def _error(exc: grpc.RpcError, address: str, timeout: float | None) -> ServiceError:
    code, details = exc.code(), exc.details() or ""
    retry_after = _retry_after(exc)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(details, code.name)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(f"{address} refused the credentials: {details}", code.name)
    if code is grpc.StatusCode.UNAVAILABLE:
        return ServiceUnavailableError(f"cannot reach the Saguaro service at {address}: {details}", code.name,
                                       retry_after)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServiceUnavailableError(f"no complete answer from {address} within {timeout} s", code.name)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ServiceUnavailableError(f"the service at {address} is overloaded: {details}", code.name, retry_after)
    return ServiceError(f"{code.name} from {address}: {details}", code.name)


def _health(r: pb.HealthResponse) -> dict[str, Any]:
    return {"status": STATUS_NAMES.get(r.status, "unknown"), "draft_connected": r.draft_connected,
            "mode": PROTO_TO_MODE.get(r.mode, ""), "message": r.message}


def _load(r: pb.HealthResponse) -> dict[str, Any]:
    return {"num_running": r.num_running, "num_waiting": r.num_waiting, "kv_cache_usage": r.kv_cache_usage,
            "max_num_seqs": r.max_num_seqs, "prefix_cache_queried_tokens": r.prefix_cache_queried_tokens,
            "prefix_cache_hit_tokens": r.prefix_cache_hit_tokens}


def _model_info(r: pb.ModelInfoResponse) -> dict[str, Any]:
    return {
        "model_name": r.model_name, "architecture": r.architecture, "vocab_size": r.vocab_size,
        "max_model_len": r.max_model_len, "dtype": r.dtype, "decode_mode": PROTO_TO_MODE.get(r.decode_mode, ""),
        "lookahead_k": r.lookahead_k, "fan_out": r.fan_out, "fan_out_list": list(r.fan_out_list),
        "draft_model_name": r.draft_model_name, "has_tokenizer": r.has_tokenizer,
        "eos_token_ids": list(r.eos_token_ids),
    }


def _generate_request(
    prompt: str | list[int],
    *,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop_token_ids: list[int] | tuple[int, ...] = (),
    ignore_eos: bool = False,
    draft_temperature: float | None = None,
    mode: str | None = None,
    request_id: str = "",
    stream_tokens_individually: bool = False,
) -> tuple[pb.GenerateRequest, list[int]]:
    """The GenerateRequest of ``Client.stream``'s options, and the prompt ids (empty for text)."""
    if mode not in MODES:
        raise InvalidRequestError(f"mode must be one of ar, sd, ssd (or None for the server's), got {mode!r}")
    try:
        sampling = pb.SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k,
                                     stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos)
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        if seed is not None:
            sampling.seed = seed
        if draft_temperature is not None:
            sampling.draft_temperature = draft_temperature
        request = pb.GenerateRequest(request_id=request_id, sampling=sampling, decode_mode=MODES[mode],
                                     stream_tokens_individually=stream_tokens_individually)
        if isinstance(prompt, str):
            request.prompt_text = prompt
            return request, []
        prompt_ids = [int(t) for t in prompt]
        request.prompt_token_ids.ids.extend(prompt_ids)
    except (ValueError, TypeError) as exc:  # e.g. a value out of range for its protobuf field
        raise InvalidRequestError(f"invalid request: {exc}") from None
    return request, prompt_ids


class _Accumulator:
    """Turns Generate responses into deltas and, at the final message, the result."""

    def __init__(self, address: str, prompt_ids: list[int]):
        self.address = address
        self.prompt_ids = prompt_ids
        self.request_id = ""
        self.token_ids: list[int] = []
        self.text: list[str] = []
        self.result: GenerateResult | None = None
        self.received = False  # a response arrived: the request may no longer be retried

    def feed(self, response: pb.GenerateResponse) -> StreamDelta | None:
        self.received = True
        self.request_id = response.request_id
        kind = response.WhichOneof("kind")
        if kind == "delta":
            delta = response.delta
            if delta.offset != len(self.token_ids):
                raise ServiceError(f"stream from {self.address} lost or repeated tokens: delta at offset "
                                   f"{delta.offset}, {len(self.token_ids)} tokens received", "DATA_LOSS")
            self.token_ids.extend(delta.token_ids)
            self.text.append(delta.text)
            return StreamDelta(response.request_id, list(delta.token_ids), delta.text, delta.offset, delta.round)
        if kind == "final":
            self.result = self._result(response.final)
        return None

    def resume(self) -> pb.Resume:
        """What was received, for a request sent again after its stream broke off."""
        return pb.Resume(token_ids=self.token_ids, text="".join(self.text))

    def check_complete(self) -> None:
        if self.result is None:
            raise ServiceError(f"the stream from {self.address} ended without a final message", "DATA_LOSS")

    def _result(self, final: pb.GenerateFinal) -> GenerateResult:
        t = final.timings
        n = len(self.token_ids)
        decode_time = t.total_s - t.time_to_first_token_s
        out = GenerateResult({
            "request_id": self.request_id,
            "prompt_token_ids": self.prompt_ids,
            "token_ids": list(self.token_ids),
            "text": "".join(self.text),
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
        if final.error_message:
            out["error_message"] = final.error_message
        return out


def _read_pem(value: bytes | str | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _trace_context() -> list[tuple[str, str]]:
    """``traceparent`` / ``tracestate`` of the current OpenTelemetry context (none without it)."""
    try:
        from opentelemetry import propagate
    except ImportError:
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


class _Settings:
    """What the sync and async clients share: address, credentials, deadlines, retry policy."""

    def __init__(self, address: str, timeout: float | None, call_timeout: float, api_key: str | None, tls: bool,
                 root_certificates: bytes | str | None, client_certificate: bytes | str | None,
                 client_key: bytes | str | None, retries: int, retry_backoff_s: float, max_retry_delay_s: float,
                 resumes: int):
        self.address = address
        self.timeout = timeout
        self.call_timeout = call_timeout
        self.api_key = api_key
        self.retries = retries
        self.resumes = resumes
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_delay_s = max_retry_delay_s
        self.credentials = None
        if tls or root_certificates or client_certificate:
            self.credentials = grpc.ssl_channel_credentials(_read_pem(root_certificates), _read_pem(client_key),
                                                            _read_pem(client_certificate))

    def metadata(self) -> list[tuple[str, str]]:
        out = [("authorization", f"Bearer {self.api_key}")] if self.api_key else []
        return out + _trace_context()

    def retry_delay(self, exc: grpc.RpcError, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None: do not retry."""
        if exc.code() not in RETRYABLE or attempt > self.retries:
            return None
        delay = self.retry_backoff_s * 2 ** (attempt - 1)
        hint = _retry_after(exc)
        if hint is not None:
            delay = max(delay, hint)
        delay = min(delay, self.max_retry_delay_s)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class _StreamBase:
    """What the sync and async streams share: the call, its retry and resume inputs and the
    accumulated output."""

    def __init__(self, stub: pb_grpc.InferenceStub, request: pb.GenerateRequest, settings: _Settings,
                 timeout: float | None, prompt_token_ids: list[int]):
        """``timeout``: seconds for the whole request (None: the client's)."""
        self._stub = stub
        self._request = request  # sent again, with ``resume`` set, after the stream broke off
        self._settings = settings
        self._timeout = settings.timeout if timeout is None else timeout  # named in a deadline error
        self._deadline = None if self._timeout is None else time.monotonic() + self._timeout
        self._metadata = settings.metadata()  # the caller's trace context, for every attempt
        self._state = _Accumulator(settings.address, prompt_token_ids)
        self._cancelled = False
        self._attempt = 1  # of the current submission (the first, or a resume)
        self.resumes = 0  # times the stream was resumed after its server went away
        self._call = self._start()

    request_id = property(lambda self: self._state.request_id)
    token_ids = property(lambda self: self._state.token_ids)
    result = property(lambda self: self._state.result)

    def _start(self):
        return self._stub.Generate(self._request, timeout=_remaining(self._deadline), metadata=self._metadata or None)

    def _delay(self, exc: grpc.RpcError) -> float | None:
        """Seconds to wait before sending the request again after ``exc``, or None: give up.

        Before any response the request is retried (``retries``); once the stream began, a lost
        connection resumes it (``resumes``): the request goes out again with ``resume`` holding
        what arrived, so the server continues after it (no token repeats, the text continues).
        """
        if self._state.received:
            if exc.code() not in RESUMABLE or self.resumes >= self._settings.resumes:
                return None
            self.resumes += 1
            self._request.resume.CopyFrom(self._state.resume())
            self._state.received = False
            self._attempt = 1
            return 0.0
        delay = self._settings.retry_delay(exc, self._attempt, self._deadline)
        self._attempt += 1
        return delay


class GenerateStream(_StreamBase):
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
                        raise _error(exc, self._settings.address, self._timeout) from None
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


class Client:
    """A connection to a Saguaro inference endpoint ("host:port" or "unix:/path").

    ``timeout`` (seconds) is the default deadline of a whole Generate call (retries included);
    ``call_timeout`` that of the small calls (Abort, Health, ModelInfo). ``retries``: extra
    attempts for a request refused before its first token (UNAVAILABLE, RESOURCE_EXHAUSTED),
    after ``retry_backoff_s`` doubling per attempt or the server's ``retry-after``, capped at
    ``max_retry_delay_s``. ``resumes``: times a stream that lost its server after it began
    (UNAVAILABLE) is sent again with ``resume`` = what arrived, continuing where it broke off
    (each such submission retried like a new request; 0: never). ``api_key``: sent as
    ``authorization: Bearer``. TLS: see the module.
    """

    def __init__(self, address: str, timeout: float | None = 600.0, call_timeout: float = 10.0, *,
                 api_key: str | None = None, tls: bool = False, root_certificates: bytes | str | None = None,
                 client_certificate: bytes | str | None = None, client_key: bytes | str | None = None,
                 retries: int = 2, retry_backoff_s: float = 0.1, max_retry_delay_s: float = 5.0, resumes: int = 2):
        self._settings = _Settings(address, timeout, call_timeout, api_key, tls, root_certificates,
                                   client_certificate, client_key, retries, retry_backoff_s, max_retry_delay_s, resumes)
        self.address = address
        self.timeout = timeout
        self.call_timeout = call_timeout
        credentials = self._settings.credentials
        self._channel = (grpc.secure_channel(address, credentials) if credentials is not None
                         else grpc.insecure_channel(address))
        self._stub = pb_grpc.InferenceStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- Generate ------------------------------------------------------------------------------
    def stream(self, prompt: str | list[int], *, timeout: float | None = None, **options: Any) -> GenerateStream:
        """Start a request; iterate the result for deltas. Options: ``max_tokens`` (None: the
        server's default), ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop_token_ids``,
        ``ignore_eos``, ``draft_temperature``, ``mode`` ("ar" opts out of speculation; "sd",
        "ssd"), ``request_id`` (for ``abort``), ``stream_tokens_individually``; ``timeout``
        overrides the client's deadline."""
        request, prompt_ids = _generate_request(prompt, **options)
        return GenerateStream(self._stub, request, self._settings, timeout, prompt_ids)

    def generate(self, prompt: str | list[int], **options: Any) -> GenerateResult:
        """Run one request to completion (same options as ``stream``)."""
        stream = self.stream(prompt, **options)
        for _ in stream:
            pass
        return stream.result

    # -- small calls ---------------------------------------------------------------------------
    def _unary(self, method, request, timeout: float | None):
        deadline = self.call_timeout if timeout is None else timeout
        try:
            return method(request, timeout=deadline, metadata=self._settings.metadata() or None)
        except grpc.RpcError as exc:
            raise _error(exc, self.address, deadline) from None

    def abort(self, request_id: str, timeout: float | None = None) -> bool:
        """True if the request was running (its stream ends with finish_reason "abort")."""
        return self._unary(self._stub.Abort, pb.AbortRequest(request_id=request_id), timeout).found

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        """Status, mode and whether the draft is connected."""
        return _health(self._unary(self._stub.Health, pb.HealthRequest(), timeout))

    def load(self, timeout: float | None = None) -> dict[str, Any]:
        """Load from Health: running and waiting requests, KV-cache usage, prefix-cache counters
        (a gateway sums its healthy targets')."""
        return _load(self._unary(self._stub.Health, pb.HealthRequest(), timeout))

    def model_info(self, timeout: float | None = None) -> dict[str, Any]:
        return _model_info(self._unary(self._stub.ModelInfo, pb.ModelInfoRequest(), timeout))

    def wait_until_ready(self, timeout: float = 60.0, want: tuple[str, ...] = ("serving",)) -> dict[str, Any]:
        """Poll Health until its status is in ``want``; raises ServiceUnavailableError on timeout."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | str = "no answer"
        while True:
            try:
                health = self.health(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                if health["status"] in want:
                    return health
                last = health
            except ServiceError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise ServiceUnavailableError(f"{self.address} is not ready after {timeout:.0f} s (last health: {last})",
                                              "UNAVAILABLE")
            time.sleep(0.1)


class AsyncGenerateStream(_StreamBase):
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
                        raise _error(exc, self._settings.address, self._timeout) from None
                    await asyncio.sleep(delay)
                    self._call = self._start()
            self._state.check_complete()
        finally:
            if self._state.result is None and not self._call.done():
                self._call.cancel()

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()


class AsyncClient:
    """The asyncio client: same options and results as ``Client``, awaitable calls. Create it
    inside the event loop that uses it."""

    def __init__(self, address: str, timeout: float | None = 600.0, call_timeout: float = 10.0, *,
                 api_key: str | None = None, tls: bool = False, root_certificates: bytes | str | None = None,
                 client_certificate: bytes | str | None = None, client_key: bytes | str | None = None,
                 retries: int = 2, retry_backoff_s: float = 0.1, max_retry_delay_s: float = 5.0, resumes: int = 2):
        self._settings = _Settings(address, timeout, call_timeout, api_key, tls, root_certificates,
                                   client_certificate, client_key, retries, retry_backoff_s, max_retry_delay_s, resumes)
        self.address = address
        credentials = self._settings.credentials
        self._channel = (grpc.aio.secure_channel(address, credentials) if credentials is not None
                         else grpc.aio.insecure_channel(address))
        self._stub = pb_grpc.InferenceStub(self._channel)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def stream(self, prompt: str | list[int], *, timeout: float | None = None, **options: Any) -> AsyncGenerateStream:
        """Start a request (options as ``Client.stream``); ``async for`` the result for deltas."""
        request, prompt_ids = _generate_request(prompt, **options)
        return AsyncGenerateStream(self._stub, request, self._settings, timeout, prompt_ids)

    async def generate(self, prompt: str | list[int], **options: Any) -> GenerateResult:
        stream = self.stream(prompt, **options)
        async for _ in stream:
            pass
        return stream.result

    async def _unary(self, method, request, timeout: float | None):
        deadline = self._settings.call_timeout if timeout is None else timeout
        try:
            return await method(request, timeout=deadline, metadata=self._settings.metadata() or None)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, self.address, deadline) from None

    async def abort(self, request_id: str, timeout: float | None = None) -> bool:
        return (await self._unary(self._stub.Abort, pb.AbortRequest(request_id=request_id), timeout)).found

    async def health(self, timeout: float | None = None) -> dict[str, Any]:
        return _health(await self._unary(self._stub.Health, pb.HealthRequest(), timeout))

    async def load(self, timeout: float | None = None) -> dict[str, Any]:
        return _load(await self._unary(self._stub.Health, pb.HealthRequest(), timeout))

    async def model_info(self, timeout: float | None = None) -> dict[str, Any]:
        return _model_info(await self._unary(self._stub.ModelInfo, pb.ModelInfoRequest(), timeout))
