"""The OpenAI-compatible HTTP API (aiohttp) and the operational endpoints.

==========================  ====  ===========================================================
route                       auth  answer
==========================  ====  ===========================================================
POST /v1/completions        yes   text completion (JSON, or SSE with ``"stream": true``)
POST /v1/chat/completions   yes   chat completion, prompt rendered with the chat template
POST /v1/responses          yes   OpenAI's Responses API, text only: a chat completion's envelope
GET  /v1/models             yes   the served model, once per served name (--served-model-name)
GET  /v1/models/{model}     yes   its model card (404 for a name not served)
POST /tokenize              yes   vLLM's: text or messages -> token ids
POST /detokenize            yes   vLLM's: token ids -> text
GET  /health                no    vLLM's: 200 (empty) when ready to serve, else 503
GET  /version               no    vLLM's: ``{"version": saguaro.__version__}``
GET  /healthz               no    200 while the process runs (liveness)
GET  /readyz                no    200 with at least one healthy target, else 503 (readiness)
GET  /metrics               no    Prometheus text format
GET  /openapi.json          no    the OpenAPI 3.1 description of this API (generated: ``openapi.py``)
==========================  ====  ===========================================================

vLLM's endpoints live in ``vllm_endpoints.py``; what each request field does, in ``request_fields.py``;
a request's choices (``n``, several prompts) are fanned out and merged by ``choices.py`` and
streamed by ``streaming.py``.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; 429 and 503
carry ``Retry-After``. ``x-request-id`` (header) sets the request id; the response header
``x-saguaro-target`` names the target that served it. A client that disconnects cancels its
request on the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST

from saguaro.services.gateway.admission import Ticket
from saguaro.services.gateway.choices import Choice, merged, upstream_requests
from saguaro.services.gateway.errors import GatewayError
from saguaro.services.gateway.grpc_api import end_span, sampling_attributes
from saguaro.services.gateway.logprobs_json import ChoiceLogprobs
from saguaro.services.gateway.http_common import (MAX_BODY_BYTES, decode_json, error_response, openai_error,
                                                  read_json_body)
from saguaro.services.gateway.openai_schema import (ChunkWriter, OpenAIRequest, choice_json, parse_request,
                                                    prompt_usage, response_json, stop_reason, usage_json)
from saguaro.services.gateway.responses_schema import ResponsesWriter, parse_responses
from saguaro.services.gateway.responses_schema import response_json as responses_json
from saguaro.services.gateway.streaming import stream_choices
from saguaro.services.gateway.telemetry import GatewaySpan
from saguaro.telemetry import attributes as A
from saguaro.telemetry import tracing
from saguaro.services.gateway.vllm_endpoints import VllmEndpoints, model_card
from saguaro.v1 import inference_pb2 as pb
from saguaro.wire import PROTO_TO_FINISH, speculation_from_proto

if TYPE_CHECKING:
    from saguaro.services.gateway.prepare import Preparer
    from saguaro.services.gateway.server import Gateway

log = logging.getLogger(__name__)
OPENAPI_DOCUMENT = Path(__file__).with_name("openapi.json")  # shipped as package data (written by openapi.py)
ID_PREFIX = {"completions": "cmpl-", "chat": "chatcmpl-", "responses": "resp_"}  # response ids, as OpenAI's


class _GatewayConnection(RequestHandler):
    """One HTTP connection, as aiohttp serves it, with two differences.

    * A client may half-close its socket once its request is sent (``shutdown(SHUT_WR)``, as
      some proxies and scripts do). aiohttp closes the connection on the FIN, so the request was
      never answered; here it is answered, and the connection closes after the response.
    * A request aiohttp's parser refuses (a bad request line, oversized headers) gets an OpenAI
      JSON error, as every other refusal does, and one log line instead of a traceback.
    """

    def eof_received(self) -> bool:
        self.close()  # serve what has arrived, accept nothing more
        return True  # keep our half open for the response (asyncio ignores this under TLS)

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:  # our fault: keep aiohttp's logging (with the traceback) and its checks
            super().handle_error(request, status, exc, message)
        elif request.writer.output_size > 0:
            raise ConnectionError("the response has begun; no error response can follow")
        else:
            log.info("refused a malformed HTTP request from %s: %d %s", request.remote, status, message or exc)
        kind = "server_error" if status >= 500 else "invalid_request_error"
        text = "internal error" if status >= 500 else f"malformed HTTP request: {message or exc}"
        response = openai_error(status, kind, text[:300])
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _GatewayConnection(self, loop=self._loop, **self._kwargs)


class HttpRunner(web.AppRunner):
    """The gateway's HTTP server: an aiohttp application runner whose connections are
    ``_GatewayConnection``s."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # aiohttp builds its Server inside the application; only the handler differs
        return server


@web.middleware
async def _json_http_errors(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own 4xx answers (no such path, a method the path does not take) as OpenAI
    JSON errors, like every refusal of ours."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return openai_error(exc.status, kind, f"{exc.reason}: {request.method} {request.path[:200]}", headers)


class OpenAIApi:
    def __init__(self, gateway: "Gateway"):
        self.gateway = gateway

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_json_http_errors])
        app.add_routes([
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat_completions),
            web.post("/v1/responses", self.responses),
            web.get("/v1/models", self.models),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
            web.get("/openapi.json", self.openapi),
            *VllmEndpoints(self.gateway).routes(),
        ])
        return app

    # -- operational -------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        gw = self.gateway
        body = {"ready": gw.ready, "healthy_targets": len(gw.pool.healthy()), "targets": len(gw.pool.targets),
                "prefix_index": {"backend": gw.index.name, "available": gw.index.available} if gw.index else None}
        return web.json_response(body, status=200 if gw.ready else 503)

    async def openapi(self, request: web.Request) -> web.Response:
        """For clients and tools (code generators, schemathesis) to read the API off the server."""
        return web.Response(body=OPENAPI_DOCUMENT.read_bytes(), content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.gateway.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        try:
            self.gateway.authenticate(request.headers.get("Authorization"))
            preparer = self.gateway.preparer()
        except GatewayError as exc:
            return error_response(exc)
        cards = [model_card(preparer, self.gateway.started_at, name) for name in preparer.facts.names]
        return web.json_response({"object": "list", "data": cards})

    # -- generation --------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completions")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def responses(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "responses")

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        gw = self.gateway
        started = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        span = release = None
        finals: list[pb.GenerateFinal] = []
        tickets: list[Ticket] = []
        try:
            key = gw.authenticate(request.headers.get("Authorization"))
            span = GatewaySpan.start(request.headers, api="http", model=gw.model_name,
                                     operation=A.TEXT_COMPLETION if kind == "completions" else A.CHAT,
                                     server=tracing.server_attributes(request.host, gw.config.host, gw.http_port))
            preparer = gw.preparer()
            raw = await read_json_body(request, min(MAX_BODY_BYTES, preparer.body_byte_limit),
                                       gw.config.http_body_timeout_s)
            parsed = await preparer.tokenizer.run(_parse_body, kind, raw, preparer)
            span.requested(**sampling_attributes(parsed.sampling))
            preparer.check_mode(parsed.decode_mode, "mode")
            count = len(parsed.prompts) * parsed.n
            release = gw.streams.acquire(key, count)
            request_id = request.headers.get("x-request-id") or gw.dispatcher.new_request_id()
            preparer.check_request_id(request_id)
            tickets = gw.dispatcher.admission.admit_many(count)
            choices = []
            for index, ((p, upstream), ticket) in enumerate(zip(upstream_requests(parsed, request_id), tickets)):
                dispatch = preparer.dispatch(upstream, parsed.prompts[p], gw.config.request_timeout_s, kind, span,
                                             owner=key)
                dispatch.ticket = ticket
                choices.append(Choice(index, p, dispatch))
            response_id = ID_PREFIX[kind] + request_id
            scores = [ChoiceLogprobs(parsed.kind, preparer.tokenizer, parsed.prompts[c.prompt], parsed.echo,
                                     parsed.logprobs is not None,
                                     parsed.echo_texts[c.prompt] if parsed.echo_texts else None) for c in choices]
            created, model = int(time.time()), preparer.facts.name
            if parsed.stream:
                writer = (ResponsesWriter(response_id, created, model, parsed.echoed) if kind == "responses"
                          else ChunkWriter(kind, response_id, created, model, len(choices)))
                return await stream_choices(request, parsed, gw.dispatcher, choices, writer,
                                            gw.config.sse_keepalive_s, finals, scores, preparer.tokenizer)
            return await self._complete(kind, parsed, choices, response_id, preparer, finals, scores)
        except GatewayError as exc:
            code, message = exc.code, exc.message
            return error_response(exc)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            gw.metrics.requests.labels(kind, code.name).inc()
            gw.metrics.duration.labels(kind).observe(time.perf_counter() - started)
            end_span(span, code, finals, message)
            if release is not None:
                release()
            for ticket in tickets:  # (choices that never started)
                ticket.leave()

    async def _complete(self, kind: str, parsed: OpenAIRequest, choices: list[Choice], response_id: str,
                        preparer: Preparer, finals: list[pb.GenerateFinal], scores: list[ChoiceLogprobs]) -> web.Response:
        """All choices at once; ``finals`` receives each choice's final message. Usage counts each
        prompt once and every choice's completion tokens (as OpenAI and vLLM do). ``scores``
        gather each choice's echo and log probabilities, when asked."""
        shown = parsed.echo or parsed.logprobs is not None
        pieces: list[list[str]] = [[] for _ in choices]
        ends: list[pb.GenerateFinal | None] = [None] * len(choices)
        async with contextlib.aclosing(merged(self.gateway.dispatcher, choices, parsed.n)) as messages:
            async for choice, message in messages:  # (leaving early cancels the other choices at once)
                choice.dispatch.span.first_token()
                if message.WhichOneof("kind") == "delta":
                    if shown:
                        echo, _, _ = await preparer.tokenizer.run(scores[choice.index].delta, message.delta)
                        pieces[choice.index].append(echo)
                    pieces[choice.index].append(message.delta.text)
                    continue
                final = ends[choice.index] = message.final
                finals.append(final)
                if final.finish_reason == pb.FINISH_REASON_ERROR:
                    raise GatewayError(grpc.StatusCode.INTERNAL, f"generation failed: {final.error_message}")
        answers = []
        for choice, final in zip(choices, ends):
            answers.append(choice_json(parsed.kind, choice.index, "".join(pieces[choice.index]),
                                       PROTO_TO_FINISH.get(final.finish_reason, "stop"),
                                       speculation_from_proto(final.speculation),
                                       stop_reason(final, parsed.sampling.stop_token_ids), scores[choice.index].whole()))
        prompt_tokens, cached_tokens = prompt_usage((c.leads(parsed.n), final) for c, final in zip(choices, ends))
        completion_tokens = sum(final.usage.completion_tokens for final in ends)
        usage = usage_json(prompt_tokens, completion_tokens, cached_tokens)
        created, model = int(time.time()), preparer.facts.name
        if kind == "responses":  # (one choice: a Responses request has no n)
            [answer] = answers
            body = responses_json(response_id, created, model, parsed.echoed, answer["message"]["content"],
                                  answer["finish_reason"], usage)
        else:
            body = response_json(kind, response_id, created, model, answers, usage)
        return web.json_response(body, headers={"x-saguaro-target": ",".join(c.dispatch.target or "" for c in choices)})


def _parse_body(kind: str, raw: bytes, preparer: Preparer) -> OpenAIRequest:
    """JSON and the OpenAI fields, prompts tokenized (on the tokenizer's thread: see
    ``GatewayTokenizer.run``); a Responses body as the chat request it asks for."""
    if kind == "responses":
        return parse_responses(decode_json(raw), preparer)
    return parse_request(kind, decode_json(raw), preparer)
