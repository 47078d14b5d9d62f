"""Stop strings through the gateway with the official `openai` client, on an AR and an SSD target:
the text ends before the stop string (after it with include_stop_str_in_output), a stream never
shows it, not even its first characters, and bad stop strings are a 400 naming ``stop``."""

from __future__ import annotations

import openai
import pytest

from saguaro.client import Client
from saguaro.request_rules import MAX_STOP_STRINGS

PROMPT = "def add(a, b):"
MAX_TOKENS = 24


@pytest.fixture(scope="module", params=["ar", "ssd"])
def gateway(request, model_dirs, module_targets, module_draft_services, start_module_gateway):
    draft_address = module_draft_services(model_dirs["llama_draft_perturbed"]) if request.param == "ssd" else None
    target = module_targets(model_dirs["llama"], request.param, draft_address)
    return start_module_gateway([target.address])


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused", max_retries=0)


def stops_in(text: str) -> list[str]:
    """Three-character pieces of ``text`` from its middle (whole characters, not whitespace only)."""
    picked = []
    for start in range(4, len(text) - 3, 3):
        piece = text[start:start + 3]
        if "\ufffd" not in piece and not piece.isspace():
            picked.append(piece)
    assert len(picked) >= 2, text
    return picked[:3]


def test_text_ends_before_the_stop_string_streamed_or_not(client):
    full = client.completions.create(model="llama", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
    text = full.choices[0].text
    for stop in stops_in(text):
        cut = text[:text.find(stop)]
        out = client.completions.create(model="llama", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                        stop=[stop, "\x00never"])
        choice = out.choices[0]
        assert choice.text == cut and stop not in choice.text
        assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop
        assert out.usage.completion_tokens < full.usage.completion_tokens

        chunks = list(client.completions.create(model="llama", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                                stop=stop, stream=True))
        assert "".join(c.choices[0].text for c in chunks) == cut  # so no chunk showed any of the stop string
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert chunks[-1].choices[0].model_extra["stop_reason"] == stop

        kept = client.completions.create(model="llama", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                         stop=[stop], extra_body={"include_stop_str_in_output": True})
        assert kept.choices[0].text == cut + stop


def test_chat_stops_too(client):
    messages = [{"role": "user", "content": "hello"}]
    full = client.chat.completions.create(model="llama", messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    text = full.choices[0].message.content
    stop = stops_in(text)[0]
    chunks = client.chat.completions.create(model="llama", messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                                            stop=[stop], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[:text.find(stop)]


def test_the_sdk_passes_stop_strings_and_reports_the_match(gateway, client):
    text = client.completions.create(model="llama", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0).choices[0].text
    stop = stops_in(text)[1]
    with Client(gateway.grpc_address, timeout=60) as sdk:
        out = sdk.generate(PROMPT, max_tokens=MAX_TOKENS, stop=stop, include_stop_str_in_output=True)
        streamed = "".join(d.text for d in sdk.stream(PROMPT, max_tokens=MAX_TOKENS, stop=[stop],
                                                      stream_tokens_individually=True))
    assert out.text == text[:text.find(stop)] + stop and out.stop_string == stop
    assert out.finish_reason == "stop" and out.stop_token_id is None and out.stop_reason == stop
    assert streamed == text[:text.find(stop)]


@pytest.mark.parametrize("stop, param, why", [
    ([""], "stop", "non-empty"), (["x"] * (MAX_STOP_STRINGS + 1), "stop", "at most"),
    (["y" * 300], "stop", "characters long"), ([1, 2], "stop[0]", "stop[0] must be a valid string"),
])
def test_bad_stop_strings_are_400_naming_stop(client, stop, param, why):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="llama", prompt=PROMPT, max_tokens=2, stop=stop)
    assert refused.value.body["param"] == param and why in refused.value.body["message"]


@pytest.mark.parametrize("none", ["", []])
def test_an_empty_stop_means_none(client, none):
    """Clients send ``stop: ""`` or ``[]`` for "no stop string": the output is the unstopped one."""
    plain = client.completions.create(model="llama", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
    same = client.completions.create(model="llama", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stop=none)
    assert same.choices[0].text == plain.choices[0].text and same.choices[0].finish_reason == "length"
