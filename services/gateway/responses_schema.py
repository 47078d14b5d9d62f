"""OpenAI's Responses API (``POST /v1/responses``), text in and text out: a chat completion in
another envelope.

Current OpenAI SDKs reach for ``client.responses.create`` first. A Responses body becomes a
chat completions body (``instructions`` a system message before ``input``'s messages,
``max_output_tokens`` the max_tokens, ``text.format`` the response_format), so the chat path
validates, tokenises and serves it
(one path: the same tokens as the chat completion of the same messages); only the answer's
shape differs: a ``response`` object, or when streamed the Responses event sequence
(``ResponsesWriter``, which stands in for the chat ``ChunkWriter``). Nothing is stored, so
``previous_response_id`` and ``store: true`` are refused (``request_fields.RESPONSES_REFUSED``).
"""

from __future__ import annotations

import json
from typing import Any

from saguaro.services.gateway.api_models import InputMessage, ResponsesRequest
from saguaro.services.gateway.api_validation import validated
from saguaro.services.gateway.errors import GatewayError, invalid
from saguaro.services.gateway.openai_schema import OpenAIRequest, parse_request
from saguaro.services.gateway.prepare import Preparer
from saguaro.services.gateway.request_fields import check_fields

# The request fields a response object repeats, with OpenAI's values when unset.
ECHOED = {"instructions": None, "max_output_tokens": None, "temperature": None, "top_p": None}


def parse_responses(body: Any, preparer: Preparer) -> OpenAIRequest:
    """A Responses body as the chat request it asks for; ``echoed`` keeps the fields its answer repeats."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    request = validated(ResponsesRequest, body)
    check_fields("responses", body)
    output_format = (body.get("text") or {}).get("format") or {"type": "text"}
    chat = {"model": request.model, "messages": _messages(request.instructions, request.input),
            "max_tokens": request.max_output_tokens, "temperature": request.temperature, "top_p": request.top_p,
            "stream": request.stream, "mode": request.mode, "response_format": _response_format(output_format)}
    try:
        parsed = parse_request("chat", chat, preparer)
    except GatewayError as exc:  # (the chat body's fields under this body's names)
        for chat_name, name in (("max_tokens", "max_output_tokens"), ("response_format", "text.format")):
            if exc.param == chat_name:
                exc.param, exc.message = name, exc.message.replace(chat_name, name)
        raise
    parsed.include_usage = True  # response.completed carries the usage
    parsed.echoed = {**{name: body.get(name, default) for name, default in ECHOED.items()},
                     "text": {"format": output_format}}
    return parsed


def _response_format(output_format: dict[str, Any]) -> dict[str, Any]:
    """Responses' ``text.format`` as chat's ``response_format``: the same kinds, with a JSON
    schema's fields one level up (``{"type": "json_schema", "name", "schema", ...}``)."""
    if output_format["type"] != "json_schema":
        return {"type": output_format["type"]}
    return {"type": "json_schema", "json_schema": {k: v for k, v in output_format.items() if k != "type"}}


def _messages(instructions: str | None, value: str | list[InputMessage]) -> list[dict[str, str]]:
    """Chat messages from ``instructions`` (a system message, first) and ``input`` (validated): a
    string (one user message) or messages whose content is a string or text parts (joined)."""
    messages = [] if instructions is None else [{"role": "system", "content": instructions}]
    if isinstance(value, str):
        return [*messages, {"role": "user", "content": value}]
    return [*messages, *({"role": item.role, "content": item.content if isinstance(item.content, str)
                          else "".join(part.text for part in item.content)} for item in value)]


def usage_json(usage: dict[str, Any]) -> dict[str, Any]:
    """A chat usage object (``openai_schema.usage_json``) in the Responses API's words."""
    return {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "input_tokens_details": {"cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]},
            "output_tokens_details": {"reasoning_tokens": 0}}


def message_item(item_id: str, text: str | None) -> dict[str, Any]:
    """The assistant's output message; ``text`` None: still in progress (no content yet)."""
    content = [] if text is None else [_part(text)]
    return {"type": "message", "id": item_id, "status": "in_progress" if text is None else "completed",
            "role": "assistant", "content": content}


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_json(response_id: str, created: int, model: str, echoed: dict[str, Any], text: str | None,
                  finish_reason: str | None, usage: dict[str, Any] | None) -> dict[str, Any]:
    """The ``response`` object: in progress (``text`` None), or done with its one output message
    ("incomplete" when max_output_tokens cut it, as OpenAI says)."""
    if text is None:
        status, output, incomplete = "in_progress", [], None
    else:
        cut = finish_reason == "length"
        status = "incomplete" if cut else "completed"
        output = [message_item("msg_" + response_id.removeprefix("resp_"), text)]
        incomplete = {"reason": "max_output_tokens"} if cut else None
    return {"id": response_id, "object": "response", "created_at": created, "status": status, "model": model,
            "output": output, "error": None, "incomplete_details": incomplete, **echoed,
            "parallel_tool_calls": False, "tool_choice": "none", "tools": [],
            "truncation": "disabled", "store": False, "previous_response_id": None, "reasoning": None,
            "metadata": {}, "usage": usage_json(usage) if usage is not None else None}


class ResponsesWriter:
    """The Responses API's server-sent events for one streamed answer, behind the interface of
    the chat ``ChunkWriter`` (``streaming.stream_choices`` drives either): ``role`` opens the
    response and its message, ``text`` is an ``output_text.delta``, ``finish`` closes the text,
    part and message, ``usage`` completes the response. Each event has a sequence number."""

    DONE = b""  # (the Responses stream has no [DONE] line)

    def __init__(self, response_id: str, created: int, model: str, echoed: dict[str, Any]):
        self.response_id, self.created, self.model, self.echoed = response_id, created, model, echoed
        self.item_id = "msg_" + response_id.removeprefix("resp_")
        self.sequence = 0
        self.pieces: list[str] = []
        self.finish_reason: str | None = None
        self._where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}

    def event(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = json.dumps({"type": kind, "sequence_number": self.sequence, **payload})
        self.sequence += 1
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def _response(self, text: str | None = None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        return response_json(self.response_id, self.created, self.model, self.echoed, text, self.finish_reason, usage)

    def role(self, index: int = 0, usage: dict[str, Any] | None = None) -> bytes:
        started = {"response": self._response()}
        return (self.event("response.created", started) + self.event("response.in_progress", started)
                + self.event("response.output_item.added", {"output_index": 0, "item": message_item(self.item_id, None)})
                + self.event("response.content_part.added", {**self._where, "part": _part("")}))

    def text(self, piece: str, index: int = 0, usage: dict[str, Any] | None = None, logprobs: dict | None = None) -> bytes:
        self.pieces.append(piece)
        return self.event("response.output_text.delta", {**self._where, "delta": piece, "logprobs": []})

    def finish(self, finish_reason: str, speculation: dict, index: int = 0, usage: dict[str, Any] | None = None,
               stop_reason: str | None = None) -> bytes:
        self.finish_reason = finish_reason
        text = "".join(self.pieces)
        return (self.event("response.output_text.done", {**self._where, "text": text, "logprobs": []})
                + self.event("response.content_part.done", {**self._where, "part": _part(text)})
                + self.event("response.output_item.done", {"output_index": 0, "item": message_item(self.item_id, text)}))

    def usage(self, usage: dict[str, Any]) -> bytes:
        response = self._response("".join(self.pieces), usage)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return self.event(kind, {"response": response})

    def error(self, message: str) -> bytes:
        return self.event("error", {"code": "target_error", "message": message, "param": None})
