"""HTTP plumbing every gateway handler shares: OpenAI error bodies and a bounded JSON body.

Kept apart from the handlers so that each endpoint module (``http_api``, ``vllm_endpoints``)
reads bodies and answers refusals the same way: the same limits, the same error shape.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from saguaro.services.gateway.errors import GatewayError, invalid

MAX_BODY_BYTES = 32 << 20


def openai_error(status: int, kind: str, message: str, headers: dict | None = None) -> web.Response:
    """An OpenAI error body for refusals that happen before our handlers (no field to name)."""
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": None}},
                             status=status, headers=headers)


def error_response(exc: GatewayError) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return web.json_response(exc.openai_body(), status=exc.http_status, headers=headers)


async def read_json_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The request's body, at most ``limit`` bytes once decompressed (413 beyond: a small
    compressed body can inflate to gigabytes), within ``timeout_s`` (408 beyond: a body sent a
    byte at a time holds a connection). It must be declared as JSON: a browser sends a
    cross-site form POST as text/plain or a form type without asking first, so an undeclared
    body is refused (415) before it is read."""
    if request.content_type != "application/json":
        declared = request.headers.get("Content-Type", "none")[:60]
        raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Content-Type must be application/json, got {declared!r}", http_status=415)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > limit:
                    raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"the request body is larger than {limit} bytes (decompressed), more than any "
                                       f"request to this model needs", http_status=413)
    except TimeoutError:
        raise GatewayError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"the request body did not arrive within {timeout_s:g} s", http_status=408) from None
    except RequestPayloadError:  # e.g. a Content-Encoding the body is not in (found by tests/fuzz)
        raise invalid(f"the request body cannot be decoded (Content-Encoding: "
                      f"{request.headers.get('Content-Encoding', 'none')[:40]})") from None
    return bytes(body)


def decode_json(raw: bytes) -> Any:
    """The body's JSON value; 400 for anything that is not JSON."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a 5000-digit number, deep nesting
        raise invalid(f"the request body is not valid JSON: {str(exc)[:200]}") from None
