"""The blocking client: ``Client`` (see the package docstring and docs/client.md)."""

from __future__ import annotations

import time

import grpc

from saguaro.client.errors import ServiceError, ServiceUnavailableError, service_error
from saguaro.client.requests import PreparedRequest, takes_request_options
from saguaro.client.results import GenerateResult, Health, Load, ModelInfo
from saguaro.client.settings import ClientBase
from saguaro.client.streams import GenerateStream
from saguaro.v1 import inference_pb2 as pb


class Client(ClientBase):
    """A connection to a Saguaro inference endpoint ("host:port" or "unix:/path").

    ``timeout`` (seconds) is the default deadline of a whole Generate call (retries included);
    ``call_timeout`` that of the small calls (Abort, Health, ModelInfo). ``retries``: extra
    attempts for a request refused before its first token (UNAVAILABLE, RESOURCE_EXHAUSTED),
    after ``retry_backoff_s`` doubling per attempt or the server's ``retry-after``, capped at
    ``max_retry_delay_s``. ``resumes``: times a stream that lost its server after it began
    (UNAVAILABLE) is sent again with ``resume`` = what arrived, continuing where it broke off
    (each such submission retried like a new request; 0: never). ``api_key``: sent as
    ``authorization: Bearer``. TLS: see the package docstring.
    """

    @staticmethod
    def _open_channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
        return grpc.secure_channel(address, credentials) if credentials is not None else grpc.insecure_channel(address)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- Generate ------------------------------------------------------------------------------
    @takes_request_options
    def stream(self, prepared: PreparedRequest) -> GenerateStream:
        """Start a request; iterate the returned stream for ``StreamDelta``s, then read its ``result``."""
        return GenerateStream(self._stub, prepared, self._settings)

    @takes_request_options
    def generate(self, prepared: PreparedRequest) -> GenerateResult | list[GenerateResult]:
        """Run one request to completion: its ``GenerateResult`` (n > 1: the n choices' results, in
        index order)."""
        stream = GenerateStream(self._stub, prepared, self._settings)
        for _ in stream:
            pass
        return stream.result

    # -- small calls ---------------------------------------------------------------------------
    def _unary(self, method, request, timeout: float | None):
        deadline = self.call_timeout if timeout is None else timeout
        try:
            return method(request, timeout=deadline, metadata=self._settings.metadata() or None)
        except grpc.RpcError as exc:
            raise service_error(exc, self.address, deadline) from None

    def abort(self, request_id: str, timeout: float | None = None) -> bool:
        """True if the request was running (its stream ends with finish_reason "abort")."""
        return self._unary(self._stub.Abort, pb.AbortRequest(request_id=request_id), timeout).found

    def health(self, timeout: float | None = None) -> Health:
        """Status, mode and whether the draft is connected."""
        return Health.from_proto(self._unary(self._stub.Health, pb.HealthRequest(), timeout))

    def load(self, timeout: float | None = None) -> Load:
        """Load from Health: running and waiting requests, KV-cache usage, prefix-cache counters
        (a gateway sums its healthy targets')."""
        return Load.from_proto(self._unary(self._stub.Health, pb.HealthRequest(), timeout))

    def model_info(self, timeout: float | None = None) -> ModelInfo:
        return ModelInfo.from_proto(self._unary(self._stub.ModelInfo, pb.ModelInfoRequest(), timeout))

    def wait_until_ready(self, timeout: float = 60.0, want: tuple[str, ...] = ("serving",)) -> Health:
        """Poll Health until its status is in ``want``; raises ServiceUnavailableError on timeout."""
        deadline = time.monotonic() + timeout
        last: Health | str = "no answer"
        while True:
            try:
                health = self.health(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                if health.status in want:
                    return health
                last = health
            except ServiceError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise ServiceUnavailableError(f"{self.address} is not ready after {timeout:.0f} s (last health: {last})",
                                              "UNAVAILABLE")
            time.sleep(0.1)
