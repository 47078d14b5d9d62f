"""The asyncio client: ``AsyncClient`` (same options and results as ``Client``)."""

from __future__ import annotations

from typing import Any

import grpc

from saguaro.client.errors import service_error
from saguaro.client.requests import generate_request
from saguaro.client.results import GenerateResult, health_json, load_json, model_info_json
from saguaro.client.settings import ClientSettings
from saguaro.client.streams import AsyncGenerateStream
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc


class AsyncClient:
    """The asyncio client: same options and results as ``Client``, awaitable calls. Create it
    inside the event loop that uses it."""

    def __init__(self, address: str, timeout: float | None = 600.0, call_timeout: float = 10.0, *,
                 api_key: str | None = None, tls: bool = False, root_certificates: bytes | str | None = None,
                 client_certificate: bytes | str | None = None, client_key: bytes | str | None = None,
                 retries: int = 2, retry_backoff_s: float = 0.1, max_retry_delay_s: float = 5.0, resumes: int = 2):
        self._settings = ClientSettings(address, timeout, call_timeout, api_key, tls, root_certificates,
                                        client_certificate, client_key, retries, retry_backoff_s, max_retry_delay_s,
                                        resumes)
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
        request, prompt_ids = generate_request(prompt, **options)
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
            raise service_error(exc, self.address, deadline) from None

    async def abort(self, request_id: str, timeout: float | None = None) -> bool:
        return (await self._unary(self._stub.Abort, pb.AbortRequest(request_id=request_id), timeout)).found

    async def health(self, timeout: float | None = None) -> dict[str, Any]:
        return health_json(await self._unary(self._stub.Health, pb.HealthRequest(), timeout))

    async def load(self, timeout: float | None = None) -> dict[str, Any]:
        return load_json(await self._unary(self._stub.Health, pb.HealthRequest(), timeout))

    async def model_info(self, timeout: float | None = None) -> dict[str, Any]:
        return model_info_json(await self._unary(self._stub.ModelInfo, pb.ModelInfoRequest(), timeout))
