"""End to end through the gateway with two target+draft (SSD) pairs: the same greedy tokens as
target-only decoding over gRPC (sync and asyncio SDK), HTTP JSON and HTTP SSE, the official
`openai` client, speculation stats, per-request opt-out, token usage, operational endpoints."""

from __future__ import annotations

import asyncio

import openai
import pytest
from tests_support import make_prompts

from saguaro.client import AsyncClient, Client, Usage

pytestmark = pytest.mark.slow  # SSD pairs of real services behind a gateway

MAX_TOKENS = 8


def token_counts(usage: dict) -> tuple[int, int, int]:
    """Prompt, completion and total tokens of a usage object (the SDK's or the HTTP API's: two
    requests of one prompt differ only in what the prefix cache served)."""
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


@pytest.fixture(scope="module")
def gateway(ssd_pairs, start_module_gateway):
    return start_module_gateway([t.address for t in ssd_pairs])


def test_grpc_sdk_matches_target_only_decoding(gateway, reference):
    prompts = make_prompts(4, 500, seed=21)
    expected = reference(prompts, MAX_TOKENS)
    with Client(gateway.grpc_address, timeout=60) as client:
        for prompt, want in zip(prompts, expected):
            out = client.generate(prompt, max_tokens=MAX_TOKENS)
            assert out.token_ids == want
            assert out.usage == Usage(prompt_tokens=len(prompt), completion_tokens=len(want),
                                      total_tokens=len(prompt) + len(want), cached_prompt_tokens=0)
            assert out.stats["mode"] == "ssd" and out.stats["rounds"] >= 1 and out.stats["lookahead_k"] == 4
        stream = client.stream(prompts[0], max_tokens=MAX_TOKENS, stream_tokens_individually=True)
        deltas = list(stream)
        assert [d.token_ids for d in deltas] == [[t] for t in expected[0]]
        assert [d.offset for d in deltas] == list(range(len(expected[0])))
        # per-request opt-out of speculation
        ar = client.generate(prompts[1], max_tokens=MAX_TOKENS, mode="ar")
        assert ar.token_ids == expected[1] and ar.stats["mode"] == "ar" and ar.stats["lookahead_k"] == 0
        info = client.model_info()
        assert info.model_name == "llama" and info.decode_mode == "ssd" and info.max_model_len == 1024
        health = client.health()
        assert health.status == "serving" and health.message == "2 of 2 targets healthy"
        assert client.load().max_num_seqs == 16  # 8 per target, summed


def test_async_sdk_matches_and_runs_concurrently(gateway, reference):
    prompts = make_prompts(4, 500, seed=22)
    expected = reference(prompts, MAX_TOKENS)

    async def run():
        async with AsyncClient(gateway.grpc_address, timeout=60) as client:
            results = await asyncio.gather(*(client.generate(p, max_tokens=MAX_TOKENS) for p in prompts))
            deltas = [d async for d in client.stream(prompts[0], max_tokens=MAX_TOKENS)]
            return results, deltas, await client.health()

    results, deltas, health = asyncio.run(run())
    assert [r.token_ids for r in results] == expected
    assert [t for d in deltas for t in d.token_ids] == expected[0]
    assert health.status == "serving"


def test_text_prompts_over_grpc_and_http_agree_with_the_target(gateway, ssd_pairs, reference, http):
    text = "def add(a, b):"
    want = reference([reference.tokenizer.encode(text, add_special_tokens=False)], MAX_TOKENS)[0]
    with Client(ssd_pairs[0].address) as direct, Client(gateway.grpc_address) as client:
        via_target = direct.generate(text, max_tokens=MAX_TOKENS)
        via_gateway = client.generate(text, max_tokens=MAX_TOKENS)
    assert via_gateway.token_ids == via_target.token_ids == want
    assert via_gateway.text == via_target.text

    body = {"model": "llama", "prompt": text, "max_tokens": MAX_TOKENS, "temperature": 0}
    response = http(gateway.http_url + "/v1/completions", body)
    assert response.status == 200, response.body
    data = response.json()
    assert data["object"] == "text_completion" and data["model"] == "llama"
    choice = data["choices"][0]
    assert choice["text"] == via_target.text and choice["finish_reason"] == via_target.finish_reason
    assert token_counts(data["usage"]) == token_counts(via_target.usage.to_json())  # tokens, not chunks
    assert choice["speculation"]["mode"] == "ssd" and choice["speculation"]["rounds"] >= 1
    assert response.headers["x-saguaro-target"] in {t.address for t in ssd_pairs}

    streamed = http(gateway.http_url + "/v1/completions", {**body, "stream": True,
                                                            "stream_options": {"include_usage": True}})
    assert streamed.status == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = streamed.events()
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == via_target.text
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["speculation"]["mode"] == "ssd"
    assert chunks[-1]["choices"] == [] and token_counts(chunks[-1]["usage"]) == token_counts(via_target.usage.to_json())


def test_token_id_prompts_over_http_match_and_batch(gateway, reference, http):
    prompts = make_prompts(3, 500, seed=23)
    expected = reference(prompts, MAX_TOKENS)
    tokenizer = reference.tokenizer
    body = {"model": "llama", "prompt": prompts, "max_tokens": MAX_TOKENS, "temperature": 0}
    data = http(gateway.http_url + "/v1/completions", body).json()
    texts = [c["text"] for c in sorted(data["choices"], key=lambda c: c["index"])]
    assert texts == [tokenizer.decode(e, skip_special_tokens=True) for e in expected]
    assert data["usage"]["completion_tokens"] == sum(len(e) for e in expected)
    assert data["usage"]["prompt_tokens"] == sum(len(p) for p in prompts)


def test_the_openai_client_completes_and_streams(gateway):
    client = openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused", max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == ["llama"]

    completion = client.completions.create(model="llama", prompt="import os", max_tokens=MAX_TOKENS, temperature=0)
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens >= 1
    streamed = client.completions.create(model="llama", prompt="import os", max_tokens=MAX_TOKENS, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == completion.choices[0].text

    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]
    chat = client.chat.completions.create(model="llama", messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens == MAX_TOKENS or chat.choices[0].finish_reason == "stop"
    pieces = []
    for chunk in client.chat.completions.create(model="llama", messages=messages, max_tokens=MAX_TOKENS,
                                                temperature=0, stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        else:
            assert chunk.usage.completion_tokens == chat.usage.completion_tokens
    assert "".join(pieces) == chat.choices[0].message.content


def test_chat_prompt_is_the_rendered_template(gateway, ssd_pairs, http):
    """The gateway renders chat messages with the template and sends token ids; the target
    decodes exactly those (same tokens as sending the rendered text directly)."""
    messages = [{"role": "user", "content": "hello"}]
    data = http(gateway.http_url + "/v1/chat/completions", {
        "model": "llama", "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}).json()
    rendered = "<|user|>\nhello\n<|assistant|>\n"  # the tiny tokenizer's chat template
    with Client(ssd_pairs[1].address) as direct:
        want = direct.generate(rendered, max_tokens=MAX_TOKENS)
    assert data["choices"][0]["message"]["content"] == want.text
    assert token_counts(data["usage"]) == token_counts(want.usage.to_json())


def test_operational_endpoints(gateway, metric, http):
    assert http(gateway.http_url + "/healthz").json() == {"status": "ok"}
    ready = http(gateway.http_url + "/readyz")
    assert ready.status == 200 and ready.json()["healthy_targets"] == 2
    with Client(gateway.grpc_address) as client:
        client.generate([5, 6, 7], max_tokens=2)
    assert metric(gateway, "saguaro_gateway_requests_total", api="grpc", code="OK") >= 1
    assert metric(gateway, "saguaro_gateway_target_healthy") == 2
    assert metric(gateway, "saguaro_gateway_target_circuit_state") == 0  # closed
    assert metric(gateway, "saguaro_gateway_tokens_total", kind="completion") >= 2
