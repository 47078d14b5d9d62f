"""What a live gateway answers is what its models say (services/gateway/api_responses.py, from
which the OpenAPI document is generated): every route, JSON and streamed, with the optional parts
(log probabilities, echo, several choices and prompts, usage chunks, stop strings). The response
models forbid unknown fields, so a field the gateway sends but does not document fails here."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from saguaro.services.gateway import api_responses as res

CONTEXT = 64
COMPLETION = {"model": "llama", "prompt": "def add(a, b):", "max_tokens": 4}
CHAT = {"model": "llama", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 4}
RESPONSES = {"model": "llama", "instructions": "Be brief.", "input": "hi", "max_output_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def gateway(model_dirs, module_targets, start_module_gateway):
    target = module_targets(model_dirs["llama"], max_model_len=CONTEXT)
    return start_module_gateway([target.address])


def documented(model: type[BaseModel], value: dict) -> BaseModel:
    """``value`` as ``model``, which must hold all of it: nothing lost, nothing added."""
    parsed = model.model_validate(value)
    assert parsed.model_dump(mode="json", exclude_unset=True) == value
    return parsed


@pytest.mark.parametrize("path, body, answer, choices", [
    ("/v1/completions", {**COMPLETION, "n": 2, "logprobs": 2, "echo": True, "stop": ["\n\n"]},
     res.CompletionResponse, 2),
    ("/v1/completions", {**COMPLETION, "prompt": [[3, 4, 5], "def f():"]}, res.CompletionResponse, 2),
    ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 2}, res.ChatCompletionResponse, 1),
])
def test_completions_are_the_documented_ones(gateway, http, path, body, answer, choices):
    reply = http(gateway.http_url + path, body)
    assert reply.status == 200, reply.body
    parsed = documented(answer, reply.json())
    assert len(parsed.choices) == choices and all(c.speculation is not None for c in parsed.choices)
    assert (parsed.choices[0].logprobs is not None) == ("logprobs" in body)


@pytest.mark.parametrize("path, body, chunk", [
    ("/v1/completions", {**COMPLETION, "n": 2, "logprobs": 1, "echo": True,
                         "stream_options": {"include_usage": True, "continuous_usage_stats": True}}, res.CompletionChunk),
    ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 1, "stream_options": {"include_usage": True}},
     res.ChatCompletionChunk),
    ("/v1/chat/completions", {**CHAT, "n": 2, "stream_tokens_individually": False}, res.ChatCompletionChunk),
])
def test_streamed_chunks_are_the_documented_ones(gateway, http, path, body, chunk):
    reply = http(gateway.http_url + path, {**body, "stream": True})
    assert reply.status == 200, reply.body
    *events, done = reply.events()
    chunks = [documented(chunk, event) for event in events]
    assert done == "[DONE]"
    ends = [c for chunk_ in chunks for c in chunk_.choices if c.finish_reason is not None]
    assert len(ends) == body.get("n", 1) and all(end.speculation is not None for end in ends)
    assert (chunks[-1].usage is not None) == ("stream_options" in body)


def test_a_response_and_its_events_are_the_documented_ones(gateway, http):
    url = gateway.http_url + "/v1/responses"
    whole = http(url, RESPONSES)
    assert whole.status == 200, whole.body
    response = documented(res.ResponsesResponse, whole.json())
    assert response.status in ("completed", "incomplete") and response.usage is not None
    streamed = http(url, {**RESPONSES, "stream": True})
    events = streamed.events()
    answers = [documented(res.ResponsesResponse, e["response"]) for e in events if "response" in e]
    items = [documented(res.OutputMessage, e["item"]) for e in events if "item" in e]
    assert [a.status for a in answers[:2]] == ["in_progress", "in_progress"] and answers[-1].status == response.status
    assert answers[-1].output[0].content == response.output[0].content  # (temperature 0)
    assert [i.status for i in items] == ["in_progress", "completed"]


@pytest.mark.parametrize("method, path, body, status, answer", [
    ("GET", "/v1/models", None, 200, res.ModelList),
    ("GET", "/v1/models/llama", None, 200, res.ModelCard),
    ("GET", "/version", None, 200, res.Version),
    ("GET", "/healthz", None, 200, res.Liveness),
    ("GET", "/readyz", None, 200, res.Readiness),
    ("POST", "/tokenize", {"model": "llama", "prompt": "hi", "return_token_strs": True}, 200, res.TokenizeResponse),
    ("POST", "/tokenize", {"messages": CHAT["messages"]}, 200, res.TokenizeResponse),
    ("POST", "/detokenize", {"tokens": [3, 4]}, 200, res.DetokenizeResponse),
    ("GET", "/v1/models/nope", None, 404, res.Error),
    ("POST", "/v1/completions", {**COMPLETION, "temperature": "hot"}, 400, res.Error),
    ("POST", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user"}]}, 400, res.Error),
    ("POST", "/tokenize", {"prompt": 5}, 400, res.Error),
])
def test_the_other_answers_are_the_documented_ones(gateway, http, method, path, body, status, answer):
    reply = http(gateway.http_url + path, body, method=method)
    assert reply.status == status, reply.body
    parsed = documented(answer, reply.json())
    if status == 400:
        assert parsed.error.param in ("temperature", "messages[0].content", "prompt")
