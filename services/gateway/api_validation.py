"""A request body through its model (``api_models``): the model, or a 400 naming the field.

A pydantic ``ValidationError`` becomes the gateway's ``GatewayError`` INVALID_ARGUMENT (OpenAI's
error JSON, ``invalid_request_error``) for its first error. ``param`` is the error's location
written as the gateway names fields everywhere: ``messages[0].content``, ``prompt[1]``.
Pydantic's location also holds the tags of union members (``one_of``'s "text", "list" ...),
which are no part of the body: a location step is kept only where the body has it, so the
tags drop out (a missing field's name, the last step, is kept).
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from saguaro.services.gateway.errors import GatewayError, invalid

M = TypeVar("M", bound=BaseModel)
SHOWN_CHARS = 50  # of the refused value, in the message


def validated(model: type[M], body: dict[str, Any]) -> M:
    """``body`` (a JSON object) as ``model``; the first validation error as a 400 naming its field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise refusal(exc.errors(include_url=False)[0], body) from None


def refusal(error: ErrorDetails, body: Any) -> GatewayError:
    param = field_name(error["loc"], body, missing=error["type"] == "missing")
    if error["type"] == "missing":
        return invalid(f"{param} is required", param)
    # pydantic's "Input should be ..." / "List should have ..." in the gateway's words: "{param} must be ..."
    message = re.sub(r"^\w+ should ", "must ", error["msg"]).replace(" after validation", "")
    text = f"{param} {message}" if message.startswith("must ") else f"{param}: {message}"
    return invalid(f"{text}, got {_shown(error['input'])}", param)


def field_name(loc: tuple[int | str, ...], body: Any, missing: bool = False) -> str:
    """``loc`` as the body's path (``a.b[2].c``), without the steps the body does not have."""
    name, node = "", body
    for i, step in enumerate(loc):
        if isinstance(step, int) and isinstance(node, list) and 0 <= step < len(node):
            name, node = f"{name}[{step}]", node[step]
        elif isinstance(step, str) and isinstance(node, dict) and (step in node or (missing and i == len(loc) - 1)):
            name, node = f"{name}.{step}" if name else step, node.get(step)
    return name


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."
