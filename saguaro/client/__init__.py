"""Python clients for the public ``Inference`` gRPC API (the gateway, or one target service).

Synchronous::

    from saguaro.client import Client

    with Client("127.0.0.1:50050") as client:
        out = client.generate("def add(a, b):", max_tokens=32)
        print(out.text, out.finish_reason, out.usage.completion_tokens, out.stats["tokens_per_round"])

        stream = client.stream("import os", max_tokens=64, stream_tokens_individually=True)
        for delta in stream:            # StreamDelta(request_id, token_ids, text, offset, round, ...)
            print(delta.text, end="", flush=True)
            if "\\n" in delta.text:
                stream.cancel()         # the server aborts the request (its KV is freed)
        print(stream.result)            # None after a cancel

        first, second, third = client.generate("def add(a, b):", n=3, temperature=0.8, seed=1)

asyncio::

    from saguaro.client import AsyncClient

    async with AsyncClient("gateway.example.com:443", tls=True, api_key="sk-...") as client:
        out = await client.generate("def add(a, b):", max_tokens=32, timeout=30)
        async for delta in client.stream("import os", max_tokens=64):
            ...

``generate`` / ``stream`` take keyword-only options, one per field of inference.proto's
``SamplingParams`` plus ``n``, ``mode``, ``request_id``, ``stream_tokens_individually`` and
``timeout`` (declared once, in ``requests.request_options``; a misspelt one is a ``TypeError``).
``generate`` returns a ``GenerateResult`` dataclass (``text``, ``token_ids``, ``finish_reason``,
``usage``: a ``Usage``, ``stats``: the request's speculation statistics, ``timings``; its
``to_json()`` is what ``saguaro generate --json`` prints), or with ``n`` > 1 a list of the n
choices' results. ``health``, ``load`` and ``model_info`` return ``Health``, ``Load`` and
``ModelInfo`` dataclasses. gRPC failures surface as ``ServiceError`` subclasses carrying the
server's message and status code.

Both clients give every call a deadline (``timeout``: a whole Generate; ``call_timeout``: the
small calls), retry a request that failed *before its first token* because the server was
unreachable or overloaded (``retries``, honouring the server's ``retry-after``), resume a stream
whose server went away *after* it began (``resumes``: the request is sent again with the tokens
received so far, and continues exactly where it broke off), and send with
each call: ``authorization: Bearer <api_key>`` when an API key is set, and the W3C trace
context (``traceparent`` / ``tracestate``) of the current OpenTelemetry context when
``opentelemetry`` is installed. TLS: ``tls=True`` (system roots) or ``root_certificates``; mTLS:
add ``client_certificate`` and ``client_key`` (PEM bytes or file paths).

The package's modules, one job each: ``sync`` (``Client``), ``aio`` (``AsyncClient``),
``streams`` (one Generate call: deltas, retries, resumes), ``requests`` (the options -> request),
``results`` (what calls return), ``errors`` (what they raise), ``settings`` (what both clients
share: their options, connection and retry policy). The names below are the public API.
"""

from saguaro.client.aio import AsyncClient
from saguaro.client.errors import AuthenticationError, InvalidArgumentError, ServiceError, ServiceUnavailableError
from saguaro.client.results import (GenerateResult, Health, Load, ModelInfo, StreamDelta, Timings, TokenLogprob,
                                    Usage)
from saguaro.client.streams import AsyncGenerateStream, GenerateStream
from saguaro.client.sync import Client

DEFAULT_PORT = 50051  # a target service
GATEWAY_PORT = 50050  # the gateway (`saguaro up` / `saguaro gateway`)

__all__ = [
    "DEFAULT_PORT", "GATEWAY_PORT", "AsyncClient", "AsyncGenerateStream", "AuthenticationError", "Client",
    "GenerateResult", "GenerateStream", "Health", "InvalidArgumentError", "Load", "ModelInfo", "ServiceError",
    "ServiceUnavailableError", "StreamDelta", "Timings", "TokenLogprob", "Usage",
]
