"""The public ``Inference`` gRPC API at the gateway (same contract as a target's).

Differences a client may notice: the prompt is tokenised and validated here (errors name the
field, e.g. ``sampling.max_tokens``); ``Health`` sums the load of the healthy targets;
trailing metadata ``saguaro-target`` names the target that served a request, and refusals for
overload carry ``retry-after`` (seconds) and ``grpc-retry-pushback-ms``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from saguaro.services.gateway.errors import GatewayError
from saguaro.services.gateway.prepare import scoped_request_id
from saguaro.services.gateway.telemetry import GatewaySpan
from saguaro.telemetry import tracing
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc
from saguaro.wire import PROTO_TO_FINISH

if TYPE_CHECKING:
    from saguaro.services.gateway.server import Gateway


def _metadata(context) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def sampling_attributes(sampling: pb.SamplingParams) -> dict[str, Any]:
    """The request's sampling values as ``GatewaySpan.requested`` keywords (None: not set)."""
    return {"max_tokens": sampling.max_tokens if sampling.HasField("max_tokens") else None,
            "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
            "seed": sampling.seed if sampling.HasField("seed") else None}


def end_span(span: GatewaySpan | None, code: grpc.StatusCode, finals: Sequence[pb.GenerateFinal],
             message: str = "") -> None:
    """End a request's gateway span from how the request ended (shared by both fronts).

    ``code``: the status answered to the client; ``finals``: the final messages received, one per
    choice (none: the client went away first)."""
    if span is None:
        return
    failed = next((f for f in finals if f.finish_reason == pb.FINISH_REASON_ERROR), None)
    if code is grpc.StatusCode.CANCELLED or (code is grpc.StatusCode.OK and not finals):
        span.fail("cancelled", message or "the client went away")
    elif code is not grpc.StatusCode.OK:
        span.fail(code.name, message)
    elif failed is not None:
        span.fail("target_error", failed.error_message)
    else:
        span.finish(sum(f.usage.prompt_tokens for f in finals), sum(f.usage.completion_tokens for f in finals),
                    [PROTO_TO_FINISH.get(f.finish_reason, "stop") for f in finals])


class GatewayInferenceService(pb_grpc.InferenceServicer):
    def __init__(self, gateway: "Gateway"):
        self.gateway = gateway

    async def Generate(self, request: pb.GenerateRequest, context):
        gw = self.gateway
        started = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        dispatch = span = None
        release = None
        finals: list[pb.GenerateFinal] = []
        try:
            metadata = _metadata(context)
            key = gw.authenticate(metadata.get("authorization"))
            span = GatewaySpan.start(metadata, api="grpc", model=gw.model_name,
                                     server=tracing.server_attributes(metadata.get(":authority"), gw.config.host, gw.grpc_port))
            preparer = gw.preparer()
            preparer.check_request_id(request.request_id)
            prompt = await preparer.tokenizer.run(preparer.prompt_from_proto, request)
            preparer.check_sampling(request.sampling, "sampling.")
            span.requested(**sampling_attributes(request.sampling))
            release = gw.streams.acquire(key)
            if not request.request_id:
                request.request_id = gw.dispatcher.new_request_id()
            remaining = context.time_remaining()
            timeout = min(remaining, gw.config.request_timeout_s) if remaining is not None else gw.config.request_timeout_s
            dispatch = preparer.dispatch(request, prompt, timeout, "grpc", span, owner=key)
            async for response in gw.dispatcher.stream(dispatch):
                response.request_id = dispatch.client_id  # the targets saw it in the key's namespace
                span.first_token()
                if response.WhichOneof("kind") == "final":
                    finals.append(response.final)
                yield response
            context.set_trailing_metadata((("saguaro-target", dispatch.target or ""),))
        except GatewayError as exc:
            code, message = exc.code, exc.message
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
            end_span(span, code, finals, message)
            if release is not None:
                release()

    async def Abort(self, request: pb.AbortRequest, context) -> pb.AbortResponse:
        try:
            key = self.gateway.authenticate(_metadata(context).get("authorization"))
        except GatewayError as exc:
            await context.abort(exc.code, exc.message)
        # only the caller's own requests: ids live in the key's namespace
        return pb.AbortResponse(found=await self.gateway.dispatcher.abort(scoped_request_id(key, request.request_id)))

    async def Health(self, request: pb.HealthRequest, context) -> pb.HealthResponse:
        """Open to everyone (probes): SERVING while a target serves; load summed over them."""
        return self.gateway.health()

    async def ModelInfo(self, request: pb.ModelInfoRequest, context) -> pb.ModelInfoResponse:
        try:
            self.gateway.authenticate(_metadata(context).get("authorization"))
            return self.gateway.model_info()
        except GatewayError as exc:
            await context.abort(exc.code, exc.message)
