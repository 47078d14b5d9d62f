"""OpenAI's Responses API (``POST /v1/responses``), text in and text out: a chat completion in
another envelope.

Current OpenAI SDKs reach for ``client.responses.create`` first. A Responses body becomes a
chat completions body (``instructions`` a system message before ``input``'s messages,
``max_output_tokens`` the max_tokens), so the chat path validates, tokenises and serves it
(one path: the same tokens as the chat completion of the same messages); only the answer's
shape differs: a ``response`` object, or when streamed the Responses event sequence
(``ResponsesWriter``, which stands in for the chat ``ChunkWriter``). Nothing is stored, so
``previous_response_id`` and ``store: true`` are refused (``request_fields.RESPONSES_REFUSED``).
"""

from __future__ import annotations

import json
from typing import Any

from saguaro.services.gateway.errors import GatewayError, invalid
from saguaro.services.gateway.openai_schema import Fields, OpenAIRequest, parse_request
from saguaro.services.gateway.prepare import Preparer
from saguaro.services.gateway.request_fields import check_fields

INPUT_ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")
# The request fields a response object repeats, with OpenAI's values when unset.
ECHOED = {"instructions": None, "max_output_tokens": None, "temperature": None, "top_p": None}


def parse_responses(body: Any, preparer: Preparer) -> OpenAIRequest:
    """A Responses body as the chat request it asks for; ``echoed`` keeps the fields its answer repeats."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    check_fields("responses", body)
    fields = Fields(body)
    chat = {"model": body.get("model"), "messages": _messages(body.get("instructions"), body.get("input")),
            "max_tokens": fields.integer("max_output_tokens", None, 1, 2**31 - 1),
            "temperature": body.get("temperature"), "top_p": body.get("top_p"), "stream": body.get("stream")}
    try:
        parsed = parse_request("chat", chat, preparer)
    except GatewayError as exc:  # (the chat body's max_tokens is this body's max_output_tokens)
        if exc.param == "max_tokens":
            exc.param, exc.message = "max_output_tokens", exc.message.replace("max_tokens", "max_output_tokens")
        raise
    parsed.include_usage = True  # response.completed carries the usage
    parsed.echoed = {name: body.get(name, default) for name, default in ECHOED.items()}
    return parsed


def _messages(instructions: Any, value: Any) -> list[dict[str, str]]:
    """Chat messages from ``instructions`` (a system message, first) and ``input``: a string
    (one user message) or a list of messages whose content is a string or text parts."""
    messages = []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid("instructions must be a string", "instructions")
        messages.append({"role": "system", "content": instructions})
    if isinstance(value, str):
        return [*messages, {"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise invalid("input is required: a string, or a non-empty list of messages", "input")
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise invalid(f"{where}: only messages ({{\"role\", \"content\"}}) are supported as input items", where)
        role = item.get("role")
        if role not in INPUT_ROLES:
            raise invalid(f"{where}.role must be one of {', '.join(INPUT_ROLES)}, got {json.dumps(role)[:50]}",
                          f"{where}.role")
        messages.append({"role": role, "content": _text(item.get("content"), f"{where}.content")})
    return messages


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"{where} must be a string or a list of input_text parts", where)
    texts = []
    for j, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") in TEXT_PARTS and isinstance(part.get("text"), str)):
            raise invalid(f"{where}[{j}]: only {{\"type\": \"input_text\", \"text\": ...}} parts are supported",
                          f"{where}[{j}]")
        texts.append(part["text"])
    return "".join(texts)


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
            "parallel_tool_calls": False, "tool_choice": "none", "tools": [], "text": {"format": {"type": "text"}},
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
