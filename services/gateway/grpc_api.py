"""The public ``Inference`` gRPC API at the gateway (same contract as a target's).

Differences a client may notice: the prompt is tokenised and validated here (errors name the
field, e.g. ``sampling.max_tokens``); ``Health`` sums the load of the healthy targets;
trailing metadata ``saguaro-target`` names the target that served a request, and refusals for
overload carry ``retry-after`` (seconds) and ``grpc-retry-pushback-ms``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc

from saguaro.services.gateway.errors import GatewayError
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from saguaro.services.gateway.server import Gateway

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


def _metadata(context) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def trace_metadata(headers) -> list[tuple[str, str]]:
    """The W3C trace-context entries of incoming headers / metadata, forwarded to the target."""
    return [(k, headers[k]) for k in TRACE_HEADERS if k in headers]


class GatewayInferenceService(pb_grpc.InferenceServicer):
    def __init__(self, gateway: "Gateway"):
        self.gateway = gateway

    async def Generate(self, request: pb.GenerateRequest, context):
        gw = self.gateway
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        dispatch = None
        try:
            metadata = _metadata(context)
            gw.authenticate(metadata.get("authorization"))
            preparer = gw.preparer()
            preparer.check_request_id(request.request_id)
            prompt = preparer.prompt_from_proto(request)
            preparer.check_sampling(request.sampling, "sampling.")
            if not request.request_id:
                request.request_id = gw.dispatcher.new_request_id()
            remaining = context.time_remaining()
            timeout = min(remaining, gw.config.request_timeout_s) if remaining is not None else gw.config.request_timeout_s
            dispatch = preparer.dispatch(request, prompt, timeout, "grpc", trace_metadata(metadata))
            async for message in gw.dispatcher.stream(dispatch):
                yield message
            context.set_trailing_metadata((("saguaro-target", dispatch.target or ""),))
        except GatewayError as exc:
            code = exc.code
            trailer = [("saguaro-target", dispatch.target)] if dispatch is not None and dispatch.target else []
            if exc.retry_after is not None:
                trailer += [("retry-after", str(exc.retry_after)),
                            ("grpc-retry-pushback-ms", str(exc.retry_after * 1000))]
            await context.abort(exc.code, exc.message, trailing_metadata=tuple(trailer))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            gw.metrics.requests.labels("grpc", code.name).inc()
            gw.metrics.duration.labels("grpc").observe(time.perf_counter() - started)

    async def Abort(self, request: pb.AbortRequest, context) -> pb.AbortResponse:
        try:
            self.gateway.authenticate(_metadata(context).get("authorization"))
        except GatewayError as exc:
            await context.abort(exc.code, exc.message)
        return pb.AbortResponse(found=await self.gateway.dispatcher.abort(request.request_id))

    async def Health(self, request: pb.HealthRequest, context) -> pb.HealthResponse:
        """Open to everyone (probes): SERVING while a target serves; load summed over them."""
        return self.gateway.health()

    async def ModelInfo(self, request: pb.ModelInfoRequest, context) -> pb.ModelInfoResponse:
        try:
            self.gateway.authenticate(_metadata(context).get("authorization"))
            return self.gateway.model_info()
        except GatewayError as exc:
            await context.abort(exc.code, exc.message)
