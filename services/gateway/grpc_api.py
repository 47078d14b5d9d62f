"""The public ``Inference`` gRPC API at the gateway (same contract as a target's).

Differences a client may notice: the prompt is tokenised and validated here (errors name the
field, e.g. ``sampling.max_tokens``); ``Health`` sums the load of the healthy targets;
trailing metadata ``saguaro-target`` names the target that served a request (one per choice,
comma-separated), and refusals for overload carry ``retry-after`` (seconds) and
``grpc-retry-pushback-ms``. ``n`` > 1 (choices) is served here, as the HTTP API's ``n``
(``choices.py``): each choice is an upstream request ``id-j``, and the stream interleaves their
messages, each with its ``index``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from saguaro.services.gateway.admission import Ticket
from saguaro.services.gateway.choices import Choice, choice_count, choice_request, merged
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


def _targets(choices: Sequence[Choice]) -> str:
    """The ``saguaro-target`` trailer: the target of each choice, in choice order."""
    return ",".join(c.dispatch.target or "" for c in choices)


class GatewayInferenceService(pb_grpc.InferenceServicer):
    def __init__(self, gateway: "Gateway"):
        self.gateway = gateway
        # A live request's upstream ids, by its id in its key's namespace, for ``Abort``: the
        # choices of one with n > 1 run as ``id-0`` ... ``id-(n-1)``.
        self.upstream_ids: dict[str, list[str]] = {}

    async def Generate(self, request: pb.GenerateRequest, context):
        gw = self.gateway
        started = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        span = release = None
        scoped_id = upstream_ids = None
        choices: list[Choice] = []
        tickets: list[Ticket] = []
        finals: list[pb.GenerateFinal] = []
        try:
            metadata = _metadata(context)
            key = gw.authenticate(metadata.get("authorization"))
            span = GatewaySpan.start(metadata, api="grpc", model=gw.model_name,
                                     server=tracing.server_attributes(metadata.get(":authority"), gw.config.host, gw.grpc_port))
            preparer = gw.preparer()
            preparer.check_request_id(request.request_id)
            n = choice_count(request)
            prompt = await preparer.tokenizer.run(preparer.prompt_from_proto, request)
            preparer.check_sampling(request.sampling, "sampling.")
            preparer.check_mode(request.decode_mode, "decode_mode")
            span.requested(**sampling_attributes(request.sampling))
            release = gw.streams.acquire(key, n)
            client_id = request.request_id or gw.dispatcher.new_request_id()
            remaining = context.time_remaining()
            timeout = min(remaining, gw.config.request_timeout_s) if remaining is not None else gw.config.request_timeout_s
            tickets = gw.dispatcher.admission.admit_many(n)
            for j, ticket in enumerate(tickets):
                upstream = choice_request(request, j, f"{client_id}-{j}" if n > 1 else client_id)
                dispatch = preparer.dispatch(upstream, prompt, timeout, "grpc", span, owner=key)
                dispatch.ticket = ticket
                choices.append(Choice(j, 0, dispatch))
            scoped_id = scoped_request_id(key, client_id)
            upstream_ids = [c.dispatch.request.request_id for c in choices]
            self.upstream_ids.setdefault(scoped_id, upstream_ids)  # (a duplicate id is refused upstream)
            async with contextlib.aclosing(merged(gw.dispatcher, choices, n)) as messages:
                async for choice, response in messages:
                    response.request_id = client_id  # the targets saw the choice's id, in the key's namespace
                    response.index = choice.index
                    span.first_token()
                    if response.WhichOneof("kind") == "final":
                        finals.append(response.final)
                    yield response
            context.set_trailing_metadata((("saguaro-target", _targets(choices)),))
        except GatewayError as exc:
            code, message = exc.code, exc.message
            trailer = [("saguaro-target", _targets(choices))] if any(c.dispatch.target for c in choices) else []
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
            if scoped_id is not None and self.upstream_ids.get(scoped_id) is upstream_ids:
                del self.upstream_ids[scoped_id]
            if release is not None:
                release()
            for ticket in tickets:  # (choices that never started)
                ticket.leave()

    async def Abort(self, request: pb.AbortRequest, context) -> pb.AbortResponse:
        try:
            key = self.gateway.authenticate(_metadata(context).get("authorization"))
        except GatewayError as exc:
            await context.abort(exc.code, exc.message)
        # only the caller's own requests: ids live in the key's namespace
        scoped_id = scoped_request_id(key, request.request_id)
        found = await asyncio.gather(*(self.gateway.dispatcher.abort(upstream)
                                       for upstream in self.upstream_ids.get(scoped_id, [scoped_id])))
        return pb.AbortResponse(found=any(found))

    async def Health(self, request: pb.HealthRequest, context) -> pb.HealthResponse:
        """Open to everyone (probes): SERVING while a target serves; load summed over them."""
        return self.gateway.health()

    async def ModelInfo(self, request: pb.ModelInfoRequest, context) -> pb.ModelInfoResponse:
        try:
            self.gateway.authenticate(_metadata(context).get("authorization"))
            return self.gateway.model_info()
        except GatewayError as exc:
            await context.abort(exc.code, exc.message)
