"""The OpenAI front's structured-output fields, read into inference.proto ``StructuredOutput``.

Three spellings ask for the same thing (docs/gateway.md, "Structured output"): OpenAI's
``response_format`` (``{"type": "text"}``, ``{"type": "json_object"}``, ``{"type":
"json_schema", "json_schema": {"name", "schema", "strict", "description"}}``), vLLM's
``structured_outputs`` (``{"json" | "regex" | "choice" | "grammar" | "json_object": ...}``) and
vLLM's older ``guided_json``, ``guided_regex``, ``guided_choice`` and ``guided_grammar``. A
request gives at most one; an invalid schema, regex or grammar is a 400 naming the field, found
here with the same check the target runs (``saguaro.structured_output``), so a bad grammar
never reaches a target.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from saguaro.services.gateway.errors import invalid
from saguaro.structured_output import Kind, StructuredOutput, grammar_error, to_proto
from saguaro.v1 import inference_pb2 as pb

FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar")
# structured_outputs' keys, and the spec each one's value gives
_VLLM_KEYS = ("json", "regex", "choice", "grammar", "json_object")


def read_structured_output(body: dict[str, Any]) -> pb.StructuredOutput | None:
    """The grammar the body asks for (None: free text); ``GatewayError`` 400 naming the field."""
    asked = [name for name in FIELDS if body.get(name) is not None and not (name == "response_format"
                                                                            and _is_text(body[name]))]
    if len(asked) > 1:
        raise invalid(f"{' and '.join(asked)}: give at most one of them (each sets the output's grammar)", asked[0])
    if not asked:
        return None
    name = asked[0]
    spec, path = _READERS[name](body[name], name)
    error = grammar_error(spec)
    if error:
        raise invalid(f"{path}: {error}", name)
    return to_proto(spec)


def _is_text(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "text"


def _response_format(value: Any, name: str) -> tuple[StructuredOutput, str]:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "json_object":
        return StructuredOutput(Kind.JSON_OBJECT), name
    if kind != "json_schema":
        raise invalid(f'{name}.type must be "text", "json_object" or "json_schema", got {json.dumps(kind)[:50]}', name)
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid(f"{name}.json_schema must be an object with the schema in its \"schema\"", name)
    if spec.get("name") is not None and not isinstance(spec["name"], str):
        raise invalid(f"{name}.json_schema.name must be a string", name)
    return _json(spec.get("schema"), f"{name}.json_schema.schema", name)


def _json(value: Any, path: str, name: str) -> tuple[StructuredOutput, str]:
    """A JSON Schema given as an object, or as JSON text (vLLM accepts both)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise invalid(f"{path}: not valid JSON ({exc})", name) from None
    if not isinstance(value, dict):
        raise invalid(f"{path} must be a JSON Schema (an object)", name)
    return StructuredOutput(Kind.JSON_SCHEMA, json.dumps(value)), path


def _text(kind: Kind) -> Callable[[Any, str], tuple[StructuredOutput, str]]:
    def read(value: Any, path: str, name: str | None = None) -> tuple[StructuredOutput, str]:
        if not isinstance(value, str):
            raise invalid(f"{path} must be a string", name or path)
        return StructuredOutput(kind, value), path
    return read


def _choice(value: Any, path: str, name: str | None = None) -> tuple[StructuredOutput, str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise invalid(f"{path} must be a list of strings", name or path)
    return StructuredOutput(Kind.CHOICE, choices=tuple(value)), path


def _structured_outputs(value: Any, name: str) -> tuple[StructuredOutput, str]:
    if not isinstance(value, dict):
        raise invalid(f"{name} must be an object with one of {', '.join(_VLLM_KEYS)}", name)
    unknown = [key for key, v in value.items() if key not in _VLLM_KEYS and v not in (None, False)]
    if unknown:
        raise invalid(f"{name}.{unknown[0]} is not supported (give one of {', '.join(_VLLM_KEYS)})", name)
    given = [key for key in _VLLM_KEYS if value.get(key) not in (None, False)]
    if len(given) != 1:
        raise invalid(f"{name} must give exactly one of {', '.join(_VLLM_KEYS)}, got {len(given)}", name)
    key, path = given[0], f"{name}.{given[0]}"
    if key == "json_object":
        if value[key] is not True:
            raise invalid(f"{path} must be true", name)
        return StructuredOutput(Kind.JSON_OBJECT), path
    if key == "json":
        return _json(value[key], path, name)
    if key == "choice":
        return _choice(value[key], path, name)
    return _text(Kind.REGEX if key == "regex" else Kind.GRAMMAR)(value[key], path, name)


_READERS: dict[str, Callable[[Any, str], tuple[StructuredOutput, str]]] = {
    "response_format": _response_format,
    "structured_outputs": _structured_outputs,
    "guided_json": lambda value, name: _json(value, name, name),
    "guided_regex": _text(Kind.REGEX),
    "guided_choice": _choice,
    "guided_grammar": _text(Kind.GRAMMAR),
}
