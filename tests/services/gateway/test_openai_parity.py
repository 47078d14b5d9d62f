"""What users coming from vLLM expect of the OpenAI API, with the official `openai` client against
real gateways and targets, AR and SSD: completions add BOS, generation_config.json's sampling
defaults, chat templates (the tokenizer's, --chat-template, none: 400) and their options,
served-model-name aliases, cached prompt tokens, JSON 404/405 bodies and /v1/responses.

The model is a copy of the tiny Llama whose tokenizer adds BOS as Llama 3's does and ships no
chat template, and whose generation_config.json recommends sampling defaults."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openai
import pytest
from tests_support import add_bos, hf_greedy

from saguaro.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow  # real target (+ draft) services behind gateways

GENERATION_CONFIG = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2, "temperature": 0.0, "top_p": 0.9,
                     "max_new_tokens": 6}
# a template with a variable of its own (chat_template_kwargs) and a generation prompt
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}{% if shout %}!{% endif %}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")
MESSAGES = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]


def _vllm_like(source: str, folder: Path) -> str:
    """``source`` copied to ``folder`` with a BOS-adding tokenizer, no chat template and sampling defaults."""
    shutil.copytree(source, folder)
    add_bos(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    (folder / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    return str(folder)


@pytest.fixture(scope="module")
def folders(model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm_like")
    template = root / "template.jinja"
    template.write_text(TEMPLATE)
    return {"target": _vllm_like(model_dirs["llama"], root / "llama"),
            "draft": _vllm_like(model_dirs["llama_draft_perturbed"], root / "draft"), "template": str(template)}


@pytest.fixture(scope="module", params=["ar", "ssd"])
def stack(request, folders, module_targets, module_drafts, start_module_gateway):
    """Two gateways on one target (AR, or SSD with its draft service): ``auto`` applies the
    model's generation_config.json and has no chat template; ``plain`` has neither defaults
    (vllm) nor the tokenizer's template but --chat-template, and two served names."""
    draft = module_drafts(folders["draft"]).address if request.param == "ssd" else None
    target = module_targets(folders["target"], request.param, draft)
    target.client.wait_until_ready(60)
    auto = start_module_gateway([target.address])
    plain = start_module_gateway([target.address], generation_config="vllm", chat_template=folders["template"],
                                 model_name="tiny", model_aliases=("tiny-alias",))
    return {"mode": request.param, "auto": _client(auto), "plain": _client(plain), "plain_url": plain.http_url,
            "tokenizer": load_tokenizer(folders["target"]), "folder": folders["target"]}


def _client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused", max_retries=0)


def test_completions_add_bos_and_match_transformers(stack):
    client, tokenizer = stack["plain"], stack["tokenizer"]
    prompt = "def add(a, b):"
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[1:] == tokenizer.encode(prompt, add_special_tokens=False)
    want = tokenizer.decode(hf_greedy(stack["folder"], ids, 8), skip_special_tokens=True)
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
    assert out.usage.prompt_tokens == len(ids) and out.choices[0].text == want
    assert out.choices[0].speculation["mode"] == stack["mode"]
    # echo repeats the prompt as sent (as vLLM); its log probabilities start at the BOS, unscored
    echoed = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, echo=True, logprobs=0)
    assert echoed.choices[0].text == prompt + want
    assert echoed.choices[0].logprobs.tokens[0] == "<|bos|>" and echoed.choices[0].logprobs.token_logprobs[0] is None
    # token ids are sent as given; add_special_tokens: false sends the text's own tokens
    plain_ids = ids[1:]
    as_ids = client.completions.create(model="tiny", prompt=plain_ids, max_tokens=8, temperature=0)
    without = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0,
                                        extra_body={"add_special_tokens": False})
    assert as_ids.usage.prompt_tokens == without.usage.prompt_tokens == len(plain_ids)
    assert as_ids.choices[0].text == without.choices[0].text == tokenizer.decode(
        hf_greedy(stack["folder"], plain_ids, 8), skip_special_tokens=True)


def test_generation_config_defaults_apply_unless_the_request_sets_the_field(stack):
    auto, plain = stack["auto"], stack["plain"]
    assert auto.models.list().data[0].sampling_defaults == {"temperature": 0.0, "top_p": 0.9, "max_tokens": 6}
    assert plain.models.list().data[0].sampling_defaults == {}
    ids = stack["tokenizer"]("import os")["input_ids"]
    greedy = stack["tokenizer"].decode(hf_greedy(stack["folder"], ids, 6), skip_special_tokens=True)
    # unset: temperature 0 (greedy) and at most max_new_tokens (completions' own default is 16)
    defaulted = auto.completions.create(model="llama", prompt="import os", seed=5, extra_body={"ignore_eos": True})
    assert defaulted.usage.completion_tokens == 6 and defaulted.choices[0].text.startswith(greedy)
    # max_new_tokens bounds a larger max_tokens too, as vLLM's
    bounded = auto.completions.create(model="llama", prompt="import os", max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert bounded.usage.completion_tokens == 6
    # set fields win: the same sampled text as a gateway without defaults
    # (seeded sampling is compared in AR: which speculation serves a round may change the random stream)
    sampled = dict(prompt="import os", max_tokens=5, temperature=1.0, top_p=1.0, seed=5,
                   extra_body={"ignore_eos": True, "mode": "ar"})
    overridden = auto.completions.create(model="llama", **sampled).choices[0].text
    assert overridden == plain.completions.create(model="tiny", **sampled).choices[0].text
    # and without defaults an unset temperature is OpenAI's 1: that seed samples other text than greedy
    ar = {"ignore_eos": True, "mode": "ar"}
    unset = plain.completions.create(model="tiny", prompt="import os", max_tokens=6, seed=5, extra_body=ar)
    explicit = plain.completions.create(model="tiny", prompt="import os", max_tokens=6, seed=5, temperature=1.0,
                                        extra_body=ar)
    assert unset.choices[0].text == explicit.choices[0].text != greedy


def test_chat_needs_a_template(stack):
    with pytest.raises(openai.BadRequestError) as refused:
        stack["auto"].chat.completions.create(model="llama", messages=MESSAGES, max_tokens=4)
    error = refused.value.body
    assert error["param"] == "messages" and "no chat template" in error["message"] and "--chat-template" in error["message"]


def test_chat_with_the_template_file_and_its_options(stack):
    client, tokenizer = stack["plain"], stack["tokenizer"]
    rendered = "[system] You write Python.\n[user] def add(a, b):\n[assistant] "
    ids = tokenizer.encode(rendered, add_special_tokens=False)
    want = tokenizer.decode(hf_greedy(stack["folder"], ids, 6), skip_special_tokens=True)
    chat = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0)
    assert chat.usage.prompt_tokens == len(ids) and chat.choices[0].message.content == want
    # chat_template_kwargs reach the template
    shout = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1, temperature=0,
                                           extra_body={"chat_template_kwargs": {"shout": True}})
    assert shout.usage.prompt_tokens == len(tokenizer.encode(rendered.replace("] ", "!] ", 2),
                                                             add_special_tokens=False))
    # continue_final_message: the last (assistant) message left open, no generation prompt
    started = [*MESSAGES, {"role": "assistant", "content": "    return"}]
    prefix = "[system] You write Python.\n[user] def add(a, b):\n[assistant]     return"
    cont_ids = tokenizer.encode(prefix, add_special_tokens=False)
    continued = client.chat.completions.create(model="tiny", messages=started, max_tokens=6, temperature=0,
                                               extra_body={"continue_final_message": True,
                                                           "add_generation_prompt": False})
    assert continued.usage.prompt_tokens == len(cont_ids)
    assert continued.choices[0].message.content == tokenizer.decode(hf_greedy(stack["folder"], cont_ids, 6),
                                                                    skip_special_tokens=True)
    with pytest.raises(openai.BadRequestError) as both:
        client.chat.completions.create(model="tiny", messages=started, max_tokens=2,
                                       extra_body={"continue_final_message": True})
    assert both.value.body["param"] == "continue_final_message"


def test_the_tokenizers_own_template_serves_chat(model_dirs, start_gateway, targets):
    """(The tiny model's tokenizer carries a chat template: saguaro.tiny_models.CHAT_TEMPLATE.)"""
    target = targets(model_dirs["llama"])
    client = _client(start_gateway([target.address]))
    tokenizer = load_tokenizer(model_dirs["llama"])
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    chat = client.chat.completions.create(model="llama", messages=MESSAGES, max_tokens=6, temperature=0)
    assert chat.usage.prompt_tokens == len(ids)
    assert chat.choices[0].message.content == tokenizer.decode(hf_greedy(model_dirs["llama"], ids, 6),
                                                               skip_special_tokens=True)


def test_served_model_name_aliases(stack, http):
    client = stack["plain"]
    assert [m.id for m in client.models.list().data] == ["tiny", "tiny-alias"]
    out = client.completions.create(model="tiny-alias", prompt="import os", max_tokens=2, temperature=0)
    assert out.model == "tiny"  # responses carry the first name
    assert client.models.retrieve("tiny-alias").id == "tiny-alias"
    for call in (lambda: client.completions.create(model="llama", prompt="x", max_tokens=1),
                 lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1)):
        with pytest.raises(openai.NotFoundError) as unknown:
            call()
        assert unknown.value.body["type"] == "not_found_error" and unknown.value.body["param"] == "model"
    tokenize = http(stack["plain_url"] + "/tokenize", {"model": "other", "prompt": "x"})
    assert tokenize.status == 404 and tokenize.json()["error"]["param"] == "model"


def test_cached_tokens_on_a_repeated_prompt(stack):
    client = stack["plain"]
    prompt = "The quick brown fox jumps over the lazy dog. Speculative decoding drafts tokens. " * 3
    prompt_tokens = len(stack["tokenizer"](prompt)["input_ids"])
    first = client.completions.create(model="tiny", prompt=prompt, max_tokens=2, temperature=0)
    again = client.completions.create(model="tiny", prompt=prompt, max_tokens=2, temperature=0)
    full_blocks = (prompt_tokens - 1) // 16 * 16  # the last prompt token is always computed
    assert first.usage.prompt_tokens_details.cached_tokens in (0, full_blocks)  # (another test may have run it)
    assert again.usage.prompt_tokens_details.cached_tokens == full_blocks > 0
    chat_messages = [{"role": "user", "content": prompt}]
    client.chat.completions.create(model="tiny", messages=chat_messages, max_tokens=2, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=chat_messages, max_tokens=2, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage is not None][-1]
    assert usage.prompt_tokens_details.cached_tokens == (usage.prompt_tokens - 1) // 16 * 16 > 0


def test_unknown_paths_and_methods_answer_json(stack, http):
    base = stack["plain_url"]
    missing = http(base + "/v1/nothing-here", {"x": 1})
    assert missing.status == 404 and missing.headers["content-type"].startswith("application/json")
    assert missing.json()["error"]["type"] == "not_found_error" and "/v1/nothing-here" in missing.json()["error"]["message"]
    wrong = http(base + "/v1/completions", method="GET")
    assert wrong.status == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        stack["plain"].get("/nothing-here", cast_to=object)


def test_responses_plain_and_streaming_equal_the_chat_completion(stack):
    client = stack["plain"]
    chat = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0)
    response = client.responses.create(model="tiny", instructions="You write Python.", input="def add(a, b):",
                                       max_output_tokens=6, temperature=0)
    assert response.output_text == chat.choices[0].message.content
    assert response.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (chat.usage.prompt_tokens,
                                                                          chat.usage.completion_tokens)
    # a list of messages with input_text parts is the same conversation
    parts = client.responses.create(model="tiny-alias", input=[
        {"role": "system", "content": [{"type": "input_text", "text": "You write Python."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "def add"}, {"type": "input_text", "text": "(a, b):"}]}],
        max_output_tokens=6, temperature=0)
    assert parts.output_text == response.output_text and parts.model == "tiny"
    events = list(client.responses.create(model="tiny", instructions="You write Python.", input="def add(a, b):",
                                          max_output_tokens=6, temperature=0, stream=True))
    kinds = [e.type for e in events]
    done = "response.incomplete" if response.status == "incomplete" else "response.completed"
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", done]
    assert set(kinds[4:-4]) <= {"response.output_text.delta"}
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == response.output_text
    assert events[-4].text == response.output_text and events[-1].response.output_text == response.output_text
    assert events[-1].response.usage.output_tokens == response.usage.output_tokens
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"max_output_tokens": 5000}, "max_output_tokens"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0].type"),
])
def test_responses_refuse_what_they_cannot_do_naming_the_field(stack, http, fields, param):
    body = {"model": "tiny", "input": "hi", "max_output_tokens": 2, **fields}
    reply = http(stack["plain_url"] + "/v1/responses", body)
    assert reply.status == 400 and reply.json()["error"]["param"] == param, reply.body
