"""Bad input is refused with a message that says what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest

from saguaro import LLM, ConfigError, InvalidRequestError, ModelLoadError, SamplingParams


@pytest.fixture(scope="module")
def llm(model_dirs):
    return LLM(model_dirs["llama"], max_model_len=64, show_progress=False)


def test_missing_folder():
    with pytest.raises(ModelLoadError, match="model folder not found: /nonexistent/model"):
        LLM("/nonexistent/model")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        LLM(str(tmp_path))


def test_folder_without_weights(model_dirs, tmp_path):
    shutil.copy(f"{model_dirs['llama']}/config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match="no weights in"):
        LLM(str(tmp_path), show_progress=False)


def test_unsupported_architecture(model_dirs, tmp_path):
    shutil.copytree(model_dirs["llama"], tmp_path / "m")
    cfg = json.loads((tmp_path / "m/config.json").read_text())
    cfg["architectures"] = ["MixtralForCausalLM"]
    (tmp_path / "m/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unsupported architecture.*MixtralForCausalLM.*supported: LlamaForCausalLM, Qwen3ForCausalLM"):
        LLM(str(tmp_path / "m"))


def test_checkpoint_missing_a_tensor(model_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dirs["llama"], tmp_path / "m")
    weights = load_file(str(tmp_path / "m/model.safetensors"))
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, str(tmp_path / "m/model.safetensors"))
    with pytest.raises(ModelLoadError, match="lacks tensors: model.layers.1.mlp.down_proj.weight"):
        LLM(str(tmp_path / "m"), show_progress=False)


def test_unsupported_dtype(model_dirs):
    with pytest.raises(ConfigError, match="unsupported dtype 'int8'"):
        LLM(model_dirs["llama"], dtype="int8")


def test_kv_budget_too_small_for_one_sequence(model_dirs):
    with pytest.raises(ConfigError, match="fewer than one sequence"):
        LLM(model_dirs["llama"], kv_cache_bytes=8192 * 4, show_progress=False)


def test_prompt_longer_than_max_model_len(llm):
    with pytest.raises(InvalidRequestError, match="prompt has 80 tokens but max_model_len is 64"):
        llm.generate([5] * 80, SamplingParams())


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(max_tokens=0), "max_tokens must be a positive integer, got 0"),
        (dict(max_tokens=-3), "max_tokens must be a positive integer, got -3"),
        (dict(temperature=-0.1), "temperature must be >= 0, got -0.1"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
        (dict(top_k=-1), "top_k must be >= 0"),
    ],
)
def test_bad_sampling_params(llm, params, message):
    with pytest.raises(InvalidRequestError, match=message):
        llm.generate([5, 6, 7], SamplingParams(**params))


def test_empty_prompt_and_out_of_vocab_tokens(llm):
    with pytest.raises(InvalidRequestError, match="prompt is empty"):
        llm.generate([[]], SamplingParams())
    with pytest.raises(InvalidRequestError, match=r"outside the vocabulary \[0, 500\)"):
        llm.generate([3, 999], SamplingParams())


def test_engine_keeps_serving_after_bad_requests(llm):
    with pytest.raises(InvalidRequestError):
        llm.generate([5] * 80, SamplingParams())
    out = llm.generate([5, 6, 7], SamplingParams(max_tokens=3))[0]
    assert len(out.token_ids) == 3 or out.finish_reason == "stop"
