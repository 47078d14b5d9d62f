"""The HTTP API's request bodies as pydantic v2 models: the types and shapes the gateway takes.

They parse every body (``api_validation.validated``: a ``ValidationError`` becomes a 400 naming
the field) and are the OpenAPI document's request schemas (``openapi.py``; field descriptions
become the document's). What a model cannot state stays in the parsers: the served model's
vocabulary and context, the stop-string rules, the ``request_fields`` refusals, the chat
template's arguments.

Two conventions hold for every body, as OpenAI's and vLLM's servers read them:

* **null means unset**: a null field gets its default (``Body`` drops nulls before validating);
  the document shows each optional field as nullable.
* **unknown fields are allowed** (``extra="allow"``): ``request_fields.check_fields`` logs them
  as ignored. The fields the gateway refuses unless neutral, and those it ignores, are declared
  from its table (``table_fields``), untyped: the table decides.

Types are strict (``"5"`` is not a number, ``1`` is not ``true``), except that an integer field
takes an integral float (``5.0``), as JSON encoders may write one.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, create_model, model_validator

from saguaro.request_rules import MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_PENALTY, MAX_STOP_STRINGS
from saguaro.services.gateway.request_fields import HARMLESS, REFUSED, RESPONSES_REFUSED, Refusal

MAX_BATCH = 64  # prompts per completions request
MAX_N = 16  # choices per prompt: each is a full request's work on a target
INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1
ROLES = ("system", "developer", "user", "assistant", "tool")


def _integral(value: Any) -> Any:
    """An integral float (``5.0``) as the integer it spells; anything else as is (strict typing refuses it)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(**bounds: int) -> Any:
    """An integer field's type, within ``bounds`` (``ge``, ``le``), taking integral floats. (The
    bounds go on the integer itself, inside the float conversion, so the document shows them.)"""
    return Annotated[Annotated[int, Field(**bounds)], BeforeValidator(_integral)]


TokenId = integer(ge=0)
TokenIds = list[TokenId]


_ANNOTATIONS = ("title", "description", "default")  # (JSON schema keywords that constrain nothing)


def _nullable_optionals(schema: dict[str, Any]) -> None:
    """The document's side of "null means unset": every optional property also takes null."""
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        constraint = {k: v for k, v in prop.items() if k not in _ANNOTATIONS}
        if name in required or not constraint or {"type": "null"} in prop.get("anyOf", ()):
            continue  # (an untyped field takes null already)
        members = constraint["anyOf"] if list(constraint) == ["anyOf"] else [constraint]
        schema["properties"][name] = {**{k: prop[k] for k in _ANNOTATIONS if k in prop},
                                      "anyOf": [*members, {"type": "null"}]}


class Body(BaseModel):
    """A JSON object the gateway reads: strict types, null as unset, unknown fields allowed."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False, json_schema_extra=_nullable_optionals)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_unset(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}
        return data


def one_of(*members: tuple[str, Any], kind: Any, expected: str) -> Any:
    """A union validated as the one member ``kind(value)`` names (a tag of ``members``), so an
    error is that member's, at its place, and a value no member takes says ``expected``
    (instead of one error per member)."""
    union = Union[tuple(Annotated[t, Tag(tag)] for tag, t in members)]
    return Annotated[union, Discriminator(kind, custom_error_type="one_of", custom_error_message=f"must be {expected}")]


def _text_or_list(value: Any) -> str | None:
    return "text" if isinstance(value, str) else "list" if isinstance(value, list) else None


def _object_or_text(value: Any) -> str | None:
    return "object" if isinstance(value, dict) else "text" if isinstance(value, str) else None


def _text_or_ids(value: Any) -> str | None:
    return "text" if isinstance(value, str) else "ids" if isinstance(value, list) else None


# -- chat messages -------------------------------------------------------------------------------
class TextPart(Body):
    type: Literal["text"]
    text: str


ChatContent = one_of(("text", str), ("list", list[TextPart]), kind=_text_or_list,
                     expected="a string or a list of text parts")


class ChatMessage(Body):
    """One chat message; its content is text, or text parts (joined) as OpenAI's clients send them."""

    role: Literal[ROLES]
    content: ChatContent
    name: str | None = Field(None, description="accepted and not used (as by templates that ignore it)")


Messages = Annotated[list[ChatMessage], Field(min_length=1)]


class ChatTemplateFields(Body):
    """vLLM's chat template fields (chat completions and `/tokenize` with messages)."""

    add_generation_prompt: bool = Field(True, description="open the assistant's turn after the messages "
                                                          "(the template's add_generation_prompt)")
    continue_final_message: bool = Field(False, description="leave the final (assistant) message open, to be "
                                                            "continued; needs add_generation_prompt false")
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "extra variables for the chat template (e.g. enable_thinking); not the template's own arguments"))
    add_special_tokens: bool = Field(False, description="add the tokenizer's special tokens on top of the chat "
                                                        "template's (vLLM's default: false)")


# -- structured output (its meaning: structured_fields.py) ----------------------------------------
class JsonSchemaFormat(Body):
    name: str = Field(description="the schema's name")
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="the JSON schema the output follows")
    strict: bool | None = Field(None, description="follow the schema exactly")
    description: str | None = None


class TextFormat(Body):
    type: Literal["text"]


class JsonObjectFormat(Body):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(Body):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaResponseFormat, Discriminator("type")]
JsonSchema = one_of(("object", dict[str, Any]), ("text", str), kind=_object_or_text,
                    expected="a JSON schema (an object, or its text)")


class StructuredOutputs(Body):
    """vLLM's `structured_outputs`: one constraint on the output."""

    json_: JsonSchema | None = Field(None, alias="json", description="a JSON schema (object or its text)")
    regex: str | None = Field(None, description="a regular expression the output matches")
    choice: list[str] | None = Field(None, description="the output is one of these strings")
    grammar: str | None = Field(None, description="a context-free grammar (Lark)")
    json_object: bool | None = Field(None, description="the output is some JSON object")


class StructuredOutputFields(Body):
    """Structured output (structured_fields.py reads these): at most one of them per request."""

    response_format: ResponseFormat | None = Field(None, description=(
        'Structured output (OpenAI): {"type": "text"} (free text), {"type": "json_object"} (any JSON object) or '
        '{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}} (JSON following the '
        "schema, compact). At most one of response_format, structured_outputs and guided_*; an invalid schema is "
        "a 400 naming the field."))
    structured_outputs: StructuredOutputs | None = Field(None, description=(
        "vLLM extension, structured output: an object with exactly one of json (a JSON Schema), regex, choice (a "
        "list of strings), grammar (Lark) or json_object (true). At most one of response_format, "
        "structured_outputs and guided_*; an invalid one is a 400 naming the field."))
    guided_json: JsonSchema | None = Field(None, description=(
        "vLLM extension (older spelling of structured_outputs.json): the output is JSON following this JSON Schema."))
    guided_regex: str | None = Field(None, description=(
        "vLLM extension (older spelling of structured_outputs.regex): the output matches this regular expression."))
    guided_choice: list[str] | None = Field(None, description=(
        "vLLM extension (older spelling of structured_outputs.choice): the output is one of these strings."))
    guided_grammar: str | None = Field(None, description=(
        "vLLM extension (older spelling of structured_outputs.grammar): the output follows this Lark grammar."))


# -- generation ----------------------------------------------------------------------------------
DecodeMode = Literal["ssd", "sd", "ar"]
_MODE = "extension: per-request decoding mode (opt out of speculation); unset: the server's"
_DEFAULTED = " Unset: the model's generation_config.json default, if any (--generation-config), else OpenAI's."
_EXACT = (" Log probabilities are the target's raw ones (log_softmax of its logits before temperature, top-k and "
          "top-p, as vLLM's default), exact under speculation.")


class StreamOptions(Body):
    include_usage: bool = Field(False, description="a final chunk with the request's usage")
    continuous_usage_stats: bool = Field(False, description=(
        "with stream: every chunk carries usage, the request's running totals (prompts counted once, the completion "
        "tokens of all choices so far); the last equals the final usage"))


Stop = one_of(("text", str), ("list", list[str]), kind=_text_or_list, expected="a string or a list of strings")


class GenerationFields(Body):
    """The fields completions and chat completions share. (The last base of each request, whose
    fields pydantic, and so the document, lists first: `model` leads.)"""

    model: str = Field(min_length=1, description="the served model (GET /v1/models)")
    max_tokens: integer(ge=1) | None = Field(None, description=(
        "tokens to generate, within the model's context; completions default 16, chat: the rest of the context"))
    n: integer(ge=1, le=MAX_N) = Field(1, description=(
        f"choices per prompt (at most {MAX_N}), numbered prompt-major: choice index = prompt index x n + j. With a "
        "seed s, choice j samples with seed s + j (as vLLM); each choice counts as a request against admission and "
        "the per-key stream limit"))
    stream: bool = Field(False, description="answer with server-sent events (text/event-stream)")
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0, le=2, description="0: greedy." + _DEFAULTED)
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass." + _DEFAULTED)
    top_k: integer(ge=-1, le=INT32_MAX) = Field(0, description=(
        "extension: sample among the k most likely tokens (0 or -1: off)." + _DEFAULTED))
    seed: integer(ge=0, le=UINT64_MAX) | None = Field(None, description=(
        "fixes the sampling randomness; with n > 1, choice j of a prompt uses seed + j (mod 2^64)"))
    stop: Stop | None = Field(None, description=(
                     f"stop strings (at most {MAX_STOP_STRINGS}, each 1 to 256 characters): the output ends before "
                     "the first (\"\": none); stop_reason names it"))
    include_stop_str_in_output: bool = Field(False, description="vLLM extension: keep the stop string in the text")
    stop_token_ids: TokenIds | None = Field(None, description="extension: stop at any of these token ids")
    ignore_eos: bool = Field(False, description="extension: generate past the end-of-sequence token")
    mode: DecodeMode | None = Field(None, description=_MODE)
    stream_tokens_individually: bool = Field(True, description=(
        "extension: one SSE chunk per token (false: one per round)"))
    presence_penalty: float = Field(0.0, ge=-MAX_PENALTY, le=MAX_PENALTY, description=(
        "Subtracted from the logit of every token already in the output (vLLM's formula), exact under speculation."))
    frequency_penalty: float = Field(0.0, ge=-MAX_PENALTY, le=MAX_PENALTY, description=(
        "Subtracted from a token's logit once per occurrence in the output (vLLM's formula), exact under "
        "speculation."))
    repetition_penalty: float = Field(1.0, gt=0, description=(
        "vLLM extension: divides the positive logits (multiplies the negative ones) of tokens in the prompt or the "
        "output. 1: off." + _DEFAULTED))
    min_p: float = Field(0.0, ge=0, le=1, description=(
        "vLLM extension: after temperature, drops tokens less likely than min_p times the most likely token "
        "(sampling only)." + _DEFAULTED))
    min_tokens: integer(ge=0, le=INT32_MAX) = Field(0, description=(
        "vLLM extension: EOS and stop_token_ids are held back, and stop strings do not end the output, until this "
        "many tokens are generated (at most max_tokens)."))
    logit_bias: dict[str, float] | None = Field(None, description=(
        f"Token id (a string key, inside the vocabulary) -> bias in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}] added "
        "to its logit."))


def _prompt_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    if not isinstance(value, list):
        return None
    return "ids" if all(isinstance(t, int) and not isinstance(t, bool) for t in value) else "batch"


PromptItem = one_of(("text", str), ("ids", TokenIds), kind=_text_or_ids,
                    expected="a string or a list of token ids")
Prompt = one_of(("text", str), ("ids", Annotated[TokenIds, Field(min_length=1)]),
                ("batch", Annotated[list[PromptItem], Field(min_length=1, max_length=MAX_BATCH)]),
                kind=_prompt_kind, expected="a string, a list of token ids, or a list of those")


class CompletionFields(StructuredOutputFields, GenerationFields):
    prompt: Prompt = Field(description=(
        f"a string, token ids, or a batch of up to {MAX_BATCH} of either (each its own choices)"))
    logprobs: integer(ge=0, le=MAX_LOGPROBS) | None = Field(None, description=(
        "return each token's log probability and this many most likely alternatives (choices[].logprobs: tokens, "
        "token_logprobs, top_logprobs, text_offset)." + _EXACT))
    echo: bool = Field(False, description=(
        "put the prompt's text before the output; with logprobs, the prompt tokens' log probabilities come first "
        "(the first one null)"))
    add_special_tokens: bool = Field(True, description=(
        "add the tokenizer's special tokens (BOS for Llama 3) to a text prompt, as vLLM; token-id prompts are sent "
        "as given"))


class ChatCompletionFields(StructuredOutputFields, ChatTemplateFields, GenerationFields):
    messages: Messages
    max_completion_tokens: integer(ge=1) | None = Field(None, description="takes precedence over max_tokens")
    logprobs: bool = Field(False, description=(
        "return each output token's log probability (choices[].logprobs.content)." + _EXACT))
    top_logprobs: integer(ge=0, le=MAX_LOGPROBS) | None = Field(None, description=(
        f"most likely alternatives per token (0 to {MAX_LOGPROBS}); needs logprobs: true"))
    echo: bool = Field(False, description="refused unless false: chat completions do not echo (use /v1/completions)")


def _refused(refusal: Refusal) -> str:
    neutral = " or ".join(["null", *(json.dumps(v) for v in refusal.neutral)])
    return f"Not honoured: refused with 400 (`error.param` names it) unless {neutral}: {refusal.why}."


def table_fields(base: type[Body], refused: dict[str, Refusal]) -> dict[str, Any]:
    """``create_model`` fields for the table's refused and harmless fields ``base`` does not declare."""
    fields: dict[str, Any] = {name: (Any, Field(None, description=_refused(refusal)))
                              for name, refusal in refused.items() if name not in base.model_fields}
    fields.update({name: (Any, Field(None, description="Accepted; changes nothing in the output."))
                   for name in sorted(HARMLESS) if name not in base.model_fields and name not in fields})
    return fields


CompletionRequest = create_model("CompletionRequest", __base__=CompletionFields, __doc__=(
    "POST /v1/completions. Fields neither OpenAI nor vLLM defines are accepted and logged as ignored."),
    **table_fields(CompletionFields, dict(REFUSED)))
ChatCompletionRequest = create_model("ChatCompletionRequest", __base__=ChatCompletionFields, __doc__=(
    "POST /v1/chat/completions: the messages rendered with the chat template. Fields neither OpenAI nor vLLM "
    "defines are accepted and logged as ignored."), **table_fields(ChatCompletionFields, dict(REFUSED)))


# -- /v1/responses -------------------------------------------------------------------------------
class InputTextPart(Body):
    type: Literal["input_text", "output_text"]
    text: str


InputContent = one_of(("text", str), ("list", list[InputTextPart]), kind=_text_or_list,
                      expected="a string or a list of input_text parts")


class InputMessage(Body):
    type: Literal["message"] = Field("message", description="only messages are supported as input items")
    role: Literal["user", "assistant", "system", "developer"]
    content: InputContent


Input = one_of(("text", str), ("list", Annotated[list[InputMessage], Field(min_length=1)]), kind=_text_or_list,
               expected="a string or a non-empty list of messages")


class ResponsesJsonSchemaFormat(Body):
    type: Literal["json_schema"]
    name: str = Field(description="the schema's name")
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON schema the output follows")
    strict: bool | None = Field(None, description="follow the schema exactly")
    description: str | None = None


ResponsesFormat = Annotated[TextFormat | JsonObjectFormat | ResponsesJsonSchemaFormat, Discriminator("type")]


class ResponsesText(Body):
    format: ResponsesFormat | None = Field(None, description=(
        '{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "name", "schema", "strict"}: '
        "structured output, as chat's response_format"))


class ResponsesFields(Body):
    model: str = Field(min_length=1, description="the served model (GET /v1/models)")
    input: Input = Field(description="one user message, or a list of messages")
    instructions: str | None = Field(None, description="a system message before the input")
    max_output_tokens: integer(ge=1, le=INT32_MAX) | None = Field(None, description="the chat max_tokens")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy." + _DEFAULTED)
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling mass." + _DEFAULTED)
    stream: bool = Field(False, description="answer with the Responses API's server-sent events")
    text: ResponsesText | None = Field(None, description="the output's format")
    mode: DecodeMode | None = Field(None, description=_MODE)


ResponsesRequest = create_model("ResponsesRequest", __base__=ResponsesFields, __doc__=(
    "POST /v1/responses, text only: served as the chat completion of the same messages. Fields neither OpenAI nor "
    "vLLM defines are accepted and logged as ignored."), **table_fields(ResponsesFields, dict(RESPONSES_REFUSED)))


# -- vLLM's tokenizer endpoints ------------------------------------------------------------------
_OPTIONAL_MODEL = "optional; if given, a served model's name"


class TokenizePromptRequest(Body):
    """POST /tokenize with a prompt."""

    model: str | None = Field(None, description=_OPTIONAL_MODEL)
    prompt: str = Field(description="the text to tokenize")
    add_special_tokens: bool = Field(True, description="add the tokenizer's special tokens (BOS for Llama 3), as vLLM")
    return_token_strs: bool = Field(False, description="also return each token's text")


class TokenizeChatRequest(ChatTemplateFields):
    """POST /tokenize with chat messages."""

    model: str | None = Field(None, description=_OPTIONAL_MODEL)
    messages: Messages = Field(description="rendered with the chat template, as /v1/chat/completions renders them")
    return_token_strs: bool = Field(False, description="also return each token's text")


class DetokenizeRequest(Body):
    """POST /detokenize."""

    model: str | None = Field(None, description=_OPTIONAL_MODEL)
    tokens: TokenIds = Field(description="at most max_model_len token ids")
