"""The gateway's OpenAI HTTP API under fuzzing, through a real aiohttp server and a real target.

Structured-but-wrong JSON, random and damaged bytes, and odd methods / headers / encodings: the
answer is 200 (a valid request, served) or a 4xx whose body is OpenAI's JSON error object —
never a 5xx, never a hang (every call has a deadline) — and afterwards the gateway still serves.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz.support import BODIES, CONTEXT, LIVE, MODEL_NAME, PATHS, RAW_BODIES, VALID_BODY, fuzz_settings



@pytest.fixture(scope="module")
def gateway(model_dirs, module_targets, start_module_gateway):
    target = module_targets(model_dirs["llama"], max_model_len=CONTEXT)
    return start_module_gateway([target.address])


def check_answer(reply, valid_is_possible: bool = True) -> None:
    event(f"HTTP {reply.status}")
    assert reply.status < 500, (reply.status, reply.body[:300])
    if reply.status == 200:
        assert valid_is_possible, reply.body[:300]
        return
    assert 400 <= reply.status < 500
    error = json.loads(reply.body)["error"]
    assert error["message"] and error["type"], error


@fuzz_settings(LIVE)
@given(data=st.data(), kind=st.sampled_from(sorted(BODIES)))
def test_structured_json_is_served_or_refused(gateway, http, data, kind):
    body = data.draw(BODIES[kind], label="body")
    reply = http(gateway.http_url + PATHS[kind], raw=json.dumps(body).encode(), method="POST", timeout=60)
    check_answer(reply)
    if reply.status != 200:  # (an unknown model is vLLM's 404)
        assert reply.status == 400 or (reply.status == 404 and reply.json()["error"]["param"] == "model"), \
            reply.body[:300]


@fuzz_settings(LIVE)
@given(body=RAW_BODIES, kind=st.sampled_from(sorted(PATHS)))
def test_random_bytes_are_refused_with_a_json_error(gateway, http, body, kind):
    reply = http(gateway.http_url + PATHS[kind], raw=body, method="POST", timeout=60)
    check_answer(reply)


HEADERS = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=x",
                                     "application/x-www-form-urlencoded", "application/json; charset=utf-16", ""]),
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "x-unknown"]),
    "x-request-id": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300),
    "Authorization": st.sampled_from(["Bearer ", "Bearer x", "Basic Zm9vOmJhcg==", ""]),
    "Accept": st.sampled_from(["text/event-stream", "*/*", "application/xml"]),
})


@fuzz_settings(LIVE)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       path=st.sampled_from([*PATHS.values(), "/v1/models", "/v1/completions/", "/v1/embeddings", "/v1/../healthz",
                             "/%ff", "/v1/chat/completions?stream=true"]),
       headers=HEADERS, body=st.none() | st.just(VALID_BODY) | RAW_BODIES)
def test_odd_methods_paths_and_headers_get_no_server_error(gateway, http, method, path, headers, body):
    reply = http(gateway.http_url + path, raw=body, method=method, headers=headers, timeout=60)
    event(f"{method} HTTP {reply.status}")
    assert reply.status < 500, (reply.status, reply.body[:300])


def test_after_the_fuzzing_the_gateway_still_serves(gateway, http):
    for kind, path in PATHS.items():
        prompt = {"prompt": [3, 4, 5]} if kind == "completions" else {"messages": [{"role": "user", "content": "hi"}]}
        body = {"model": MODEL_NAME, "max_tokens": 2, "temperature": 0, **prompt}
        reply = http(gateway.http_url + path, body, timeout=60)
        assert reply.status == 200, reply.body[:300]
        assert reply.json()["usage"]["completion_tokens"] == 2
    assert http(gateway.http_url + "/readyz").status == 200
