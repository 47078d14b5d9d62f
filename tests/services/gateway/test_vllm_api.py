"""The gateway as vLLM's users call it, with the official `openai` client where it applies:
vLLM's request fields are honoured or refused with a 400 naming them (never silently ignored),
fields nobody defines pass with a warning, and vLLM's endpoints (/health, /version, /tokenize,
/detokenize, /v1/models/{id}) answer in vLLM's shapes."""

from __future__ import annotations

import logging

import openai
import pytest

from saguaro import __version__
from saguaro.net import free_port
from saguaro.services.gateway.tokenization import GatewayTokenizer
from saguaro.tokenizer import load_tokenizer

CONTEXT = 64


@pytest.fixture(scope="module")
def gateway(model_dirs, module_targets, start_module_gateway):
    target = module_targets(model_dirs["llama"], max_model_len=CONTEXT)
    return start_module_gateway([target.address])


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(model_dirs):
    return load_tokenizer(model_dirs["llama"])


@pytest.mark.parametrize("field, value", [
    ("bad_words", ["x"]), ("allowed_token_ids", [3]), ("guided_decoding_backend", "xgrammar"), ("structural_tag", {"type": "x"}),
    ("length_penalty", 0.5), ("use_beam_search", True), ("skip_special_tokens", False),
])
def test_vllm_fields_not_honoured_are_400_naming_them(client, field, value):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="llama", prompt="def add(a, b):", max_tokens=2, extra_body={field: value})
    assert refused.value.status_code == 400 and refused.value.body["param"] == field
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={field: value})
    assert refused.value.body["param"] == field


def test_neutral_values_are_served_like_no_value(client):
    plain = client.completions.create(model="llama", prompt="def add(a, b):", max_tokens=4, temperature=0)
    neutral = client.completions.create(
        model="llama", prompt="def add(a, b):", max_tokens=4, temperature=0, presence_penalty=0,
        extra_body={"min_p": 0, "min_tokens": 0, "repetition_penalty": 1, "skip_special_tokens": True,
                    "guided_json": None, "top_k": -1})
    assert neutral.choices[0].text == plain.choices[0].text


def test_unknown_fields_are_served_with_a_warning(client, caplog):
    caplog.set_level(logging.WARNING, logger="saguaro.services.gateway.request_fields")
    chat = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                          extra_body={"made_up_field": 1})
    assert chat.choices[0].finish_reason in ("stop", "length")
    warnings = [r.getMessage() for r in caplog.records if "made_up_field" in r.getMessage()]
    assert len(warnings) == 1 and "ignored" in warnings[0]


def test_model_card(client):
    card = client.models.retrieve("llama")
    assert card.id == "llama" and card.object == "model" and card.max_model_len == CONTEXT
    assert card.model_dump() == client.models.list().data[0].model_dump()
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4")
    assert missing.value.body["type"] == "not_found_error" and "gpt-4" in missing.value.body["message"]


def test_health_and_version(gateway, http, start_gateway):
    health = http(gateway.http_url + "/health")
    assert health.status == 200 and health.body == b""
    assert http(gateway.http_url + "/version").json() == {"version": __version__}
    lonely = start_gateway([f"127.0.0.1:{free_port()}"], wait=False)  # nothing there: never ready
    down = http(lonely.http_url + "/health")
    assert down.status == 503 and down.json()["error"]["type"] == "service_unavailable_error"
    assert "retry-after" in down.headers


def test_tokenize_and_detokenize(gateway, http, tokenizer):
    url = gateway.http_url
    text = "def add(a, b):"
    plain = tokenizer.encode(text, add_special_tokens=False)
    special = tokenizer.encode(text, add_special_tokens=True)
    reply = http(url + "/tokenize", {"model": "llama", "prompt": text})
    assert reply.status == 200, reply.body
    assert reply.json() == {"count": len(special), "max_model_len": CONTEXT, "tokens": special, "token_strs": None}
    without = http(url + "/tokenize", {"prompt": text, "add_special_tokens": False, "return_token_strs": True}).json()
    assert without["tokens"] == plain and without["token_strs"] == tokenizer.convert_ids_to_tokens(plain)
    assert http(url + "/detokenize", {"model": "llama", "tokens": plain}).json() == {"prompt": tokenizer.decode(plain)}

    # messages count as chat completions count them: the same prompt tokens
    messages = [{"role": "user", "content": "hello"}]
    chat = http(url + "/tokenize", {"model": "llama", "messages": messages}).json()
    served = http(url + "/v1/chat/completions", {"model": "llama", "messages": messages, "max_tokens": 1}).json()
    assert chat["count"] == served["usage"]["prompt_tokens"]


def test_the_gateway_tokenizer_adds_special_tokens_only_when_asked():
    """(The tiny test model's tokenizer adds none, so /tokenize's default cannot show it.)"""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<s>": 0, "<unk>": 1, "hello": 2, "world": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = GatewayTokenizer(PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", unk_token="<unk>"))
    assert tokenizer.encode("hello world") == [2, 3]
    assert tokenizer.encode("hello world", add_special_tokens=True) == [0, 2, 3]
    assert tokenizer.decode([0, 2, 3]).startswith("<s>")  # vLLM's /detokenize keeps special tokens


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {"model": "llama"}, "prompt"),
    ("/tokenize", {"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": True,
                   "continue_final_message": True}, "continue_final_message"),
    ("/tokenize", {"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"tokenize": True}},
     "chat_template_kwargs"),
    ("/tokenize", {"messages": [{"role": "user", "content": "x"}], "chat_template": "{{ x }}"}, "chat_template"),
    ("/detokenize", {"tokens": [3, 999_999]}, "tokens"),
    ("/detokenize", {"tokens": "3 4"}, "tokens"),
    ("/detokenize", {"tokens": [3] * (CONTEXT + 1)}, "tokens"),
])
def test_tokenizer_endpoints_refuse_naming_the_field(gateway, http, path, body, param):
    reply = http(gateway.http_url + path, body)
    assert reply.status == 400 and reply.json()["error"]["param"] == param, reply.body


@pytest.mark.parametrize("method, path, status", [("GET", "/tokenize", 405), ("POST", "/version", 405),
                                                   ("GET", "/v2/models", 404), ("GET", "/v1/models/", 404)])
def test_unknown_paths_and_methods_are_json_errors(gateway, http, method, path, status):
    reply = http(gateway.http_url + path, method=method)
    assert reply.status == status and reply.headers["content-type"].startswith("application/json")
    assert path in reply.json()["error"]["message"]
