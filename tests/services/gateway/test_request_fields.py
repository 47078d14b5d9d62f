"""The field table (services/gateway/request_fields.py) on its own: every field of vLLM's
CompletionRequest / ChatCompletionRequest is honoured, harmless, or refused unless neutral; a
field nobody defines passes with one warning."""

from __future__ import annotations

import logging

import pytest

from saguaro.services.gateway.errors import GatewayError
from saguaro.services.gateway.request_fields import HARMLESS, HONOURED, REFUSED, check_fields

# The request fields of vLLM's OpenAI server (vllm/entrypoints/openai: CompletionRequest and
# ChatCompletionRequest, the OpenAI ones and vLLM's extras, as of late 2025, plus the guided_*
# spellings of earlier releases).
VLLM_COMPLETION = """model prompt prompt_embeds best_of echo frequency_penalty logit_bias logprobs max_tokens n
    presence_penalty seed stop stream stream_options suffix temperature top_p user use_beam_search top_k min_p
    repetition_penalty length_penalty stop_token_ids include_stop_str_in_output ignore_eos min_tokens
    skip_special_tokens spaces_between_special_tokens truncate_prompt_tokens truncation_side allowed_token_ids
    prompt_logprobs logprob_token_ids bad_words add_special_tokens response_format structured_outputs guided_json
    guided_regex guided_choice guided_grammar guided_decoding_backend guided_whitespace_pattern priority request_id
    logits_processors return_tokens_as_token_ids return_token_ids return_token_offsets cache_salt kv_transfer_params
    ec_transfer_params vllm_xargs repetition_detection thinking_token_budget""".split()
VLLM_CHAT = """messages model frequency_penalty logit_bias logprobs top_logprobs max_tokens max_completion_tokens n
    presence_penalty response_format seed stop stream stream_options temperature top_p tools tool_choice
    reasoning_effort include_reasoning parallel_tool_calls user best_of use_beam_search top_k min_p
    repetition_penalty length_penalty stop_token_ids include_stop_str_in_output ignore_eos min_tokens
    skip_special_tokens spaces_between_special_tokens truncate_prompt_tokens prompt_logprobs allowed_token_ids
    bad_words echo add_generation_prompt continue_final_message add_special_tokens documents chat_template
    chat_template_kwargs mm_processor_kwargs structured_outputs guided_json guided_regex guided_choice
    guided_grammar structural_tag guided_decoding_backend guided_whitespace_pattern priority request_id
    logits_processors return_tokens_as_token_ids return_token_ids cache_salt kv_transfer_params vllm_xargs
    max_repetition_pattern_size min_repetition_pattern_size repetition_min_count""".split()


@pytest.mark.parametrize("kind, fields", [("completions", VLLM_COMPLETION), ("chat", VLLM_CHAT)])
def test_every_vllm_field_has_a_place_in_the_table(kind, fields):
    assert not [f for f in fields if f not in HONOURED[kind] and f not in HARMLESS and f not in REFUSED]


def test_the_table_is_consistent():
    for kind in ("completions", "chat"):
        assert not HONOURED[kind] & set(REFUSED) and not HONOURED[kind] & HARMLESS
    assert not HARMLESS & set(REFUSED)


@pytest.mark.parametrize("kind", ["completions", "chat"])
def test_neutral_values_and_nulls_pass(kind):
    body = {name: refusal.neutral[0] if refusal.neutral else None for name, refusal in REFUSED.items()}
    check_fields(kind, body)
    check_fields(kind, dict.fromkeys(REFUSED))


@pytest.mark.parametrize("name, value", [
    ("length_penalty", 0.5), ("guided_decoding_backend", "xgrammar"), ("structural_tag", {"type": "x"}),
    ("bad_words", ["x"]), ("skip_special_tokens", False), ("prompt_logprobs", 1),
    ("return_tokens_as_token_ids", True), ("use_beam_search", True), ("guided_whitespace_pattern", " "),
    ("cache_salt", "x"),
    ("priority", 1), ("best_of", False),
])
def test_other_values_are_refused_naming_the_field(name, value):
    with pytest.raises(GatewayError) as refused:
        check_fields("completions", {"model": "m", name: value})
    assert refused.value.http_status == 400 and refused.value.param == name
    assert refused.value.message.startswith(f"{name}: ")


def test_what_a_parser_honours_is_never_refused():
    for kind in ("completions", "chat", "tokenize_prompt", "tokenize_chat"):
        check_fields(kind, {"add_special_tokens": True})


def test_unknown_fields_pass_with_one_warning(caplog):
    caplog.set_level(logging.WARNING, logger="saguaro.services.gateway.request_fields")
    check_fields("chat", {"model": "m", "messages": [], "frobnicate": 1, "user": "u", "metadata": {"a": "b"},
                          **{f"x{i}": i for i in range(12)}})
    [record] = caplog.records
    message = record.getMessage()
    assert "'frobnicate'" in message and "and 3 more" in message
    assert "user" not in message and "metadata" not in message and "messages" not in message
    caplog.clear()
    check_fields("chat", {"model": "m", "messages": [], "user": "u"})
    assert not caplog.records
