"""generation_config.json's sampling defaults (services/gateway/generation_defaults.py): vLLM's
keys, the max_new_tokens bound, the settings of --generation-config, and a gateway that reads a
folder's file (--generation-config FOLDER)."""

from __future__ import annotations

import json

import openai
import pytest

from saguaro.errors import ConfigError
from saguaro.services.gateway import GatewayConfig
from saguaro.services.gateway.generation_defaults import GenerationDefaults, check_setting, resolve


def test_the_keys_vllm_reads_become_request_defaults():
    defaults = GenerationDefaults.parse(json.dumps({"temperature": 0.6, "top_p": 0.9, "top_k": 20, "do_sample": True,
                                                    "max_new_tokens": 100, "bos_token_id": 1}), "file")
    assert defaults.describe() == {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "max_tokens": 100}
    # unset (absent or null) fields get the default; set ones keep theirs
    assert defaults.fill({"model": "m", "temperature": None, "top_p": 1.0}) == {
        "model": "m", "temperature": 0.6, "top_p": 1.0, "top_k": 20}
    assert (defaults.bound(None), defaults.bound(16), defaults.bound(500)) == (100, 16, 100)


def test_no_file_means_no_defaults():
    defaults = GenerationDefaults.parse("", "file")
    body = {"model": "m"}
    assert defaults.fill(body) is body and defaults.bound(None) is None and defaults.describe() == {}


def test_penalty_and_min_p_defaults_apply_too():
    defaults = GenerationDefaults.parse(json.dumps({"repetition_penalty": 1.05, "min_p": 0.1, "top_p": 0.8}), "f.json")
    assert defaults.describe() == {"repetition_penalty": 1.05, "min_p": 0.1, "top_p": 0.8}
    assert defaults.fill({"model": "m", "min_p": 0.0}) == {"model": "m", "min_p": 0.0, "repetition_penalty": 1.05,
                                                          "top_p": 0.8}


@pytest.mark.parametrize("text", ["{", "[1]", json.dumps({"max_new_tokens": 0}), json.dumps({"max_new_tokens": "9"})])
def test_a_bad_file_is_a_config_error(text):
    with pytest.raises(ConfigError):
        GenerationDefaults.parse(text, "file")


def test_the_settings(tmp_path):
    served = json.dumps({"temperature": 0.5})
    assert resolve("auto", served).describe() == {"temperature": 0.5}
    assert resolve("vllm", served).describe() == {}
    assert resolve(str(tmp_path), served).describe() == {}  # a folder without the file: none, as vLLM
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_k": 7}))
    assert resolve(str(tmp_path), served).describe() == {"top_k": 7}
    check_setting(str(tmp_path))
    with pytest.raises(ConfigError, match="--generation-config"):
        GatewayConfig(targets=["127.0.0.1:1"], generation_config=str(tmp_path / "missing")).validate()
    with pytest.raises(ConfigError, match="--chat-template"):
        GatewayConfig(targets=["127.0.0.1:1"], chat_template=str(tmp_path / "missing.jinja")).validate()


def test_a_gateway_applies_a_folders_defaults(model_dirs, targets, start_gateway, tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_k": 1, "max_new_tokens": 3}))
    target = targets(model_dirs["llama"])
    gateway = start_gateway([target.address], generation_config=str(tmp_path))
    client = openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused", max_retries=0)
    assert client.models.retrieve("llama").sampling_defaults == {"top_k": 1, "max_tokens": 3}
    # top_k 1 samples the greedy token at any temperature; max_new_tokens bounds the length
    sampled = client.completions.create(model="llama", prompt="import os", temperature=1.5, seed=3,
                                        extra_body={"ignore_eos": True})
    greedy = client.completions.create(model="llama", prompt="import os", temperature=0, max_tokens=3,
                                       extra_body={"ignore_eos": True})
    assert sampled.usage.completion_tokens == 3 and sampled.choices[0].text == greedy.choices[0].text
