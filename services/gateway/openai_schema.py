"""OpenAI request bodies -> validated gateway requests; gateway results -> OpenAI JSON.

Pure functions (no I/O), so every refusal is easy to test. Refusals are ``GatewayError``
INVALID_ARGUMENT (HTTP 400) whose message and ``param`` name the field. A body's types and
shapes are its model's (``api_models``, checked by ``api_validation.validated``); what a model
cannot state (the served model's vocabulary and context, stop strings, the chat template's
arguments) is checked here. Which fields are honoured, refused unless neutral, or ignored is one
table: ``request_fields``.

Extensions (vLLM-style, optional): ``top_k``, ``seed``, ``stop_token_ids``, ``ignore_eos``,
``include_stop_str_in_output``, vLLM's logits processors (``presence_penalty``, ``frequency_penalty``,
``repetition_penalty``, ``min_p``, ``min_tokens``, ``logit_bias``), ``mode`` (``ssd`` / ``sd`` / ``ar``: per-request opt-out of speculation) and
``stream_tokens_individually`` (default true: one SSE chunk per token). Responses carry a
``speculation`` object per choice (in streams: on the chunk with the finish reason), and vLLM's
``stop_reason`` (the stop string or stop token id that ended the choice, else null). ``n`` choices per prompt are
served by ``choices.py``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from saguaro.errors import InvalidRequestError
from saguaro.request_rules import check_stop_strings, processor_problem
from saguaro.services.gateway.api_models import (ChatCompletionRequest, ChatMessage, ChatTemplateFields,
                                                 CompletionRequest, GenerationFields, StreamOptions)
from saguaro.services.gateway.api_validation import validated
from saguaro.services.gateway.errors import invalid
from saguaro.services.gateway.prepare import Preparer, check_vocabulary
from saguaro.services.gateway.request_fields import check_fields
from saguaro.services.gateway.structured_fields import read_structured_output
from saguaro.services.gateway.tokenization import ChatOptions
from saguaro.v1 import inference_pb2 as pb
from saguaro.wire import MODE_TO_PROTO

# apply_chat_template's own arguments: chat_template_kwargs cannot set them (they have fields)
TEMPLATE_ARGUMENTS = frozenset({"conversation", "messages", "tools", "documents", "chat_template", "tokenize",
                                "add_generation_prompt", "continue_final_message", "return_dict", "padding",
                                "truncation", "max_length", "return_tensors", "return_assistant_tokens_mask",
                                "tokenizer_kwargs"})
FLOAT32_TINY = 2.0**-149  # the smallest positive float32 (SamplingParams.top_p is a float)
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions (chat: the rest of the context)


@dataclass
class OpenAIRequest:
    kind: str  # "completions" | "chat"
    prompts: list[list[int]]  # token ids, one per prompt
    sampling: pb.SamplingParams
    decode_mode: int
    stream: bool
    include_usage: bool  # a final usage chunk
    tokens_individually: bool
    n: int = 1  # choices per prompt
    continuous_usage: bool = False  # usage (running totals) on every chunk
    # Alternatives per position of the log probabilities asked for (completions' ``logprobs``,
    # chat's ``top_logprobs`` with ``logprobs: true``); None: none asked (logprobs_json.py).
    logprobs: int | None = None
    echo: bool = False  # completions: the prompt's text (and log probabilities) before the output
    echoed: dict[str, Any] | None = None  # /v1/responses: the request fields its answer repeats
    # completions with echo: each prompt's text as sent (None: token ids), which vLLM echoes as
    # given, without the special tokens (BOS) tokenizing added
    echo_texts: list[str | None] | None = None


def unicode_text(text: str, param: str) -> str:
    """``text`` if it is valid Unicode. JSON's escapes can spell a lone surrogate ("\\ud800"),
    which json.loads accepts but no tokenizer can encode (it was a 500)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid(f"{param} is not valid Unicode: {exc.reason} at character {exc.start}", param) from None
    return text


def _completion_prompts(value: str | list, preparer: Preparer, special: bool) -> list[list[int]]:
    """``prompt`` (validated: a string, token ids, or a batch of either) as token ids. Text gets
    the tokenizer's special tokens when ``special`` (``add_special_tokens``); token ids are sent
    as given (vLLM's rules)."""
    if isinstance(value, str):
        return [preparer.prompt_from_text(unicode_text(value, "prompt"), "prompt", special)]
    if all(isinstance(t, int) for t in value):
        return [list(value)]
    return [preparer.prompt_from_text(unicode_text(item, f"prompt[{i}]"), f"prompt[{i}]", special)
            if isinstance(item, str) else list(item) for i, item in enumerate(value)]


def _prompt_texts(value: str | list) -> list[str | None]:
    """The text of each prompt of an (already parsed) ``prompt``; None for token ids."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(t, int) for t in value):
        return [None]
    return [item if isinstance(item, str) else None for item in value]


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """``messages`` (validated) as the chat template takes them (text parts joined), for chat
    completions and ``/tokenize`` alike."""
    out = []
    for i, message in enumerate(messages):
        content = message.content if isinstance(message.content, str) else "".join(p.text for p in message.content)
        out.append({"role": message.role, "content": unicode_text(content, f"messages[{i}].content")})
    return out


def chat_options(request: ChatTemplateFields) -> ChatOptions:
    """vLLM's chat template fields (chat completions and ``/tokenize`` with messages), with its
    defaults: a generation prompt (continuing the final message instead needs
    ``add_generation_prompt: false``: both is an error, as in vLLM), the template's extra
    variables, no special tokens beyond the template's."""
    if request.continue_final_message and request.add_generation_prompt:
        raise invalid("continue_final_message and add_generation_prompt cannot both be true: set "
                      "add_generation_prompt to false to continue the final message", "continue_final_message")
    kwargs = request.chat_template_kwargs
    taken = sorted(TEMPLATE_ARGUMENTS & kwargs.keys())
    if taken:
        raise invalid(f"chat_template_kwargs cannot set {', '.join(taken)}: use the request field of that name",
                      "chat_template_kwargs")
    return ChatOptions(request.add_generation_prompt, request.continue_final_message, kwargs,
                       request.add_special_tokens)


def parse_request(kind: str, body: Any, preparer: Preparer) -> OpenAIRequest:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    body = preparer.defaults.fill(body)
    request = validated(CompletionRequest if kind == "completions" else ChatCompletionRequest, body)
    facts = preparer.facts
    facts.check_model(request.model)
    check_fields(kind, body)
    if kind == "completions":
        # vLLM's default: the tokenizer's special tokens (BOS); chat's template carries its own
        prompts = _completion_prompts(request.prompt, preparer, request.add_special_tokens)
        prompts = [preparer.check_prompt_ids(p, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
                   for i, p in enumerate(prompts)]
        max_tokens_name, asked = "max_tokens", request.max_tokens
        default_max: int | None = DEFAULT_COMPLETION_TOKENS
    else:
        messages = chat_messages(request.messages)
        preparer.check_text_size([m["content"] for m in messages], "messages")
        prompts = [preparer.check_prompt_ids(preparer.tokenizer.chat_prompt(messages, chat_options(request)),
                                             "messages")]
        chosen = request.max_completion_tokens is not None
        max_tokens_name = "max_completion_tokens" if chosen else "max_tokens"
        asked = request.max_completion_tokens if chosen else request.max_tokens
        default_max = None
    limit = facts.max_model_len
    if asked is not None and asked > limit:
        raise invalid(f"{max_tokens_name} must be between 1 and {limit} (the model's context), got {asked}",
                      max_tokens_name)
    max_tokens = preparer.defaults.bound(default_max if asked is None else asked)
    for prompt in prompts:
        if max_tokens is not None and len(prompt) + max_tokens > limit:
            raise invalid(f"the model's context is {limit} tokens, but {len(prompt)} prompt tokens + {max_tokens_name} "
                          f"{max_tokens} = {len(prompt) + max_tokens}: lower {max_tokens_name} or shorten the prompt",
                          max_tokens_name)
    sampling = pb.SamplingParams(
        temperature=request.temperature,
        # (a top_p under float32's smallest positive value would be sent as 0, which means "off")
        top_p=max(request.top_p, FLOAT32_TINY),
        top_k=max(0, request.top_k),
        stop_token_ids=_stop_token_ids(request.stop_token_ids, facts.vocab_size),
        stop=_stop_strings(request.stop),
        include_stop_str_in_output=request.include_stop_str_in_output,
        ignore_eos=request.ignore_eos,
    )
    # None: until the context is full (chat without max_tokens).
    sampling.max_tokens = max_tokens if max_tokens is not None else limit
    _logits_processors(request, sampling, facts.vocab_size)
    grammar = read_structured_output(request)
    if grammar is not None:
        sampling.structured_output.CopyFrom(grammar)
    logprobs, echo = _logprobs(request)
    if (logprobs is not None or echo) and not preparer.tokenizer.available:
        name = "echo" if echo else "logprobs"
        raise invalid(f"{name}: the served model has no tokenizer, so tokens cannot be shown as text", name)
    if logprobs is not None:
        sampling.logprobs = logprobs
        if echo:
            sampling.prompt_logprobs = logprobs
    if request.seed is not None:
        sampling.seed = request.seed
    # (vLLM sends running usage only with include_usage too; alone it would be silently ignored)
    options = request.stream_options or StreamOptions()
    echo_texts = _prompt_texts(request.prompt) if echo else None
    return OpenAIRequest(kind, prompts, sampling, MODE_TO_PROTO.get(request.mode, pb.DECODE_MODE_DEFAULT),
                         request.stream, options.include_usage, request.stream_tokens_individually, request.n,
                         options.continuous_usage_stats, logprobs, echo, echo_texts=echo_texts)


def _logprobs(request: CompletionRequest | ChatCompletionRequest) -> tuple[int | None, bool]:
    """The alternatives asked for (None: no log probabilities) and ``echo``, with vLLM's checks:
    completions' ``logprobs`` is a count; chat's is a boolean whose count is ``top_logprobs``,
    which needs it."""
    if isinstance(request, CompletionRequest):
        return request.logprobs, request.echo
    if request.echo:
        raise invalid("echo: chat completions do not echo the last message; use /v1/completions with echo", "echo")
    top = request.top_logprobs
    if top and not request.logprobs:
        raise invalid("top_logprobs: set logprobs to true to use top_logprobs", "top_logprobs")
    return (top or 0) if request.logprobs else None, False


PROCESSOR_FIELDS = ("presence_penalty", "frequency_penalty", "repetition_penalty", "min_p")


def _logits_processors(request: GenerationFields, sampling: pb.SamplingParams, vocab: int) -> None:
    """vLLM's ``presence_penalty``, ``frequency_penalty``, ``repetition_penalty``, ``min_p``,
    ``min_tokens`` and ``logit_bias`` (token ids as string keys, as OpenAI's) into ``sampling``;
    the ranges are ``saguaro.request_rules``' (vLLM's), refused naming the field."""
    bias = _logit_bias(request.logit_bias, vocab)
    problem = processor_problem(request.presence_penalty, request.frequency_penalty, request.repetition_penalty,
                                request.min_p, request.min_tokens, sampling.max_tokens, bias)
    if problem is not None:
        raise invalid(problem[1], problem[0])
    for name in PROCESSOR_FIELDS:
        if name in request.model_fields_set:
            setattr(sampling, name, getattr(request, name))
    if request.min_tokens:
        sampling.min_tokens = request.min_tokens
    sampling.logit_bias.update(bias)


def _logit_bias(value: dict[str, float] | None, vocab: int) -> dict[int, float]:
    """``logit_bias`` (validated: string keys, finite numbers) by token id, inside the vocabulary."""
    if value is None:
        return {}
    bias = {}
    for key, number in value.items():
        try:
            token = int(key)
        except ValueError:
            raise invalid(f"logit_bias keys must be token ids, got {json.dumps(key)[:50]}", "logit_bias") from None
        bias[token] = number
    check_vocabulary("logit_bias token ids", bias, vocab, "logit_bias")
    return bias


def _stop_token_ids(value: list[int] | None, vocab: int) -> list[int]:
    if value is None:
        return []
    check_vocabulary("stop_token_ids", value, vocab, "stop_token_ids")
    return value


def _stop_strings(value: str | list[str] | None) -> list[str]:
    """OpenAI's ``stop``: one string or a list of them (null, and the empty string clients send
    for "no stop", mean none)."""
    stops = [] if value in (None, "") else [value] if isinstance(value, str) else value
    try:
        check_stop_strings(stops)
    except InvalidRequestError as exc:
        raise invalid(str(exc), "stop") from None
    return stops


def stop_reason(final: pb.GenerateFinal, stop_token_ids: Collection[int]) -> str | int | None:
    """vLLM's ``stop_reason``: the stop string that ended the choice, or the id of the request's
    ``stop_token_ids`` entry that did; None otherwise (EOS, length)."""
    if final.HasField("stop_string"):
        return final.stop_string
    if final.HasField("stop_token_id") and final.stop_token_id in stop_token_ids:
        return final.stop_token_id
    return None


# -- responses ----------------------------------------------------------------------------------
def usage_json(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage; ``cached_tokens``: prompt tokens the targets' prefix caches served."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def prompt_usage(choices: Iterable[tuple[bool, pb.GenerateFinal]]) -> tuple[int, int]:
    """Prompt and cached tokens of a request's ``(leads, final)`` choices: each prompt counts
    once, by its leading choice (as OpenAI and vLLM count)."""
    leading = [final.usage for leads, final in choices if leads]
    return sum(u.prompt_tokens for u in leading), sum(u.cached_prompt_tokens for u in leading)


def choice_json(kind: str, index: int, text: str, finish_reason: str, speculation: dict | None,
                stop_reason: str | int | None = None, logprobs: dict | None = None) -> dict:
    choice: dict[str, Any] = {"index": index}
    if kind == "completions":
        choice["text"] = text
    else:
        choice["message"] = {"role": "assistant", "content": text}
    choice.update(logprobs=logprobs, finish_reason=finish_reason, stop_reason=stop_reason)
    if speculation is not None:
        choice["speculation"] = speculation
    return choice


def response_json(kind: str, response_id: str, created: int, model: str, choices: list[dict],
                  usage: dict[str, int]) -> dict:
    return {"id": response_id, "object": "text_completion" if kind == "completions" else "chat.completion",
            "created": created, "model": model, "choices": choices, "usage": usage}


class ChunkWriter:
    """Server-sent-event bytes of a streamed response's choices. Token chunks are a fixed head
    (per choice index) and tail around the JSON-escaped text, so a streamed token costs one
    ``json.dumps`` of a string (and one of the usage, when every chunk carries it)."""

    def __init__(self, kind: str, response_id: str, created: int, model: str, choices: int = 1):
        self.kind = kind
        self.object = "text_completion" if kind == "completions" else "chat.completion.chunk"
        self.base = {"id": response_id, "object": self.object, "created": created, "model": model}
        envelope = json.dumps(self.base)[:-1]  # without the closing brace
        field = '"text": ' if kind == "completions" else '"delta": {"content": '
        self._heads = [f'data: {envelope}, "choices": [{{"index": {i}, {field}'.encode() for i in range(choices)]
        self._tail = (b'' if kind == "completions" else b'}') + b', "logprobs": null, "finish_reason": null}]'

    def text(self, piece: str, index: int = 0, usage: dict[str, int] | None = None, logprobs: dict | None = None) -> bytes:
        """A chunk of text, with its tokens' ``logprobs`` object when the request asked."""
        if logprobs is None:
            return self._heads[index] + json.dumps(piece).encode() + self._tail + self._close(usage)
        content = {"text": piece} if self.kind == "completions" else {"delta": {"content": piece}}
        return self._chunk({"index": index, **content, "logprobs": logprobs, "finish_reason": None}, usage)

    @staticmethod
    def _close(usage: dict[str, int] | None) -> bytes:
        return b"}\n\n" if usage is None else b', "usage": ' + json.dumps(usage).encode() + b"}\n\n"

    def event(self, payload: dict) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    def _chunk(self, choice: dict, usage: dict[str, int] | None) -> bytes:
        payload = {**self.base, "choices": [choice]}
        if usage is not None:
            payload["usage"] = usage
        return self.event(payload)

    def role(self, index: int = 0, usage: dict[str, int] | None = None) -> bytes:
        """A chat choice's first chunk (the assistant role, no content yet)."""
        return self._chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None}, usage)

    def finish(self, finish_reason: str, speculation: dict, index: int = 0, usage: dict[str, int] | None = None,
               stop_reason: str | int | None = None) -> bytes:
        choice: dict[str, Any] = {"index": index, "logprobs": None, "finish_reason": finish_reason,
                                  "stop_reason": stop_reason, "speculation": speculation}
        choice["text" if self.kind == "completions" else "delta"] = "" if self.kind == "completions" else {}
        return self._chunk(choice, usage)

    def usage(self, usage: dict[str, int]) -> bytes:
        return self.event({**self.base, "choices": [], "usage": usage})

    def error(self, message: str) -> bytes:
        return self.event({"error": {"message": message, "type": "server_error", "param": None, "code": "target_error"}})

    DONE = b"data: [DONE]\n\n"
