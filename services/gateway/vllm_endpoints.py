"""vLLM's endpoints beside the OpenAI API, in vLLM's shapes: ``/health``, ``/version``,
``/tokenize``, ``/detokenize`` and ``/v1/models/{model}``.

Tools written for vLLM (load balancers' probes, benchmark scripts, evaluation harnesses that
count tokens) call these and would otherwise meet 404s. Tokenizing uses the gateway's own
tokenizer (fetched from a target, ``tokenization.py``), on its thread, so the counts are the
targets'. ``/health`` and ``/version`` are open like the probes; the others need the API key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web

from saguaro import __version__
from saguaro.services.gateway.errors import GatewayError, invalid
from saguaro.services.gateway.http_common import MAX_BODY_BYTES, decode_json, error_response, read_json_body
from saguaro.services.gateway.api_models import Body, DetokenizeRequest, TokenizeChatRequest, TokenizePromptRequest
from saguaro.services.gateway.api_validation import validated
from saguaro.services.gateway.openai_schema import chat_messages, chat_options, unicode_text
from saguaro.services.gateway.prepare import Preparer, check_vocabulary
from saguaro.services.gateway.request_fields import check_fields

if TYPE_CHECKING:
    from saguaro.services.gateway.server import Gateway


def model_card(preparer: Preparer, created: int, name: str) -> dict[str, Any]:
    """The served model under ``name`` (one of its served names) as ``/v1/models`` lists it and
    ``/v1/models/{model}`` returns it, with the sampling defaults requests get
    (``generation_defaults.py``; ``{}``: OpenAI's). ``root`` is the first name, as vLLM's."""
    facts = preparer.facts
    return {"id": name, "object": "model", "created": created, "owned_by": "saguaro", "root": facts.name,
            "max_model_len": facts.max_model_len, "sampling_defaults": preparer.defaults.describe()}


class VllmEndpoints:
    def __init__(self, gateway: "Gateway"):
        self.gateway = gateway

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/health", self.health),
            web.get("/version", self.version),
            web.post("/tokenize", self.tokenize),
            web.post("/detokenize", self.detokenize),
            web.get("/v1/models/{model:.+}", self.model),  # a served name may hold "/" (org/model)
        ]

    async def health(self, request: web.Request) -> web.Response:
        """vLLM's: 200 with an empty body when requests can be served; here 503 (with an error
        body and ``Retry-After``) until a target is healthy and the model is known."""
        gw = self.gateway
        if gw.ready:
            return web.Response(status=200)
        return error_response(GatewayError(grpc.StatusCode.UNAVAILABLE, "no healthy target: not ready to serve",
                                           retry_after=gw.config.retry_after_s))

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": __version__})

    async def model(self, request: web.Request) -> web.Response:
        try:
            self.gateway.authenticate(request.headers.get("Authorization"))
            preparer = self.gateway.preparer()
            wanted = request.match_info["model"]
            preparer.facts.check_model(wanted)
        except GatewayError as exc:
            return error_response(exc)
        return web.json_response(model_card(preparer, self.gateway.started_at, wanted))

    async def tokenize(self, request: web.Request) -> web.Response:
        return await self._on_tokenizer(request, _tokenize)

    async def detokenize(self, request: web.Request) -> web.Response:
        return await self._on_tokenizer(request, _detokenize)

    async def _on_tokenizer(self, request: web.Request, work) -> web.Response:
        """``work(body, preparer)`` on the tokenizer's thread, after the key and the body's limits
        (the same as a generation request's: tokenizing is the same work)."""
        gw = self.gateway
        try:
            gw.authenticate(request.headers.get("Authorization"))
            preparer = gw.preparer()
            raw = await read_json_body(request, min(MAX_BODY_BYTES, preparer.body_byte_limit),
                                       gw.config.http_body_timeout_s)
            return web.json_response(await preparer.tokenizer.run(work, raw, preparer))
        except GatewayError as exc:
            return error_response(exc)


def _object(raw: bytes) -> dict[str, Any]:
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body


def _validated(model: type[Body], body: dict[str, Any], preparer: Preparer) -> Any:
    """``body`` as ``model``, whose ``model`` field, if given, is a served name (vLLM makes it optional)."""
    request = validated(model, body)
    if request.model is not None:
        preparer.facts.check_model(request.model)
    return request


def _tokenize(raw: bytes, preparer: Preparer) -> dict[str, Any]:
    """``{"prompt"}`` (special tokens added unless ``add_special_tokens`` is false, as vLLM) or
    ``{"messages"}`` (rendered with the chat template, as chat completions are)."""
    body = _object(raw)
    tokenizer = preparer.tokenizer
    if body.get("messages") is not None:
        chat: TokenizeChatRequest = _validated(TokenizeChatRequest, body, preparer)
        check_fields("tokenize_chat", body)
        messages = chat_messages(chat.messages)
        preparer.check_text_size([m["content"] for m in messages], "messages")
        ids = tokenizer.chat_prompt(messages, chat_options(chat))
        strings = chat.return_token_strs
    else:
        request: TokenizePromptRequest = _validated(TokenizePromptRequest, body, preparer)
        check_fields("tokenize_prompt", body)
        preparer.check_text_size([request.prompt], "prompt")
        ids = tokenizer.encode(unicode_text(request.prompt, "prompt"), "prompt", request.add_special_tokens)
        strings = request.return_token_strs
    return {"count": len(ids), "max_model_len": preparer.facts.max_model_len, "tokens": ids,
            "token_strs": tokenizer.token_strings(ids) if strings else None}


def _detokenize(raw: bytes, preparer: Preparer) -> dict[str, str]:
    body = _object(raw)
    tokens = _validated(DetokenizeRequest, body, preparer).tokens
    check_fields("detokenize", body)
    limit = preparer.facts.max_model_len
    if len(tokens) > limit:
        raise invalid(f"tokens holds {len(tokens)} ids, more than the model's context ({limit})", "tokens")
    check_vocabulary("tokens: token ids", tokens, preparer.facts.vocab_size, "tokens")
    return {"prompt": preparer.tokenizer.decode(tokens)}
