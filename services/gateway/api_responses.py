"""The HTTP API's response bodies as pydantic v2 models: what the gateway answers, documented.

The answers themselves are written as plain dicts (``openai_schema``, ``responses_schema``,
``vllm_endpoints``), and a streamed token is a fixed head and tail around its text
(``openai_schema.ChunkWriter``): no model sits on the hot path. These models are the OpenAPI
document's response schemas (``openapi.py``), and the tests hold the gateway's answers to them
(``tests/services/gateway/test_api_models.py``). They forbid unknown fields, so a field the
gateway starts sending is a failing test until it is documented here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length", "abort", "error"]
_FINISH = "why the choice ended: stop (EOS, a stop token or string), length (max_tokens or the context), abort, error"
_STOP_REASON = "vLLM's: the stop string, or the id of the stop_token_ids entry, that ended the choice; else null"


class Answer(BaseModel):
    """A JSON object the gateway writes: every field it sends is declared."""

    model_config = ConfigDict(extra="forbid")


class PromptTokensDetails(Answer):
    cached_tokens: int = Field(ge=0, description="prompt tokens served from the targets' prefix caches")


class Usage(Answer):
    """Token counts: each prompt once, every choice's completion tokens."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    prompt_tokens_details: PromptTokensDetails


class Speculation(Answer):
    """Extension: how the choice was decoded (docs/speculation.md). For AR only `mode` and `rounds` mean much."""

    mode: Literal["ssd", "sd", "ar"] = Field(description="the mode actually used (the last one, if it changed)")
    transport: str = Field(description="of the target-draft exchange (grpc, unix, torch_distributed ...); "
                                       "\"\" without a draft")
    rounds: int = Field(ge=0, description="target decode steps (verify rounds; AR steps count too)")
    spec_rounds: int = Field(ge=0, description="rounds with speculation (draft_tokens / lookahead_k)")
    lookahead_k: int = Field(ge=0, description="K, draft tokens per round (the last one, if adapted)")
    tokens_per_round: float = Field(ge=0, description="committed tokens per round (recovery and bonus tokens included)")
    tokens_per_round_histogram: list[int] = Field(description="index i: rounds that committed i tokens")
    accepted_per_position: list[int] = Field(description="index i: rounds whose draft token i + 1 was accepted")
    acceptance_per_position: list[float] = Field(description="accepted_per_position / spec_rounds")
    draft_tokens: int = Field(ge=0, description="draft tokens proposed")
    accepted_draft_tokens: int = Field(ge=0, description="of which accepted")
    cache_hits: int = Field(ge=0, description="rounds whose speculation-cache lookup hit")
    cache_misses: int = Field(ge=0)
    cache_hit_rate: float = Field(ge=0, le=1)
    backups_jit: int = Field(ge=0, description="rounds served by the JIT backup")
    backups_fast: int = Field(ge=0, description="rounds served by the fast backup")
    ar_fallbacks: int = Field(ge=0, description="times the request fell back to AR (draft lost or gated)")
    fallback_rounds: int = Field(ge=0, description="rounds decoded AR after such fallbacks")
    policy_rounds: int = Field(ge=0, description="rounds decoded AR because speculation did not pay at the batch "
                                                 "size (the speculation governor)")
    sync_rounds: int = Field(ge=0, description="SSD: rounds run as synchronous SD (the governor)")
    draft_time_s: float = Field(ge=0, description="the target's wait on draft replies")
    verify_time_s: float = Field(ge=0, description="the target's verify forwards")
    draft_build_time_s: float = Field(ge=0, description="the draft's cache building (off the critical path)")


# -- log probabilities ---------------------------------------------------------------------------
class CompletionLogprobs(Answer):
    """Completions' `logprobs`: per position its token's text, log probability, the most likely
    alternatives (token text -> log probability, the token's own included) and text offset. With
    echo the prompt's positions come first, the first one's log probability and alternatives null.
    Log probabilities below -9999 are sent as -9999."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class TopLogprob(Answer):
    token: str
    logprob: float
    bytes: list[int] = Field(description="the token text's UTF-8 bytes")


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="the top_logprobs most likely tokens at this position")


class ChatLogprobs(Answer):
    """Chat's `logprobs`: one entry per output token."""

    content: list[ChatTokenLogprob]


# -- completions and chat completions ------------------------------------------------------------
class CompletionChoice(Answer):
    index: int = Field(ge=0, description="prompt index x n + j")
    text: str = Field(description="the output (after the prompt's text, with echo)")
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason = Field(description=_FINISH)
    stop_reason: str | int | None = Field(description=_STOP_REASON)
    speculation: Speculation | None = None


class AssistantMessage(Answer):
    role: Literal["assistant"]
    content: str


class ChatChoice(Answer):
    index: int = Field(ge=0)
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason = Field(description=_FINISH)
    stop_reason: str | int | None = Field(description=_STOP_REASON)
    speculation: Speculation | None = None


class CompletionResponse(Answer):
    """POST /v1/completions' answer."""

    id: str
    object: Literal["text_completion"]
    created: int = Field(description="Unix seconds")
    model: str = Field(description="the served model's (first) name")
    choices: list[CompletionChoice]
    usage: Usage


class ChatCompletionResponse(Answer):
    """POST /v1/chat/completions' answer."""

    id: str
    object: Literal["chat.completion"]
    created: int = Field(description="Unix seconds")
    model: str = Field(description="the served model's (first) name")
    choices: list[ChatChoice]
    usage: Usage


# -- streamed chunks (server-sent events: one `data: {chunk}` each) ------------------------------
_RUNNING = "with stream_options.include_usage, the last chunk's (no choices); with continuous_usage_stats, every chunk's"


class CompletionChunkChoice(Answer):
    index: int = Field(ge=0)
    text: str
    logprobs: CompletionLogprobs | None = Field(description="the chunk's tokens', when asked")
    finish_reason: FinishReason | None = Field(description="set on the choice's last chunk")
    stop_reason: str | int | None = Field(None, description=_STOP_REASON + " (last chunk)")
    speculation: Speculation | None = Field(None, description="on the choice's last chunk")


class CompletionChunk(Answer):
    """A streamed completion's chunk: one per token (or round), then each choice's last chunk, then
    the usage chunk if asked, then `data: [DONE]`."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = Field(None, description=_RUNNING)


class ChatDelta(Answer):
    role: Literal["assistant"] | None = Field(None, description="the choice's first chunk only")
    content: str | None = None


class ChatChunkChoice(Answer):
    index: int = Field(ge=0)
    delta: ChatDelta
    logprobs: ChatLogprobs | None = Field(description="the chunk's tokens', when asked")
    finish_reason: FinishReason | None = Field(description="set on the choice's last chunk")
    stop_reason: str | int | None = Field(None, description=_STOP_REASON + " (last chunk)")
    speculation: Speculation | None = Field(None, description="on the choice's last chunk")


class ChatCompletionChunk(Answer):
    """A streamed chat completion's chunk: each choice's role chunk, one per token (or round), each
    choice's last chunk, the usage chunk if asked, then `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(None, description=_RUNNING)


# -- /v1/responses -------------------------------------------------------------------------------
class OutputText(Answer):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] = Field(description="always empty")
    logprobs: list[Any] = Field(description="always empty")


class OutputMessage(Answer):
    type: Literal["message"]
    id: str
    status: Literal["in_progress", "completed"]
    role: Literal["assistant"]
    content: list[OutputText]


class InputTokensDetails(Answer):
    cached_tokens: int = Field(ge=0, description="input tokens served from the targets' prefix caches")


class OutputTokensDetails(Answer):
    reasoning_tokens: int = Field(ge=0, description="always 0: reasoning is not separated")


class ResponsesUsage(Answer):
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    input_tokens_details: InputTokensDetails
    output_tokens_details: OutputTokensDetails


class IncompleteDetails(Answer):
    reason: Literal["max_output_tokens"]


class TextFormatType(Answer):
    type: Literal["text"]


class JsonObjectFormatType(Answer):
    type: Literal["json_object"]


class JsonSchemaFormatType(Answer):
    type: Literal["json_schema"]
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseText(Answer):
    format: TextFormatType | JsonObjectFormatType | JsonSchemaFormatType = Field(description="as the request's text.format")


class ResponsesResponse(Answer):
    """POST /v1/responses' answer (and, streamed, the `response` of its created, in_progress,
    completed and incomplete events). Request fields it repeats are as sent."""

    id: str
    object: Literal["response"]
    created_at: int = Field(description="Unix seconds")
    status: Literal["in_progress", "completed", "incomplete"] = Field(description=(
        "incomplete: max_output_tokens cut the output"))
    model: str
    output: list[OutputMessage] = Field(description="the assistant's message (none while in progress)")
    error: None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    parallel_tool_calls: bool
    tool_choice: Literal["none"]
    tools: list[Any]
    text: ResponseText
    truncation: Literal["disabled"]
    store: bool
    previous_response_id: None
    reasoning: None
    metadata: dict[str, Any]
    usage: ResponsesUsage | None = Field(description="null while in progress")


# -- models, tokenizer, operations, errors -------------------------------------------------------
class ModelCard(Answer):
    """The served model under one of its served names."""

    id: str = Field(description="the name asked for (a served name)")
    object: Literal["model"]
    created: int = Field(description="Unix seconds: when the gateway started")
    owned_by: str
    root: str = Field(description="the first served name (the one responses carry)")
    max_model_len: int = Field(ge=1, description="the context, in tokens")
    sampling_defaults: dict[str, Any] = Field(description=(
        "the defaults requests that leave these fields unset get (from the model's generation_config.json, "
        "--generation-config); max_tokens is a bound. Empty: OpenAI's defaults"))


class ModelList(Answer):
    object: Literal["list"]
    data: list[ModelCard] = Field(description="the served model, once per served name")


class TokenizeResponse(Answer):
    count: int = Field(ge=0)
    max_model_len: int = Field(ge=1)
    tokens: list[int]
    token_strs: list[str] | None = Field(description="each token's text, with return_token_strs")


class DetokenizeResponse(Answer):
    prompt: str = Field(description="the text, special tokens included")


class Version(Answer):
    version: str = Field(description="the Saguaro version")


class Liveness(Answer):
    status: Literal["ok"]


class PrefixIndexState(Answer):
    backend: str
    available: bool


class Readiness(Answer):
    ready: bool = Field(description="a healthy target and the model facts known")
    healthy_targets: int = Field(ge=0)
    targets: int = Field(ge=0)
    prefix_index: PrefixIndexState | None = Field(description="null without prefix routing")


class ErrorDetail(Answer):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, rate_limit_error, "
                                  "server_error ...")
    param: str | None = Field(description="the offending request field (messages[0].content ...), when one is")
    code: str | None = Field(description="the gRPC status name in lower case (invalid_argument ...), when one is")


class Error(Answer):
    """OpenAI's error shape. In a stream, an error after the first chunk is a `data:` event of this shape."""

    error: ErrorDetail
