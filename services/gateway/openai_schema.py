"""OpenAI request bodies -> validated gateway requests; gateway results -> OpenAI JSON.

Pure functions (no I/O), so every refusal is easy to test. Refusals are ``GatewayError``
INVALID_ARGUMENT (HTTP 400) whose message and ``param`` name the field. Which fields are
honoured, refused unless neutral, or ignored is one table: ``request_fields``.

Extensions (vLLM-style, optional): ``top_k``, ``seed``, ``stop_token_ids``, ``ignore_eos``,
``include_stop_str_in_output``, vLLM's logits processors (``presence_penalty``, ``frequency_penalty``,
``repetition_penalty``, ``min_p``, ``min_tokens``, ``logit_bias``), ``mode`` (``ssd`` / ``sd`` / ``ar``: per-request opt-out of speculation) and
``stream_tokens_individually`` (default true: one SSE chunk per token). Responses carry a
``speculation`` object per choice (in streams: on the chunk with the finish reason), and vLLM's
``stop_reason`` (the stop string that ended the choice, else null). ``n`` choices per prompt are
served by ``choices.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from saguaro.errors import InvalidRequestError
from saguaro.request_rules import MAX_LOGPROBS, check_stop_strings, processor_problem
from saguaro.services.gateway.errors import invalid
from saguaro.services.gateway.prepare import Preparer, check_vocabulary
from saguaro.services.gateway.request_fields import check_fields
from saguaro.services.gateway.structured_fields import read_structured_output
from saguaro.services.gateway.tokenization import ChatOptions
from saguaro.v1 import inference_pb2 as pb
from saguaro.wire import MODE_TO_PROTO

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_BATCH = 64
MAX_N = 16  # choices per prompt: each is a full request's work on a target
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


class Fields:
    """Typed access to a JSON object's fields with messages that name the field."""

    def __init__(self, body: dict[str, Any]):
        self.body = body

    def present(self, name: str) -> bool:
        return self.body.get(name) is not None

    def number(self, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not math.isfinite(value)):  # (math.isfinite overflows on huge ints)
            raise invalid(f"{name} must be a number, got {json.dumps(value)[:50]}", name)
        if value < lo or value > hi or (lo_open and value == lo):
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
            raise invalid(f"{name} must be in {interval}, got {str(value)[:40]}", name)
        return float(value)

    def integer(self, name: str, default: int | None, lo: int, hi: int, why: str = "") -> int | None:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"{name} must be an integer, got {json.dumps(value)[:50]}", name)
        if not lo <= value <= hi:
            raise invalid(f"{name} must be between {lo} and {hi}{why}, got {str(value)[:40]}", name)
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise invalid(f"{name} must be true or false, got {json.dumps(value)[:50]}", name)
        return value


def unicode_text(text: str, param: str) -> str:
    """``text`` if it is valid Unicode. JSON's escapes can spell a lone surrogate ("\\ud800"),
    which json.loads accepts but no tokenizer can encode (it was a 500)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid(f"{param} is not valid Unicode: {exc.reason} at character {exc.start}", param) from None
    return text


def _completion_prompts(value: Any, preparer: Preparer, special: bool) -> list[list[int]]:
    """``prompt``: a string, token ids, or a batch of either. Text gets the tokenizer's special
    tokens when ``special`` (``add_special_tokens``); token ids are sent as given (vLLM's rules)."""
    if isinstance(value, str):
        return [preparer.prompt_from_text(unicode_text(value, "prompt"), "prompt", special)]
    if not isinstance(value, list) or not value:
        raise invalid("prompt is required and must not be empty: a string, a list of token ids, or a list of those",
                      "prompt")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return [list(value)]
    if len(value) > MAX_BATCH:
        raise invalid(f"prompt: at most {MAX_BATCH} prompts per request, got {len(value)}", "prompt")
    prompts = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            prompts.append(preparer.prompt_from_text(unicode_text(item, f"prompt[{i}]"), f"prompt[{i}]", special))
        elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            prompts.append(list(item))
        else:
            raise invalid(f"prompt[{i}] must be a string or a list of token ids", f"prompt[{i}]")
    return prompts


def _prompt_texts(value: str | list) -> list[str | None]:
    """The text of each prompt of an (already parsed) ``prompt``; None for token ids."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(t, int) for t in value):
        return [None]
    return [item if isinstance(item, str) else None for item in value]


def chat_messages(value: Any) -> list[dict[str, str]]:
    """``messages`` as the chat template takes them (text parts joined), for chat completions
    and ``/tokenize`` alike."""
    if not isinstance(value, list) or not value:
        raise invalid("messages is required: a non-empty list of {\"role\", \"content\"} objects", "messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"{where} must be an object with role and content", where)
        role = message.get("role")
        if role not in ROLES:
            raise invalid(f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)[:50]}", f"{where}.role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text ones
            texts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise invalid(f"{where}.content[{j}]: only {{\"type\": \"text\", \"text\": ...}} parts are supported",
                                  f"{where}.content")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise invalid(f"{where}.content must be a string (or a list of text parts)", f"{where}.content")
        out.append({"role": role, "content": unicode_text(content, f"{where}.content")})
    return out


def chat_options(fields: Fields) -> ChatOptions:
    """vLLM's chat template fields (chat completions and ``/tokenize`` with messages), with its
    defaults: a generation prompt (continuing the final message instead needs
    ``add_generation_prompt: false``: both is an error, as in vLLM), the template's extra
    variables, no special tokens beyond the template's."""
    continued = fields.boolean("continue_final_message", False)
    prompted = fields.boolean("add_generation_prompt", True)
    if continued and prompted:
        raise invalid("continue_final_message and add_generation_prompt cannot both be true: set "
                      "add_generation_prompt to false to continue the final message", "continue_final_message")
    kwargs = fields.body.get("chat_template_kwargs")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise invalid("chat_template_kwargs must be an object (variable -> value)", "chat_template_kwargs")
    taken = sorted(TEMPLATE_ARGUMENTS & kwargs.keys())
    if taken:
        raise invalid(f"chat_template_kwargs cannot set {', '.join(taken)}: use the request field of that name",
                      "chat_template_kwargs")
    return ChatOptions(prompted, continued, kwargs, fields.boolean("add_special_tokens", False))


def parse_request(kind: str, body: Any, preparer: Preparer) -> OpenAIRequest:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    body = preparer.defaults.fill(body)
    fields = Fields(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model is required: the served model's name (see GET /v1/models)", "model")
    facts = preparer.facts
    facts.check_model(model)
    check_fields(kind, body)
    n = fields.integer("n", 1, 1, MAX_N, " (choices per prompt)")
    stream = fields.boolean("stream", False)
    if kind == "completions":
        # vLLM's default: the tokenizer's special tokens (BOS); chat's template carries its own
        special = fields.boolean("add_special_tokens", True)
        prompts = _completion_prompts(body.get("prompt"), preparer, special)
        prompts = [preparer.check_prompt_ids(p, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
                   for i, p in enumerate(prompts)]
        max_tokens_name = "max_tokens"
        default_max: int | None = DEFAULT_COMPLETION_TOKENS
    else:
        messages = chat_messages(body.get("messages"))
        preparer.check_text_size([m["content"] for m in messages], "messages")
        prompts = [preparer.check_prompt_ids(preparer.tokenizer.chat_prompt(messages, chat_options(fields)),
                                             "messages")]
        max_tokens_name = "max_completion_tokens" if fields.present("max_completion_tokens") else "max_tokens"
        default_max = None
    limit = facts.max_model_len
    max_tokens = preparer.defaults.bound(fields.integer(max_tokens_name, default_max, 1, limit, " (the model's context)"))
    for prompt in prompts:
        if max_tokens is not None and len(prompt) + max_tokens > limit:
            raise invalid(f"the model's context is {limit} tokens, but {len(prompt)} prompt tokens + {max_tokens_name} "
                          f"{max_tokens} = {len(prompt) + max_tokens}: lower {max_tokens_name} or shorten the prompt",
                          max_tokens_name)
    sampling = pb.SamplingParams(
        temperature=fields.number("temperature", 1.0, 0.0, 2.0),
        # (a top_p under float32's smallest positive value would be sent as 0, which means "off")
        top_p=max(fields.number("top_p", 1.0, 0.0, 1.0, lo_open=True), FLOAT32_TINY),
        top_k=max(0, fields.integer("top_k", 0, -1, 2**31 - 1)),
        stop_token_ids=_stop_token_ids(body.get("stop_token_ids"), facts.vocab_size),
        stop=_stop_strings(body.get("stop")),
        include_stop_str_in_output=fields.boolean("include_stop_str_in_output", False),
        ignore_eos=fields.boolean("ignore_eos", False),
    )
    # None: until the context is full (chat without max_tokens).
    sampling.max_tokens = max_tokens if max_tokens is not None else limit
    _logits_processors(fields, sampling, facts.vocab_size)
    grammar = read_structured_output(body)
    if grammar is not None:
        sampling.structured_output.CopyFrom(grammar)
    logprobs, echo = _logprobs(kind, fields)
    if (logprobs is not None or echo) and not preparer.tokenizer.available:
        name = "echo" if echo else "logprobs"
        raise invalid(f"{name}: the served model has no tokenizer, so tokens cannot be shown as text", name)
    if logprobs is not None:
        sampling.logprobs = logprobs
        if echo:
            sampling.prompt_logprobs = logprobs
    seed = fields.integer("seed", None, 0, 2**64 - 1)
    if seed is not None:
        sampling.seed = seed
    mode = body.get("mode")
    if mode is not None and not (isinstance(mode, str) and mode in MODE_TO_PROTO):
        raise invalid(f"mode must be one of ssd, sd, ar (or unset for the server's), got {json.dumps(mode)[:50]}", "mode")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("stream_options must be an object", "stream_options")
    stream_fields = Fields(options or {})
    include_usage = stream_fields.boolean("include_usage", False)
    # (vLLM sends running usage only with include_usage too; alone it would be silently ignored)
    continuous_usage = stream_fields.boolean("continuous_usage_stats", False)
    echo_texts = _prompt_texts(body["prompt"]) if echo else None
    return OpenAIRequest(kind, prompts, sampling, MODE_TO_PROTO.get(mode, pb.DECODE_MODE_DEFAULT), stream,
                         include_usage, fields.boolean("stream_tokens_individually", True), n, continuous_usage,
                         logprobs, echo, echo_texts=echo_texts)


def _logprobs(kind: str, fields: Fields) -> tuple[int | None, bool]:
    """The alternatives asked for (None: no log probabilities) and ``echo``, with vLLM's checks:
    completions' ``logprobs`` is a count; chat's is a boolean whose count is ``top_logprobs``,
    which needs it."""
    if kind == "completions":
        return fields.integer("logprobs", None, 0, MAX_LOGPROBS), fields.boolean("echo", False)
    if fields.boolean("echo", False):
        raise invalid("echo: chat completions do not echo the last message; use /v1/completions with echo", "echo")
    asked = fields.boolean("logprobs", False)
    top = fields.integer("top_logprobs", None, 0, MAX_LOGPROBS)
    if top and not asked:
        raise invalid("top_logprobs: set logprobs to true to use top_logprobs", "top_logprobs")
    return (top or 0) if asked else None, False


def _logits_processors(fields: Fields, sampling: pb.SamplingParams, vocab: int) -> None:
    """vLLM's ``presence_penalty``, ``frequency_penalty``, ``repetition_penalty``, ``min_p``,
    ``min_tokens`` and ``logit_bias`` (token ids as string keys, as OpenAI's) into ``sampling``;
    the ranges are ``saguaro.request_rules``' (vLLM's), refused naming the field."""
    values = {name: fields.number(name, default, -math.inf, math.inf) for name, default in
              (("presence_penalty", 0.0), ("frequency_penalty", 0.0), ("repetition_penalty", 1.0), ("min_p", 0.0))}
    min_tokens = fields.integer("min_tokens", 0, 0, 2**31 - 1)
    bias = _logit_bias(fields.body.get("logit_bias"), vocab)
    problem = processor_problem(values["presence_penalty"], values["frequency_penalty"], values["repetition_penalty"],
                                values["min_p"], min_tokens, sampling.max_tokens, bias)
    if problem is not None:
        raise invalid(problem[1], problem[0])
    for name, value in values.items():
        if fields.present(name):
            setattr(sampling, name, value)
    if min_tokens:
        sampling.min_tokens = min_tokens
    sampling.logit_bias.update(bias)


def _logit_bias(value: Any, vocab: int) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("logit_bias must be an object mapping token ids to biases", "logit_bias")
    bias = {}
    for key, number in value.items():
        try:
            token = int(key)
        except ValueError:
            raise invalid(f"logit_bias keys must be token ids, got {json.dumps(key)[:50]}", "logit_bias") from None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise invalid(f"logit_bias values must be numbers, got {json.dumps(number)[:50]}", "logit_bias")
        bias[token] = float(number)
    check_vocabulary("logit_bias token ids", bias, vocab, "logit_bias")
    return bias


def _stop_token_ids(value: Any, vocab: int) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise invalid("stop_token_ids must be a list of token ids", "stop_token_ids")
    check_vocabulary("stop_token_ids", value, vocab, "stop_token_ids")
    return value


def _stop_strings(value: Any) -> list[str]:
    """OpenAI's ``stop``: one string or a list of them (null, and the empty string clients send
    for "no stop", mean none)."""
    stops = [] if value in (None, "") else [value] if isinstance(value, str) else value
    if not isinstance(stops, list):
        raise invalid("stop must be a string or a list of strings", "stop")
    try:
        check_stop_strings(stops)
    except InvalidRequestError as exc:
        raise invalid(str(exc), "stop") from None
    return stops


def stop_reason(final: pb.GenerateFinal) -> str | None:
    """vLLM's ``stop_reason``: the stop string that ended the choice (None otherwise)."""
    return final.stop_string if final.HasField("stop_string") else None


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
                stop_reason: str | None = None, logprobs: dict | None = None) -> dict:
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
               stop_reason: str | None = None) -> bytes:
        choice: dict[str, Any] = {"index": index, "logprobs": None, "finish_reason": finish_reason,
                                  "stop_reason": stop_reason, "speculation": speculation}
        choice["text" if self.kind == "completions" else "delta"] = "" if self.kind == "completions" else {}
        return self._chunk(choice, usage)

    def usage(self, usage: dict[str, int]) -> bytes:
        return self.event({**self.base, "choices": [], "usage": usage})

    def error(self, message: str) -> bytes:
        return self.event({"error": {"message": message, "type": "server_error", "param": None, "code": "target_error"}})

    DONE = b"data: [DONE]\n\n"
