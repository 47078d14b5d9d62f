"""Structured output: the grammar a request's output must follow, as a spec.

A request may constrain its output to a JSON Schema, any JSON object, a regular expression, one
of a list of strings, or a Lark grammar (``StructuredOutput``; on the wire inference.proto
``StructuredOutput``). This module holds the spec, its validation and its llguidance grammar,
and imports no torch: the gateway validates requests with it. The matchers that mask logits
rows live in ``saguaro.grammar``. The grammar engine is llguidance; docs/speculation.md,
"Structured output", says why and how the mask stays exact under speculation.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass

import llguidance

from saguaro.errors import InvalidRequestError
from saguaro.v1 import inference_pb2 as pb

# JSON without free whitespace between its tokens (a schema's own "x-guidance" may ask for it):
# whitespace is the one freedom a small or unsure model loops on until max_tokens.
JSON_OPTIONS = {"whitespace_flexible": False}


class Kind(str, enum.Enum):
    """What the output must be; the value is the field's name on the wire (inference.proto
    ``StructuredOutput``) and in vLLM's ``structured_outputs``."""

    JSON_SCHEMA = "json_schema"
    JSON_OBJECT = "json_object"
    REGEX = "regex"
    CHOICE = "choice"
    GRAMMAR = "grammar"  # Lark, llguidance's dialect


@dataclass(frozen=True)
class StructuredOutput:
    """A request's grammar spec. ``text``: the JSON Schema (JSON text), the regex or the Lark
    grammar; ``choices``: the strings of a choice (empty otherwise). The Python API builds one
    with the class methods: ``SamplingParams(structured_output=StructuredOutput.regex("[0-9]+"))``."""

    kind: Kind
    text: str = ""
    choices: tuple[str, ...] = ()

    @classmethod
    def json_schema(cls, schema: dict | str) -> StructuredOutput:
        """JSON following ``schema`` (an object, or its JSON text)."""
        return cls(Kind.JSON_SCHEMA, schema if isinstance(schema, str) else json.dumps(schema))

    @classmethod
    def json_object(cls) -> StructuredOutput:
        return cls(Kind.JSON_OBJECT)

    @classmethod
    def regex(cls, pattern: str) -> StructuredOutput:
        return cls(Kind.REGEX, pattern)

    @classmethod
    def choice(cls, choices: Iterable[str]) -> StructuredOutput:
        return cls(Kind.CHOICE, choices=tuple(choices))

    @classmethod
    def grammar(cls, lark: str) -> StructuredOutput:
        """A Lark grammar (llguidance's dialect)."""
        return cls(Kind.GRAMMAR, lark)

    def check(self, field: str = "structured_output") -> None:
        """Refuse a spec no grammar can be built from (``InvalidRequestError`` naming the field)."""
        error = grammar_error(self)
        if error:
            raise InvalidRequestError(f"{field}.{self.kind.value}: {error}")


@functools.lru_cache(maxsize=256)
def llguidance_grammar(spec: StructuredOutput) -> str:
    """The llguidance grammar of ``spec`` (unchecked: ``grammar_error`` checks it)."""
    if spec.kind is Kind.JSON_SCHEMA:
        return llguidance.LLMatcher.grammar_from_json_schema(spec.text, defaults=JSON_OPTIONS)
    if spec.kind is Kind.JSON_OBJECT:
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
    if spec.kind is Kind.REGEX:
        return llguidance.LLMatcher.grammar_from_regex(spec.text)
    if spec.kind is Kind.CHOICE:  # Lark's string literals are JSON's
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec.choices))
    return llguidance.LLMatcher.grammar_from_lark(spec.text)


@functools.lru_cache(maxsize=256)
def grammar_error(spec: StructuredOutput) -> str:
    """Why ``spec`` is not a usable grammar ("" when it is); needs no tokenizer."""
    if spec.kind is Kind.JSON_SCHEMA:
        try:
            schema = json.loads(spec.text)
        except ValueError as exc:
            return f"not valid JSON ({exc})"
        if not isinstance(schema, dict):
            return "a JSON Schema here is an object"
    if spec.kind is Kind.CHOICE and (not spec.choices or not all(spec.choices)):
        return "give at least one choice, and no empty one"
    if spec.kind in (Kind.REGEX, Kind.GRAMMAR) and not spec.text:
        return "must not be empty"
    try:
        grammar = llguidance_grammar(spec)
    except ValueError as exc:
        return str(exc)
    return llguidance.LLMatcher.validate_grammar(grammar).strip()


def to_proto(spec: StructuredOutput) -> pb.StructuredOutput:
    if spec.kind is Kind.CHOICE:
        return pb.StructuredOutput(choice=pb.StructuredOutput.Choices(choices=list(spec.choices)))
    if spec.kind is Kind.JSON_OBJECT:
        return pb.StructuredOutput(json_object=True)
    return pb.StructuredOutput(**{spec.kind.value: spec.text})


def from_proto(message: pb.StructuredOutput) -> StructuredOutput | None:
    """The spec a message carries (None: an empty message, or json_object false); unchecked."""
    kind = message.WhichOneof("kind")
    if kind is None or (kind == "json_object" and not message.json_object):
        return None
    if kind == "choice":
        return StructuredOutput(Kind.CHOICE, choices=tuple(message.choice.choices))
    if kind == "json_object":
        return StructuredOutput(Kind.JSON_OBJECT)
    return StructuredOutput(Kind(kind), getattr(message, kind))
