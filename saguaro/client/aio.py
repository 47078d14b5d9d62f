"""The asyncio client: ``AsyncClient`` (same options and results as ``Client``)."""

from __future__ import annotations

import grpc

from saguaro.client.errors import service_error
from saguaro.client.requests import PreparedRequest, takes_request_options
from saguaro.client.results import GenerateResult, Health, Load, ModelInfo
from saguaro.client.settings import ClientBase
from saguaro.client.streams import AsyncGenerateStream
from saguaro.v1 import inference_pb2 as pb


class AsyncClient(ClientBase):
    """The asyncio client: same options and results as ``Client``, awaitable calls. Create it
    inside the event loop that uses it."""

    @staticmethod
    def _open_channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
        return (grpc.aio.secure_channel(address, credentials) if credentials is not None
                else grpc.aio.insecure_channel(address))

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    @takes_request_options
    def stream(self, prepared: PreparedRequest) -> AsyncGenerateStream:
        """Start a request; ``async for`` the returned stream for ``StreamDelta``s, then read its ``result``."""
        return AsyncGenerateStream(self._stub, prepared, self._settings)

    @takes_request_options
    async def generate(self, prepared: PreparedRequest) -> GenerateResult | list[GenerateResult]:
        """Run one request to completion: its ``GenerateResult`` (n > 1: the n choices' results, in
        index order)."""
        stream = AsyncGenerateStream(self._stub, prepared, self._settings)
        async for _ in stream:
            pass
        return stream.result

    async def _unary(self, method, request, timeout: float | None):
        deadline = self.call_timeout if timeout is None else timeout
        try:
            return await method(request, timeout=deadline, metadata=self._settings.metadata() or None)
        except grpc.aio.AioRpcError as exc:
            raise service_error(exc, self.address, deadline) from None

    async def abort(self, request_id: str, timeout: float | None = None) -> bool:
        return (await self._unary(self._stub.Abort, pb.AbortRequest(request_id=request_id), timeout)).found

    async def health(self, timeout: float | None = None) -> Health:
        return Health.from_proto(await self._unary(self._stub.Health, pb.HealthRequest(), timeout))

    async def load(self, timeout: float | None = None) -> Load:
        return Load.from_proto(await self._unary(self._stub.Health, pb.HealthRequest(), timeout))

    async def model_info(self, timeout: float | None = None) -> ModelInfo:
        return ModelInfo.from_proto(await self._unary(self._stub.ModelInfo, pb.ModelInfoRequest(), timeout))
