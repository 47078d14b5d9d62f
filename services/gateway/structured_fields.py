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
# structured_outputs' keys (as sent -> the request model's attribute)
_VLLM_KEYS = {"json": "json_", "regex": "regex", "choice": "choice", "grammar": "grammar", "json_object": "json_object"}


def read_structured_output(request: Any) -> pb.StructuredOutput | None:
    """The grammar a validated request body asks for (``api_models.StructuredOutputFields``,
    whose types already hold: a schema is an object or its text, a choice a list of strings);
    None: free text. ``GatewayError`` 400 naming the field."""
    asked = [name for name in FIELDS if getattr(request, name) is not None
             and not (name == "response_format" and request.response_format.type == "text")]
    if len(asked) > 1:
        raise invalid(f"{' and '.join(asked)}: give at most one of them (each sets the output's grammar)", asked[0])
    if not asked:
        return None
    name = asked[0]
    spec, path = _READERS[name](getattr(request, name), name)
    error = grammar_error(spec)
    if error:
        raise invalid(f"{path}: {error}", name)
    return to_proto(spec)


def _response_format(value: Any, name: str) -> tuple[StructuredOutput, str]:
    if value.type == "json_object":
        return StructuredOutput(Kind.JSON_OBJECT), name
    return _json(value.json_schema.schema_, f"{name}.json_schema.schema", name)


def _json(value: dict[str, Any] | str | None, path: str, name: str) -> tuple[StructuredOutput, str]:
    """A JSON Schema given as an object, or as JSON text (vLLM accepts both)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise invalid(f"{path}: not valid JSON ({exc})", name) from None
    if not isinstance(value, dict):
        raise invalid(f"{path} must be a JSON Schema (an object)", name)
    return StructuredOutput(Kind.JSON_SCHEMA, json.dumps(value)), path


def _structured_outputs(value: Any, name: str) -> tuple[StructuredOutput, str]:
    unknown = [key for key, v in (value.model_extra or {}).items() if v not in (None, False)]
    if unknown:
        raise invalid(f"{name}.{unknown[0]} is not supported (give one of {', '.join(_VLLM_KEYS)})", name)
    given = {key: getattr(value, attribute) for key, attribute in _VLLM_KEYS.items()
             if getattr(value, attribute) not in (None, False)}
    if len(given) != 1:
        raise invalid(f"{name} must give exactly one of {', '.join(_VLLM_KEYS)}, got {len(given)}", name)
    (key, given_value), = given.items()
    path = f"{name}.{key}"
    if key == "json_object":
        return StructuredOutput(Kind.JSON_OBJECT), path
    if key == "json":
        return _json(given_value, path, name)
    return _SPECS[key](given_value), path


_SPECS: dict[str, Callable[[Any], StructuredOutput]] = {  # the fields whose value is the spec as it is
    "regex": lambda value: StructuredOutput(Kind.REGEX, value),
    "grammar": lambda value: StructuredOutput(Kind.GRAMMAR, value),
    "choice": lambda value: StructuredOutput(Kind.CHOICE, choices=tuple(value)),
}
_READERS: dict[str, Callable[[Any, str], tuple[StructuredOutput, str]]] = {
    "response_format": _response_format,
    "structured_outputs": _structured_outputs,
    "guided_json": lambda value, name: _json(value, name, name),
    "guided_regex": lambda value, name: (_SPECS["regex"](value), name),
    "guided_choice": lambda value, name: (_SPECS["choice"](value), name),
    "guided_grammar": lambda value, name: (_SPECS["grammar"](value), name),
}
