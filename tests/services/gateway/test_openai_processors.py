"""vLLM's logits processors through the gateway with the official `openai` client (vLLM's fields
in ``extra_body``) on an SSD target: honoured (the same tokens as the offline AR engine), and
out-of-range values are a 400 naming the field (INVALID_ARGUMENT on the target's gRPC API)."""

from __future__ import annotations

import openai
import pytest

from saguaro import SamplingParams
from saguaro.client import Client
from saguaro.client.errors import InvalidArgumentError
from saguaro.config import EngineConfig
from saguaro.engine import LLMEngine
from saguaro.llm import LLM
from saguaro.tokenizer import decode, load_tokenizer
from tests_support import make_prompts

pytestmark = pytest.mark.slow  # a module-scoped SSD stack

MAX_TOKENS = 10
PROMPT = make_prompts(1, 380, seed=13, min_len=6, max_len=10)[0]
PROCESSORS = {"presence_penalty": 1.2, "frequency_penalty": 0.5, "repetition_penalty": 1.3, "min_tokens": 6,
              "logit_bias": {PROMPT[0]: 3.0, 7: -100.0}}


@pytest.fixture(scope="module")
def target(model_dirs, module_targets, module_draft_services):
    return module_targets(model_dirs["llama"], "ssd", module_draft_services(model_dirs["llama_draft_perturbed"]))


@pytest.fixture(scope="module")
def client(target, start_module_gateway):
    gateway = start_module_gateway([target.address])
    return openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused", max_retries=0)


def offline(model_dirs, **processors) -> list[int]:
    """The offline AR engine's greedy tokens with the same processors."""
    engine = LLMEngine(EngineConfig(model=model_dirs["llama"], block_size=8, kv_cache_bytes=1 << 24, max_model_len=256,
                                    show_progress=False))
    out = LLM.from_engine(engine, None).generate(PROMPT, SamplingParams(max_tokens=MAX_TOKENS, **processors))[0]
    return out.token_ids


def test_processors_are_honoured_as_offline_ar(client, model_dirs):
    expected = offline(model_dirs, **PROCESSORS)
    assert expected != offline(model_dirs), "the processors must change the output, or the test proves nothing"
    body = {**PROCESSORS, "logit_bias": {str(t): b for t, b in PROCESSORS["logit_bias"].items()}}
    completion = client.completions.create(
        model="llama", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
        presence_penalty=body.pop("presence_penalty"), frequency_penalty=body.pop("frequency_penalty"),
        logit_bias=body.pop("logit_bias"), extra_body=body)
    assert completion.usage.completion_tokens == len(expected)
    assert completion.choices[0].text == decode(load_tokenizer(model_dirs["llama"]), expected)


@pytest.mark.parametrize("field, value", [
    ("presence_penalty", 2.5), ("frequency_penalty", -3), ("repetition_penalty", 0), ("min_p", 1.5),
    ("min_p", -0.1), ("min_tokens", 11), ("min_tokens", -1), ("logit_bias", {"100000": 1}),
    ("logit_bias", {"5": 101}), ("logit_bias", {"x": 1}), ("logit_bias", [1]),
])
def test_out_of_range_values_are_400_naming_the_field(client, field, value):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="llama", prompt="def add(a, b):", max_tokens=MAX_TOKENS,
                                  extra_body={field: value})
    assert refused.value.status_code == 400 and refused.value.body["param"] == field
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=MAX_TOKENS, extra_body={field: value})
    assert refused.value.body["param"] == field


@pytest.mark.parametrize("options", [{"presence_penalty": 2.5}, {"repetition_penalty": -1.0}, {"min_p": 2.0},
                                     {"min_tokens": 20}, {"logit_bias": {100000: 1.0}}])
def test_grpc_refuses_out_of_range_values_as_invalid_argument(target, options):
    with Client(target.address, timeout=60) as grpc_client:
        with pytest.raises(InvalidArgumentError) as refused:
            grpc_client.generate(PROMPT, max_tokens=MAX_TOKENS, **options)
    assert refused.value.code == "INVALID_ARGUMENT"
    assert next(iter(options)) in str(refused.value)


def test_grpc_client_carries_the_processors(target, model_dirs):
    with Client(target.address, timeout=60) as grpc_client:
        result = grpc_client.generate(PROMPT, max_tokens=MAX_TOKENS, **PROCESSORS)
    assert list(result.token_ids) == offline(model_dirs, **PROCESSORS)
