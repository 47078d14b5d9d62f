"""Which request fields the OpenAI front honours, refuses, or ignores: one table.

vLLM's users send vLLM's fields (its ``CompletionRequest`` / ``ChatCompletionRequest``) and
OpenAI's. A field the gateway silently dropped would change the output without a word, so each
field the gateway does not honour is listed in ``REFUSED`` with its neutral values (the ones
that ask for nothing, such as ``min_p`` 0): any other value is a 400 naming the field. Fields
that change no output (``user``, ``metadata`` ...) are ``HARMLESS``. A field no one defines is
accepted with one warning per request, as vLLM does, so a client's extra field breaks nothing
but leaves a trace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saguaro.services.gateway.errors import invalid
from saguaro.services.gateway.structured_fields import FIELDS as STRUCTURED_FIELDS

log = logging.getLogger(__name__)

# Per kind of body, the fields its parser reads: ``openai_schema.parse_request`` (the Saguaro
# extensions ``mode`` and ``stream_tokens_individually`` included) and ``vllm_endpoints``.
_GENERATION = frozenset({
    "model", "max_tokens", "n", "stream", "stream_options", "temperature", "top_p", "top_k", "seed",
    "stop", "include_stop_str_in_output", "stop_token_ids", "ignore_eos", "mode", "stream_tokens_individually",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "min_p", "min_tokens", "logit_bias",
    *STRUCTURED_FIELDS})
_CHAT_TEMPLATE = ("add_generation_prompt", "continue_final_message", "chat_template_kwargs")
HONOURED = {
    "completions": _GENERATION | {"prompt", "logprobs", "echo", "add_special_tokens"},
    "chat": _GENERATION | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "echo",
                           "add_special_tokens", *_CHAT_TEMPLATE},
    "tokenize_prompt": frozenset({"model", "prompt", "add_special_tokens", "return_token_strs"}),
    "tokenize_chat": frozenset({"model", "messages", "add_special_tokens", "return_token_strs", *_CHAT_TEMPLATE}),
    "detokenize": frozenset({"model", "tokens"}),
    # /v1/responses (responses_schema.py): read there, then served as a chat completion
    "responses": frozenset({"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream",
                            "text", "mode"}),
}

# Accepted with any value: they change nothing in the output (vLLM ignores them too, or they are
# bookkeeping for OpenAI's platform). ``parallel_tool_calls`` only matters with ``tools``, which
# are refused; ``prediction`` only speeds OpenAI up; ``return_token_offsets`` is for vLLM's
# render endpoints.
HARMLESS = frozenset({
    "user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier", "parallel_tool_calls",
    "prediction", "return_token_offsets"})


@dataclass(frozen=True)
class Refusal:
    """A field the gateway cannot honour: ``neutral`` values pass (null always does), any other
    is refused with ``"{field}: {why}"``."""

    why: str
    neutral: tuple = ()

    def accepts(self, value: Any) -> bool:
        return value is None or any(_same(value, n) for n in self.neutral)


def _same(value: Any, neutral: Any) -> bool:
    """JSON equality that keeps booleans and numbers apart (Python has ``0 == False``), so a
    ``logprobs`` of 0 (the chosen token's log probability) is not mistaken for ``false``."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return value is neutral
    return isinstance(value, (int, float)) == isinstance(neutral, (int, float)) and value == neutral


_LOGPROBS = "only the logprobs of the sampled tokens (and the prompt's, with echo) are returned"
_STRUCTURED = "only structured_outputs, response_format and guided_json/regex/choice/grammar are supported"
_TEMPLATE = "per-request chat templates are not supported (the gateway's --chat-template FILE sets one)"
_TRANSFER = "disaggregated serving parameters are not supported"
_REPETITION = "repetition detection is not supported"

# field -> why it is refused, and its neutral values. vLLM's defaults are the neutral values.
REFUSED: Mapping[str, Refusal] = {
    # sampling and output (OpenAI)
    "suffix": Refusal("suffix is not supported", ("",)),
    "best_of": Refusal("only 1 is supported", (1,)),
    "tools": Refusal("tool calls are not supported", ([],)),
    "tool_choice": Refusal("tool calls are not supported", ("none", "auto")),
    "functions": Refusal("function calls are not supported", ([],)),
    "function_call": Refusal("function calls are not supported", ("none", "auto")),
    "reasoning_effort": Refusal("reasoning effort is not supported (the chat template gets no such option)"),
    "verbosity": Refusal("verbosity is not supported"),
    "modalities": Refusal("only text output is supported", (["text"],)),
    "audio": Refusal("audio output is not supported"),
    "web_search_options": Refusal("web search is not supported"),
    # sampling (vLLM)
    "use_beam_search": Refusal("beam search is not supported", (False,)),
    "length_penalty": Refusal("length_penalty applies to beam search, which is not supported", (1,)),
    "skip_special_tokens": Refusal("special tokens are always left out of the text (true only)", (True,)),
    "spaces_between_special_tokens": Refusal("special tokens are always left out of the text (true only)", (True,)),
    "truncate_prompt_tokens": Refusal("prompt truncation is not supported; shorten the prompt"),
    "truncation_side": Refusal("prompt truncation is not supported; shorten the prompt"),
    "allowed_token_ids": Refusal("allowed_token_ids is not supported"),
    "bad_words": Refusal("bad_words is not supported", ([],)),
    "prompt_logprobs": Refusal(_LOGPROBS),
    "logprob_token_ids": Refusal(_LOGPROBS, ([],)),
    "logits_processors": Refusal("custom logits processors are not supported", ([],)),
    "thinking_token_budget": Refusal("thinking budgets are not supported", (-1,)),
    "repetition_detection": Refusal(_REPETITION),
    "max_repetition_pattern_size": Refusal(_REPETITION, (0,)),
    "min_repetition_pattern_size": Refusal(_REPETITION, (0,)),
    "repetition_min_count": Refusal(_REPETITION, (0,)),
    # structured output (vLLM)
    "structural_tag": Refusal(_STRUCTURED),
    "guided_decoding_backend": Refusal(_STRUCTURED),
    "guided_whitespace_pattern": Refusal(_STRUCTURED),
    # prompt and chat template (vLLM)
    "chat_template": Refusal(_TEMPLATE),
    "documents": Refusal("documents (retrieval-augmented templates) are not supported", ([],)),
    "mm_processor_kwargs": Refusal("multimodal inputs are not supported", ({},)),
    "prompt_embeds": Refusal("prompt embeddings are not supported; send text or token ids"),
    "include_reasoning": Refusal("reasoning is not separated from the content (true only)", (True,)),
    # serving (vLLM)
    "priority": Refusal("priority scheduling is not supported (0 only)", (0,)),
    "request_id": Refusal("set the request id with the x-request-id header"),
    "cache_salt": Refusal("prefix-cache salting is not supported"),
    "return_tokens_as_token_ids": Refusal(_LOGPROBS, (False,)),
    "return_token_ids": Refusal("token ids are not returned; use the gRPC API for them", (False,)),
    "kv_transfer_params": Refusal(_TRANSFER, ({},)),
    "ec_transfer_params": Refusal(_TRANSFER, ({},)),
    "vllm_xargs": Refusal("vLLM extension arguments are not supported", ({},)),
}

_NOT_STORED = "responses are not stored: send the whole conversation in input"
_TOOLS = "tool calls are not supported"

# /v1/responses' own fields that ask for what the gateway cannot do (its sampling fields are
# the chat ones above; a Responses body carries no others).
RESPONSES_REFUSED: Mapping[str, Refusal] = {
    "store": Refusal(_NOT_STORED + " (store: false only)", (False,)),
    "previous_response_id": Refusal(_NOT_STORED),
    "conversation": Refusal(_NOT_STORED),
    "background": Refusal("background responses are not supported (false only)", (False,)),
    "tools": Refusal(_TOOLS, ([],)),
    "tool_choice": Refusal(_TOOLS, ("none", "auto")),
    "max_tool_calls": Refusal(_TOOLS),
    "include": Refusal("no extra output can be included", ([],)),
    "reasoning": Refusal("reasoning options are not supported"),
    "truncation": Refusal("truncation is not supported (\"disabled\" only)", ("disabled",)),
    "top_logprobs": Refusal("/v1/responses returns no log probabilities (0 only)", (0,)),
    "prompt": Refusal("reusable prompt templates are not supported"),
}

MAX_LOGGED = 10  # unknown field names in one warning (a body may hold thousands)


def check_fields(kind: str, body: dict[str, Any]) -> None:
    """Refuse (400, naming the field) the first refused field with a non-neutral value; log the
    fields nobody defines. ``kind`` is a key of ``HONOURED``: what that body's parser reads is
    never refused (``return_token_strs`` is honoured by ``/tokenize``, unknown elsewhere)."""
    honoured = HONOURED[kind]
    refusals = RESPONSES_REFUSED if kind == "responses" else REFUSED
    unknown = []
    for name, value in body.items():
        if name in honoured:
            continue
        refusal = refusals.get(name)  # (before HARMLESS: /v1/responses refuses store: true)
        if refusal is None:
            if name not in HARMLESS:
                unknown.append(name)
        elif not refusal.accepts(value):
            raise invalid(f"{name}: {refusal.why}", name)
    if unknown:
        names = ", ".join(repr(n[:40]) for n in unknown[:MAX_LOGGED])
        more = f" and {len(unknown) - MAX_LOGGED} more" if len(unknown) > MAX_LOGGED else ""
        log.warning("the following fields were present in the request but ignored: %s%s", names, more)
