"""Log probabilities and echo through the gateway with the official `openai` client, on AR, SD and
SSD targets: completions' ``logprobs`` (with ``echo``) and chat's ``logprobs`` / ``top_logprobs``,
streamed and not, ``n`` > 1, equal transformers' log_softmax of the target on the same prefix;
out-of-range values are a 400 naming the field."""

from __future__ import annotations

import openai
import pytest
import torch

from saguaro.tokenizer import load_tokenizer
from tests_support import hf_greedy, hf_logits, make_prompts

TOL = 1e-5
MAX_TOKENS = 8


@pytest.fixture(scope="module", params=["ar", "sd", "ssd"])
def gateway(request, model_dirs, module_targets, module_draft_services, start_module_gateway):
    draft_address = module_draft_services(model_dirs["llama_draft_perturbed"]) if request.param != "ar" else None
    target = module_targets(model_dirs["llama"], request.param, draft_address)
    return start_module_gateway([target.address])


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def target(model_dirs):
    """transformers' view of the target: greedy tokens, log probabilities, token texts."""

    class Target:
        model = model_dirs["llama"]
        tokenizer = load_tokenizer(model)

        def logprobs(self, ids: list[int]) -> torch.Tensor:
            return torch.log_softmax(hf_logits(self.model, ids).double(), dim=-1)

        def text(self, token: int) -> str:
            return self.tokenizer.decode([token], skip_special_tokens=False)

        def top(self, row: torch.Tensor, token: int, k: int) -> dict[str, float]:
            values, ids = row.topk(k)
            return {self.text(token): row[token].item(), **{self.text(i): v for i, v in zip(ids.tolist(), values.tolist())}}

    return Target()


PROMPTS = make_prompts(2, 380, seed=9, min_len=5, max_len=12)


def assert_close(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k]) <= TOL for k in got)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_logprobs_equal_the_targets(client, target, prompt):
    tokens = hf_greedy(target.model, prompt, MAX_TOKENS)
    ref = target.logprobs(prompt + tokens)
    answer = client.completions.create(model="llama", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, logprobs=3)
    lp = answer.choices[0].logprobs
    assert lp.tokens == [target.text(t) for t in tokens]
    for i, t in enumerate(tokens):
        row = ref[len(prompt) - 1 + i]
        assert abs(lp.token_logprobs[i] - row[t].item()) <= TOL
        assert_close(lp.top_logprobs[i], target.top(row, t, 3))
    assert lp.text_offset == [sum(len(s) for s in lp.tokens[:i]) for i in range(len(tokens))]
    assert "".join(lp.tokens) == answer.choices[0].text


def test_echo_returns_the_prompt_and_its_logprobs_first(client, target):
    """What lm-evaluation-harness asks for a loglikelihood: echo, logprobs 1, one token."""
    prompt = PROMPTS[0]
    ref = target.logprobs(prompt + hf_greedy(target.model, prompt, 1))
    answer = client.completions.create(model="llama", prompt=prompt, max_tokens=1, temperature=0, logprobs=1, echo=True)
    choice = answer.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(target.tokenizer.decode(prompt, skip_special_tokens=False))
    assert len(lp.token_logprobs) == len(prompt) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for j, token in enumerate(prompt[1:] + [None]):
        row = ref[j]
        token = token if token is not None else int(row.argmax())
        assert abs(lp.token_logprobs[j + 1] - row[token].item()) <= TOL
        assert_close(lp.top_logprobs[j + 1], target.top(row, token, 1))


def test_streamed_logprobs_equal_the_whole_answer_with_n_choices(client):
    kwargs = dict(model="llama", prompt=PROMPTS, max_tokens=MAX_TOKENS, temperature=0, logprobs=2, echo=True, n=2)
    whole = client.completions.create(**kwargs)
    streamed: dict[int, dict[str, list]] = {}
    for chunk in client.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            if c.logprobs is not None:
                got = streamed.setdefault(c.index, {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                                    "text_offset": []})
                for key in got:
                    got[key] += getattr(c.logprobs, key)
    assert len(whole.choices) == 4
    for choice in whole.choices:  # (batched with different neighbours: equal within fp32 rounding)
        assert_same(streamed[choice.index], choice.logprobs.model_dump())
        assert_same(whole.choices[choice.index // 2 * 2].logprobs.model_dump(), choice.logprobs.model_dump())


def assert_same(got: dict[str, list], expected: dict[str, list]) -> None:
    assert got["tokens"] == expected["tokens"] and got["text_offset"] == expected["text_offset"]
    assert [v is None for v in got["token_logprobs"]] == [v is None for v in expected["token_logprobs"]]
    assert all(abs(a - b) <= TOL for a, b in zip(got["token_logprobs"], expected["token_logprobs"]) if a is not None)
    for a, b in zip(got["top_logprobs"], expected["top_logprobs"]):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b)


def test_chat_logprobs_equal_the_targets(client, gateway, http, target):
    messages = [{"role": "user", "content": "Say something"}]
    prompt = http(gateway.http_url + "/tokenize", {"model": "llama", "messages": messages}).json()["tokens"]
    tokens = hf_greedy(target.model, prompt, MAX_TOKENS)
    ref = target.logprobs(prompt + tokens)
    kwargs = dict(model="llama", messages=messages, max_tokens=MAX_TOKENS, temperature=0, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**kwargs)
    content = whole.choices[0].logprobs.content
    assert [c.token for c in content] == [target.text(t) for t in tokens]
    for i, (c, t) in enumerate(zip(content, tokens)):
        row = ref[len(prompt) - 1 + i]
        assert abs(c.logprob - row[t].item()) <= TOL and c.bytes == list(c.token.encode())
        values, ids = row.topk(2)
        assert [a.token for a in c.top_logprobs] == [target.text(j) for j in ids.tolist()]
        assert all(abs(a.logprob - v) <= TOL for a, v in zip(c.top_logprobs, values.tolist()))
    streamed = [e for chunk in client.chat.completions.create(**kwargs, stream=True) for ch in chunk.choices
                if ch.logprobs is not None for e in ch.logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]  # (a cached prefix: equal within rounding)
    assert all(abs(a.logprob - b.logprob) <= TOL for a, b in zip(streamed, content))


def test_sampled_logprobs_are_the_raw_log_softmax(client, target):
    prompt = PROMPTS[1]
    answer = client.completions.create(model="llama", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.9, seed=3,
                                       logprobs=0, echo=True)
    lp = answer.choices[0].logprobs
    ref = target.logprobs(prompt)
    for j in range(1, len(prompt)):
        assert abs(lp.token_logprobs[j] - ref[j - 1][prompt[j]].item()) <= TOL
    assert all(len(top) == 1 for top in lp.top_logprobs[1:])  # logprobs 0: the token's own only


@pytest.mark.parametrize("kind, body, field", [
    ("completions", {"logprobs": 21}, "logprobs"),
    ("completions", {"logprobs": -1}, "logprobs"),
    ("completions", {"echo": "yes"}, "echo"),
    ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("chat", {"top_logprobs": 2}, "top_logprobs"),
    ("chat", {"logprobs": 2}, "logprobs"),
    ("chat", {"echo": True}, "echo"),
])
def test_out_of_range_is_a_400_naming_the_field(gateway, http, kind, body, field):
    base = {"model": "llama", "max_tokens": 2}
    base.update({"prompt": "hi"} if kind == "completions" else {"messages": [{"role": "user", "content": "hi"}]})
    path = "/v1/completions" if kind == "completions" else "/v1/chat/completions"
    reply = http(gateway.http_url + path, {**base, **body})
    assert reply.status == 400 and reply.json()["error"]["param"] == field


def test_the_sdk_streams_the_targets_logprobs_over_grpc(gateway, target):
    """The gRPC API carries them too: the SDK's deltas hold each token's and, first, the prompt's."""
    from saguaro.client import Client

    prompt = PROMPTS[0]
    tokens = hf_greedy(target.model, prompt, MAX_TOKENS)
    ref = target.logprobs(prompt + tokens)
    with Client(gateway.grpc_address, timeout=60) as sdk:
        deltas = list(sdk.stream(prompt, max_tokens=MAX_TOKENS, logprobs=2, prompt_logprobs=1))
    scored = [s for d in deltas for s in d.logprobs]
    assert [s.token_id for s in scored] == tokens
    assert all(abs(s.logprob - ref[len(prompt) - 1 + i][s.token_id].item()) <= TOL for i, s in enumerate(scored))
    assert all(s.top_ids == ref[len(prompt) - 1 + i].topk(2).indices.tolist() for i, s in enumerate(scored))
    assert [s.token_id for s in deltas[0].prompt_logprobs] == prompt[1:]
    assert all(abs(s.logprob - ref[j][s.token_id].item()) <= TOL for j, s in enumerate(deltas[0].prompt_logprobs))
    # the result carries them as the offline API's RequestOutput does (one JSON shape); None when not asked
    with Client(gateway.grpc_address, timeout=60) as sdk:
        result = sdk.generate(prompt, max_tokens=MAX_TOKENS, logprobs=2, prompt_logprobs=1)
        plain = sdk.generate(prompt, max_tokens=MAX_TOKENS)
    # (the second request finds the prompt in the prefix cache: equal within rounding, not bit for bit)
    assert [e.token_id for e in result.logprobs] == tokens
    assert [e.top_ids for e in result.logprobs] == [s.top_ids for s in scored]
    assert all(abs(e.logprob - s.logprob) <= TOL for e, s in zip(result.logprobs, scored, strict=True))
    assert [e.token_id for e in result.prompt_logprobs] == prompt[1:]
    first = result.logprobs[0]
    assert result.to_json()["logprobs"][0] == {"token_id": tokens[0], "logprob": first.logprob,
                                               "top_ids": first.top_ids, "top_logprobs": first.top_logprobs}
    assert plain.logprobs is None and plain.prompt_logprobs is None
