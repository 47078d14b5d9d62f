"""The gateway's OpenAPI 3.1 document, generated from the API's models.

Schemas come from the pydantic models (``api_models`` for request bodies, ``api_responses`` for
answers, their field descriptions included); this module adds what models do not say: each
route's method, status codes, content types and headers. The document is package data
(``openapi.json``, served at ``GET /openapi.json`` and read by tools without a running gateway);
regenerate it after changing a model or a route::

    python -m saguaro.services.gateway.openapi           # writes openapi.json
    python -m saguaro.services.gateway.openapi --check   # fails when openapi.json is stale

``tests/fuzz/test_openapi.py`` checks it is current, valid, lists exactly the served routes, and
that a live gateway honours it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from saguaro.services.gateway import api_models as req
from saguaro.services.gateway import api_responses as res

DOCUMENT = Path(__file__).with_name("openapi.json")
REF = "#/components/schemas/{model}"

REQUESTS: list[type[BaseModel]] = [req.CompletionRequest, req.ChatCompletionRequest, req.ResponsesRequest,
                                   req.TokenizePromptRequest, req.TokenizeChatRequest, req.DetokenizeRequest]
# (the chunks are documented as schemas of their own: OpenAPI 3.1 cannot type an event stream's events)
RESPONSES: list[type[BaseModel]] = [res.CompletionResponse, res.ChatCompletionResponse, res.ResponsesResponse,
                                    res.CompletionChunk, res.ChatCompletionChunk, res.ModelList, res.ModelCard,
                                    res.TokenizeResponse, res.DetokenizeResponse, res.Version, res.Liveness,
                                    res.Readiness, res.Error]

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
ERRORS = {
    400: "Invalid request: `error.param` names the field",
    401: "Missing or wrong API key (when the gateway requires one)",
    404: "No such model: `model` names none of the served names (`error.param` is `model`), as vLLM answers",
    408: "The request body did not fully arrive within the body timeout (30 s)",
    413: "The body is larger than any request to this model needs (counted after decompression; the limit is sized "
         "to the context, docs/security.md)",
    415: "The body is not declared as JSON: `Content-Type` must be `application/json` (a browser's cross-site form "
         "POST is refused before anything is read)",
    429: "Queue full: retry after `Retry-After` seconds",
    500: "The target failed the request before its first token",
    503: "No healthy target (or the model facts are not known yet)",
    504: "The request's deadline passed before its first token",
}
GENERATION_ERRORS = (400, 401, 404, 408, 413, 415, 429, 500, 503, 504)
TOKENIZER_ERRORS = (400, 401, 404, 408, 413, 415, 503)
_STREAMED = ("With `\"stream\": true`: server-sent events, one `data: {{chunk}}` per token (or round), each "
             "choice's last chunk with `finish_reason` and `speculation`, an optional usage chunk, then "
             "`data: [DONE]`. Each chunk is a `{chunk}` (components/schemas). An error after the first token is a "
             "`data:` event holding an `Error`.")
_RESPONSE_EVENTS = ("server-sent events (`event:` and `data:` lines): response.created, response.in_progress, "
                    "response.output_item.added, response.content_part.added, response.output_text.delta (one per "
                    "token or round), response.output_text.done, response.content_part.done, "
                    "response.output_item.done, then response.completed (or response.incomplete when "
                    "max_output_tokens cut it) with the usage; no [DONE]. The `response` of the created, in_progress, "
                    "completed and incomplete events is a `ResponsesResponse`. An error after the first token is an "
                    "`error` event.")


class _Schema(GenerateJsonSchema):
    """Pydantic's JSON schema without a title per property (the property's name says it)."""

    def field_title_should_be_set(self, schema) -> bool:
        return False


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(model: type[BaseModel] | str) -> dict[str, str]:
    return {"$ref": REF.format(model=model if isinstance(model, str) else model.__name__)}


def _error(status: int, description: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description or ERRORS[status], "content": _json(_ref(res.Error))}
    if status in (429, 503):
        answer["headers"] = _RETRY_AFTER
    return answer


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _error(status) for status in statuses}


def _ok(description: str, model: type[BaseModel] | None = None) -> dict[str, Any]:
    return {"description": description, **({"content": _json(_ref(model))} if model else {})}


def _operation(operation_id: str, summary: str, responses: dict[str, Any], body: dict[str, Any] | None = None,
               keyed: bool = False, **more: Any) -> dict[str, Any]:
    """One route's operation: its ``responses`` by status, its request ``body`` schema; ``keyed``:
    the API key applies (when the gateway has keys)."""
    operation: dict[str, Any] = {"summary": summary, "operationId": operation_id, **more}
    if keyed:
        operation["security"] = [{}, {"bearer": []}]
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    operation["responses"] = responses
    return operation


def _generation(operation_id: str, summary: str, request: type[BaseModel], answer: type[BaseModel],
                ok: str, stream: str) -> dict[str, Any]:
    """A generation route: JSON, or server-sent events with ``"stream": true``."""
    content = {**_json(_ref(answer)), "text/event-stream": {"schema": {"type": "string", "description": stream}}}
    headers = {"x-saguaro-target": {"description": "the target that served the request", "schema": {"type": "string"}}}
    request_id = {"name": "x-request-id", "in": "header", "required": False, "description": (
        "sets the request id (at most 256 characters)"), "schema": {"type": "string", "maxLength": 256}}
    responses = {"200": {"description": ok, "headers": headers, "content": content}, **_errors(*GENERATION_ERRORS)}
    return {"post": _operation(operation_id, summary, responses, _ref(request), keyed=True, parameters=[request_id])}


def _tokenizer(operation_id: str, summary: str, body: dict[str, Any], ok: str,
               answer: type[BaseModel]) -> dict[str, Any]:
    return {"post": _operation(operation_id, summary, {"200": _ok(ok, answer), **_errors(*TOKENIZER_ERRORS)}, body,
                               keyed=True)}


def paths() -> dict[str, Any]:
    """Every route but ``GET /openapi.json`` itself, as ``http_api.OpenAIApi`` and ``vllm_endpoints`` serve them."""
    model_parameter = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/v1/completions": _generation("createCompletion", "Text completion", req.CompletionRequest,
                                       res.CompletionResponse, "The completion (JSON), or a stream of chunks (SSE)",
                                       _STREAMED.format(chunk="CompletionChunk")),
        "/v1/chat/completions": _generation(
            "createChatCompletion", "Chat completion (prompt rendered with the model's chat template)",
            req.ChatCompletionRequest, res.ChatCompletionResponse, "The completion (JSON), or a stream of chunks (SSE)",
            _STREAMED.format(chunk="ChatCompletionChunk")),
        "/v1/responses": _generation(
            "createResponse", "OpenAI's Responses API, text in and text out (a chat completion in another envelope)",
            req.ResponsesRequest, res.ResponsesResponse,
            "The response (JSON), or with `\"stream\": true` its events (SSE)", _RESPONSE_EVENTS),
        "/v1/models": {"get": _operation("listModels", "The served model", {
            "200": _ok("The one model this gateway serves, once per served name", res.ModelList),
            **_errors(401, 503)}, keyed=True)},
        "/v1/models/{model}": {"get": _operation("retrieveModel", "The served model's card (vLLM, OpenAI)", {
            "200": _ok("The model card", res.ModelCard), **_errors(401),
            "404": _error(404, "No such model: this gateway serves no model of that name"), **_errors(503)},
            keyed=True, parameters=[model_parameter])},
        "/tokenize": _tokenizer("tokenize", "vLLM's /tokenize: a prompt or chat messages to token ids",
                                {"oneOf": [_ref(req.TokenizePromptRequest), _ref(req.TokenizeChatRequest)]},
                                "The token ids", res.TokenizeResponse),
        "/detokenize": _tokenizer("detokenize", "vLLM's /detokenize: token ids to text", _ref(req.DetokenizeRequest),
                                  "The text", res.DetokenizeResponse),
        "/health": {"get": _operation(
            "health", "vLLM's health check: 200 with an empty body when ready to serve, else 503",
            {"200": _ok("ready (empty body)"), "503": _error(503, "not ready: no healthy target yet")})},
        "/version": {"get": _operation("version", "vLLM's /version: the server's version",
                                       {"200": _ok("the Saguaro version", res.Version)})},
        "/healthz": {"get": _operation("healthz", "Liveness: 200 while the process runs",
                                       {"200": _ok("alive", res.Liveness)})},
        "/readyz": {"get": _operation("readyz", "Readiness: 200 with a healthy target and the model facts known, "
                                      "else 503", {"200": _ok("ready", res.Readiness),
                                                   "503": _ok("not ready", res.Readiness)})},
        "/metrics": {"get": _operation("metrics", "Prometheus metrics (text exposition format)", {
            "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}})},
    }


def schemas() -> dict[str, Any]:
    """The models' JSON schemas, by model name."""
    models = [(model, "validation") for model in REQUESTS + RESPONSES]
    _, definitions = models_json_schema(models, ref_template=REF, schema_generator=_Schema)
    return definitions["$defs"]


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Saguaro gateway HTTP API", "version": "1.0.0", "description": (
            "The OpenAI-compatible HTTP API of the Saguaro gateway and its operational endpoints (docs/gateway.md). "
            "Errors use OpenAI's shape `{\"error\": {message, type, param, code}}`. Request fields left null are "
            "unset; fields neither OpenAI nor vLLM defines are accepted and logged as ignored.")},
        "paths": paths(),
        "components": {"schemas": schemas(), "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "an API key from --api-keys-file or $SAGUARO_API_KEYS (only when the gateway has keys)"}}},
    }


def rendered() -> str:
    return json.dumps(document(), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) services/gateway/openapi.json from the models.")
    parser.add_argument("--check", action="store_true", help="fail if openapi.json differs from the generated one")
    args = parser.parse_args(argv)
    text = rendered()
    if args.check:
        if not DOCUMENT.is_file() or DOCUMENT.read_text() != text:
            print(f"{DOCUMENT} is stale: run python -m saguaro.services.gateway.openapi", file=sys.stderr)
            return 1
        return 0
    DOCUMENT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
