"""A small Python client for the public ``Inference`` API (a target service or, later, the gateway).

    with Client("127.0.0.1:50051") as client:
        out = client.generate("def add(a, b):", max_tokens=32)
        print(out["text"], out["stats"]["tokens_per_round"])

``generate`` returns the same JSON object as ``saguaro generate --json`` (and
``saguaro.llm.RequestOutput.to_json()``), with the request's speculation statistics in
``stats``. gRPC failures surface as ``ServiceError`` subclasses carrying the server's message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from saguaro.errors import InvalidRequestError, SaguaroError
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc

DEFAULT_PORT = 50051
MODES = {None: pb.DECODE_MODE_DEFAULT, "ar": pb.DECODE_MODE_AR, "sd": pb.DECODE_MODE_SD, "ssd": pb.DECODE_MODE_SSD}
_MODE_NAMES = {v: k for k, v in MODES.items() if k}
_FINISH = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_ABORT: "abort",
           pb.FINISH_REASON_ERROR: "error"}
_STATUS = {pb.SERVING_STATUS_SERVING: "serving", pb.SERVING_STATUS_DEGRADED: "degraded",
           pb.SERVING_STATUS_NOT_SERVING: "not_serving"}


class ServiceError(SaguaroError):
    """A call to a Saguaro service failed; ``code`` is the gRPC status name."""

    def __init__(self, message: str, code: str = "UNKNOWN"):
        super().__init__(message)
        self.code = code


class InvalidArgumentError(ServiceError, InvalidRequestError):
    """The server refused the request (INVALID_ARGUMENT): the message says why."""


class ServiceUnavailableError(ServiceError):
    """The service cannot be reached, is overloaded, or did not answer in time."""


@dataclass
class StreamDelta:
    request_id: str
    token_ids: list[int]
    text: str  # "" while a multi-byte character is incomplete, or when the server has no tokenizer
    offset: int  # completion tokens before this delta
    round: int


def _error(exc: grpc.RpcError, address: str, timeout: float | None) -> ServiceError:
    code, details = exc.code(), exc.details() or ""
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(details, code.name)
    if code is grpc.StatusCode.UNAVAILABLE:
        return ServiceUnavailableError(f"cannot reach the Saguaro service at {address}: {details}", code.name)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServiceUnavailableError(f"no complete answer from {address} within {timeout} s", code.name)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ServiceUnavailableError(f"the service at {address} is overloaded: {details}", code.name)
    return ServiceError(f"{code.name} from {address}: {details}", code.name)


def speculation_stats(spec: pb.SpeculationStats) -> dict[str, Any]:
    """SpeculationStats as a dict, keyed like the engine's per-request stats."""
    k = spec.lookahead_k
    accepted = list(spec.accepted_per_position)
    spec_rounds = spec.draft_tokens // k if k else 0
    lookups = spec.cache_hits + spec.cache_misses
    return {
        "mode": _MODE_NAMES.get(spec.decode_mode, "ar"),
        "transport": spec.transport,
        "rounds": spec.rounds,
        "spec_rounds": spec_rounds,
        "lookahead_k": k,
        "tokens_per_round": spec.mean_tokens_per_round,
        "tokens_per_round_histogram": list(spec.tokens_per_round_histogram),
        "accepted_per_position": accepted,
        "acceptance_per_position": [a / spec_rounds for a in accepted] if spec_rounds else [],
        "draft_tokens": spec.draft_tokens,
        "accepted_draft_tokens": spec.accepted_draft_tokens,
        "cache_hits": spec.cache_hits,
        "cache_misses": spec.cache_misses,
        "cache_hit_rate": spec.cache_hits / lookups if lookups else 0.0,
        "backups_jit": spec.jit_backups,
        "backups_fast": spec.fast_backups,
        "ar_fallbacks": spec.ar_fallbacks,
        "fallback_rounds": spec.ar_fallback_rounds,
        "draft_time_s": spec.draft_time_s,
        "verify_time_s": spec.verify_time_s,
        "draft_build_time_s": spec.draft_build_time_s,
    }


class GenerateStream:
    """Iterate for ``StreamDelta``s; afterwards ``result`` holds the whole request's output."""

    def __init__(self, call, address: str, timeout: float | None, prompt_token_ids: list[int]):
        self._call = call
        self._address = address
        self._timeout = timeout
        self._prompt = prompt_token_ids
        self.request_id = ""
        self.token_ids: list[int] = []
        self._text: list[str] = []
        self.result: dict[str, Any] | None = None
        self._cancelled = False

    def __iter__(self) -> Iterator[StreamDelta]:
        try:
            for response in self._call:
                self.request_id = response.request_id
                if response.WhichOneof("kind") == "delta":
                    delta = response.delta
                    if delta.offset != len(self.token_ids):
                        raise ServiceError(f"stream from {self._address} lost or repeated tokens: delta at offset "
                                           f"{delta.offset}, {len(self.token_ids)} tokens received", "DATA_LOSS")
                    self.token_ids.extend(delta.token_ids)
                    self._text.append(delta.text)
                    yield StreamDelta(response.request_id, list(delta.token_ids), delta.text, delta.offset, delta.round)
                elif response.WhichOneof("kind") == "final":
                    self.result = self._result(response.final)
        except grpc.RpcError as exc:
            if self._cancelled and exc.code() is grpc.StatusCode.CANCELLED:
                return  # stopped on purpose: no result
            raise _error(exc, self._address, self._timeout) from None
        if self.result is None:
            raise ServiceError(f"the stream from {self._address} ended without a final message", "DATA_LOSS")

    def cancel(self) -> None:
        """Stop the request (the server aborts it, like Abort); iteration then ends, ``result`` stays None."""
        self._cancelled = True
        self._call.cancel()

    def _result(self, final: pb.GenerateFinal) -> dict[str, Any]:
        t = final.timings
        n = len(self.token_ids)
        decode_time = t.total_s - t.time_to_first_token_s
        out = {
            "request_id": self.request_id,
            "prompt_token_ids": self._prompt,
            "token_ids": list(self.token_ids),
            "text": "".join(self._text),
            "finish_reason": _FINISH.get(final.finish_reason, ""),
            "timings": {
                "time_to_first_token_s": t.time_to_first_token_s,
                "total_s": t.total_s,
                "decode_tokens_per_s": (n - 1) / decode_time if n > 1 and decode_time > 0 else 0.0,
                "queue_s": t.queue_s,
            },
            "stats": speculation_stats(final.speculation),
            "usage": {"prompt_tokens": final.usage.prompt_tokens, "completion_tokens": final.usage.completion_tokens,
                      "total_tokens": final.usage.total_tokens},
        }
        if final.HasField("stop_token_id"):
            out["stop_token_id"] = final.stop_token_id
        if final.error_message:
            out["error_message"] = final.error_message
        return out


class Client:
    """A connection to a Saguaro inference endpoint ("host:port" or "unix:/path").

    ``timeout`` (seconds) is the default deadline of a whole Generate call; ``call_timeout``
    that of the small calls (Abort, Health, ModelInfo).
    """

    def __init__(self, address: str, timeout: float | None = 600.0, call_timeout: float = 10.0):
        self.address = address
        self.timeout = timeout
        self.call_timeout = call_timeout
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.InferenceStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- Generate ------------------------------------------------------------------------------
    def stream(
        self,
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
        timeout: float | None = None,
    ) -> GenerateStream:
        """Start a request; iterate the result for deltas. ``mode="ar"`` opts out of speculation.
        ``max_tokens=None`` leaves the server's default (64)."""
        if mode not in MODES:
            raise InvalidRequestError(f"mode must be one of ar, sd, ssd (or None for the server's), got {mode!r}")
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
            prompt_ids: list[int] = []
        else:
            prompt_ids = [int(t) for t in prompt]
            request.prompt_token_ids.ids.extend(prompt_ids)
        deadline = self.timeout if timeout is None else timeout
        try:
            call = self._stub.Generate(request, timeout=deadline)
        except ValueError as exc:  # e.g. a value out of range for its protobuf field
            raise InvalidRequestError(f"invalid request: {exc}") from None
        return GenerateStream(call, self.address, deadline, prompt_ids)

    def generate(self, prompt: str | list[int], **options: Any) -> dict[str, Any]:
        """Run one request to completion (same options as ``stream``); returns its JSON dict."""
        stream = self.stream(prompt, **options)
        for _ in stream:
            pass
        return stream.result

    # -- small calls ---------------------------------------------------------------------------
    def _unary(self, method, request, timeout: float | None):
        deadline = self.call_timeout if timeout is None else timeout
        try:
            return method(request, timeout=deadline)
        except grpc.RpcError as exc:
            raise _error(exc, self.address, deadline) from None

    def abort(self, request_id: str, timeout: float | None = None) -> bool:
        """True if the request was running (its stream ends with finish_reason "abort")."""
        return self._unary(self._stub.Abort, pb.AbortRequest(request_id=request_id), timeout).found

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        r = self._unary(self._stub.Health, pb.HealthRequest(), timeout)
        return {"status": _STATUS.get(r.status, "unknown"), "draft_connected": r.draft_connected,
                "mode": _MODE_NAMES.get(r.mode, ""), "message": r.message}

    def model_info(self, timeout: float | None = None) -> dict[str, Any]:
        r = self._unary(self._stub.ModelInfo, pb.ModelInfoRequest(), timeout)
        return {
            "model_name": r.model_name, "architecture": r.architecture, "vocab_size": r.vocab_size,
            "max_model_len": r.max_model_len, "dtype": r.dtype, "decode_mode": _MODE_NAMES.get(r.decode_mode, ""),
            "lookahead_k": r.lookahead_k, "fan_out": r.fan_out, "fan_out_list": list(r.fan_out_list),
            "draft_model_name": r.draft_model_name, "has_tokenizer": r.has_tokenizer,
            "eos_token_ids": list(r.eos_token_ids),
        }

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
