"""Registering a gRPC servicer so that bytes which are not its request message get INVALID_ARGUMENT.

grpcio parses every request with the message class before the servicer runs. When that fails,
the sync server ends the call with INTERNAL ("Exception deserializing request!") and grpc.aio
with UNKNOWN, each logging a traceback: the client is not told what was wrong, and any client
can fill the server's log. ``add_service`` registers a servicer the way the generated
``add_*Servicer_to_server`` functions do, but with a parser that never raises: a message that
does not decode reaches a wrapper of the method instead, which ends the call with
INVALID_ARGUMENT ("malformed <Message>: <reason>") and logs nothing. For request streams the
wrapper checks each message as the servicer iterates; a bad one ends the whole call (its
contents, a round id included, are unknown, so it cannot be answered in-band). An aio servicer
that reads a request stream with ``context.read()`` instead of iterating it is not supported.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

Behavior = Callable[..., Any]

_HANDLER_KINDS = {  # (client_streaming, server_streaming) -> handler constructor
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


@dataclass(frozen=True)
class Malformed:
    """What a method's wrapper receives instead of a request whose bytes did not decode."""

    details: str  # the status details for the client: "malformed <Message>: <reason>"


def add_service(server: grpc.Server | grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Serve ``servicer``'s methods for ``service`` (e.g. ``inference_pb2.DESCRIPTOR.services_by_name
    ["Inference"]``) on ``server``, refusing undecodable requests with INVALID_ARGUMENT.

    A grpc.aio server takes an asyncio servicer (coroutines, async generators), a sync server a
    sync one. Registered like the generated code (generic and pre-registered handlers), so
    interceptors, credentials and server options apply as before."""
    asynchronous = isinstance(server, grpc.aio.Server)
    handlers = {method.name: _handler(method, getattr(servicer, method.name), asynchronous)
                for method in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _handler(method: MethodDescriptor, behavior: Behavior, asynchronous: bool) -> grpc.RpcMethodHandler:
    checked = (_async_checked if asynchronous else _sync_checked)(behavior, method.client_streaming)
    make = _HANDLER_KINDS[method.client_streaming, method.server_streaming]
    return make(checked, request_deserializer=_parser(GetMessageClass(method.input_type)),
                response_serializer=GetMessageClass(method.output_type).SerializeToString)


def _parser(message_class: type[Message]) -> Callable[[bytes], Message | Malformed]:
    """``message_class.FromString`` that answers a ``Malformed`` instead of raising."""
    name = message_class.DESCRIPTOR.name

    def parse(data: bytes) -> Message | Malformed:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Malformed(f"malformed {name}: {exc}")

    return parse


# -- sync servicers ------------------------------------------------------------------------------
def _sync_checked(behavior: Behavior, request_streaming: bool) -> Behavior:
    if request_streaming:
        def checked(requests: Iterator[Message | Malformed], context: grpc.ServicerContext) -> Any:
            return behavior(_sync_requests(requests, context), context)
    else:
        def checked(request: Message | Malformed, context: grpc.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)
            return behavior(request, context)  # a response, or the iterator of a response stream
    return checked


def _sync_requests(requests: Iterator[Message | Malformed], context: grpc.ServicerContext) -> Iterator[Message]:
    for request in requests:
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)  # raises into the servicer
        yield request


# -- asyncio servicers ---------------------------------------------------------------------------
def _async_checked(behavior: Behavior, request_streaming: bool) -> Behavior:
    """A wrapper of the behaviour's own kind: grpc.aio serves an async generator as a response
    stream, a coroutine as a single response (or one that writes with ``context.write``)."""

    async def check(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request_streaming:
            return _async_requests(request, context)
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)
        return request

    if inspect.isasyncgenfunction(behavior):
        async def checked_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in behavior(await check(request, context), context):
                yield response
        return checked_stream

    async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(await check(request, context), context)
    return checked


async def _async_requests(requests: AsyncIterator[Message | Malformed],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
    async for request in requests:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)  # raises into the servicer
        yield request
