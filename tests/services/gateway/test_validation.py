"""Bad input answers 400 / INVALID_ARGUMENT with a message naming the field, and the gateway
keeps serving. (Random JSON, bytes and field values: the property tests in tests/fuzz.)"""

from __future__ import annotations

import math

import grpc
import pytest

from saguaro.client import Client
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc

CONTEXT = 64  # a short context keeps valid random requests short


@pytest.fixture(scope="module")
def gateway(model_dirs, module_targets, start_module_gateway):
    target = module_targets(model_dirs["llama"], max_model_len=CONTEXT)
    return start_module_gateway([target.address])


@pytest.fixture(scope="module")
def stub(gateway):
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        yield pb_grpc.InferenceStub(channel)


def ok(gateway) -> bool:
    with Client(gateway.grpc_address, timeout=30) as client:
        return client.generate([3, 4, 5], max_tokens=2).finish_reason == "length"


BASE = {"model": "llama", "prompt": "def add(a, b):", "max_tokens": 4}
LONG_TEXT = "def add(a, b):\n    return a + b\n" * 40

HTTP_CASES = [
    # (path, body or raw bytes, param, words the message must contain)
    ("completions", b"{not json", None, "not valid JSON"),
    ("completions", b"\xff\xfe", None, "not valid JSON"),
    ("completions", b"[" * 100_000, None, "not valid JSON"),
    ("completions", b'{"model": "llama", "max_tokens": 1' + b"0" * 5000 + b"}", None, "not valid JSON"),
    ("completions", [1, 2], None, "must be a JSON object"),
    ("completions", {"prompt": "x"}, "model", "model is required"),
    ("completions", {**BASE, "prompt": ""}, "prompt", "prompt is empty"),
    ("completions", {**BASE, "prompt": []}, "prompt", "at least 1 item"),
    ("completions", {**BASE, "prompt": [1, "x"]}, "prompt[0]", "must be a string or a list of token ids"),
    ("completions", {**BASE, "prompt": [3, 999_999]}, "prompt", "outside the vocabulary"),
    ("completions", {**BASE, "prompt": LONG_TEXT}, "prompt", f"context (max_model_len) is {CONTEXT}"),
    ("completions", {**BASE, "max_tokens": -1}, "max_tokens", "max_tokens must be greater than or equal to 1"),
    ("completions", {**BASE, "max_tokens": 0}, "max_tokens", "max_tokens must be greater than or equal to 1"),
    ("completions", {**BASE, "max_tokens": 10**12}, "max_tokens", f"between 1 and {CONTEXT}"),
    ("completions", {**BASE, "max_tokens": "ten"}, "max_tokens", "must be a valid integer"),
    ("completions", {**BASE, "prompt": [5] * 40, "max_tokens": 40}, "max_tokens", "40 prompt tokens + max_tokens 40"),
    ("completions", {**BASE, "temperature": -0.5}, "temperature", "temperature must be greater than or equal to 0"),
    ("completions", {**BASE, "temperature": 2.5}, "temperature", "temperature must be less than or equal to 2"),
    ("completions", {**BASE, "temperature": "hot"}, "temperature", "must be a valid number"),
    ("completions", {**BASE, "temperature": 10**400}, "temperature", "temperature must be a valid number"),
    ("completions", {**BASE, "top_p": 0}, "top_p", "top_p must be greater than 0"),
    ("completions", {**BASE, "top_p": 1.5}, "top_p", "top_p must be less than or equal to 1"),
    ("completions", {**BASE, "n": 17}, "n", "n must be less than or equal to 16"),
    ("completions", {**BASE, "n": 0}, "n", "n must be greater than or equal to 1"),
    ("completions", {**BASE, "stop": ["\n", ""]}, "stop", "stop[1] must be a non-empty string"),
    ("completions", {**BASE, "stop": {"s": 1}}, "stop", "a string or a list of strings"),
    ("completions", {**BASE, "stop": ["x" * 257]}, "stop", "at most 256"),
    ("completions", {**BASE, "logprobs": 21}, "logprobs", "less than or equal to 20"),
    ("completions", {**BASE, "mode": "fast"}, "mode", "'ssd', 'sd' or 'ar'"),
    ("completions", {**BASE, "mode": ["ssd"]}, "mode", "'ssd', 'sd' or 'ar'"),  # found by the fuzzer below
    ("completions", {**BASE, "stream": "yes"}, "stream", "must be a valid boolean"),
    ("completions", {**BASE, "seed": -1}, "seed", "greater than or equal to 0"),
    ("completions", {**BASE, "stop_token_ids": [600]}, "stop_token_ids", "outside the vocabulary"),
    ("chat/completions", {"model": "llama"}, "messages", "messages is required"),
    ("chat/completions", {"model": "llama", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role",
     "must be 'system', 'developer', 'user', 'assistant' or 'tool'"),
    ("chat/completions", {"model": "llama", "messages": [{"role": "user", "content": 5}]}, "messages[0].content",
     "must be a string"),
    ("chat/completions", {"model": "llama", "messages": [{"role": "user", "content": LONG_TEXT}]}, "messages",
     "context (max_model_len)"),
]


@pytest.mark.parametrize("path, body, param, words", HTTP_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(HTTP_CASES)])
def test_bad_http_input_is_400_naming_the_field(gateway, http, path, body, param, words):
    url = f"{gateway.http_url}/v1/{path}"
    reply = http(url, raw=body) if isinstance(body, bytes) else http(url, body)
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert words in error["message"], error["message"]


def grpc_request(**fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(**{"prompt_token_ids": pb.TokenIds(ids=[3, 4, 5]), **fields})


GRPC_CASES = [
    (pb.GenerateRequest(), "no prompt"),
    (pb.GenerateRequest(prompt_text=""), "prompt_text is empty"),
    (grpc_request(prompt_token_ids=pb.TokenIds(ids=[])), "prompt_token_ids is empty"),
    (grpc_request(prompt_token_ids=pb.TokenIds(ids=[3, -1])), "outside the vocabulary"),
    (grpc_request(prompt_token_ids=pb.TokenIds(ids=[3] * 100)), f"context (max_model_len) is {CONTEXT}"),
    (grpc_request(sampling=pb.SamplingParams(max_tokens=0)), "sampling.max_tokens must be between 1"),
    (grpc_request(sampling=pb.SamplingParams(max_tokens=4_000_000_000)), "sampling.max_tokens must be between 1"),
    (grpc_request(sampling=pb.SamplingParams(temperature=-1)), "sampling.temperature must be a finite number"),
    (grpc_request(sampling=pb.SamplingParams(temperature=math.nan)), "sampling.temperature must be a finite number"),
    (grpc_request(sampling=pb.SamplingParams(top_p=1.5)), "sampling.top_p must be in (0, 1]"),
    (grpc_request(sampling=pb.SamplingParams(draft_temperature=math.inf)), "sampling.draft_temperature"),
    (grpc_request(request_id="x" * 1000), "request_id is 1000 characters long"),
    (grpc_request(decode_mode=pb.DECODE_MODE_SSD), "decode_mode: this server decodes with mode 'ar'"),
]


@pytest.mark.parametrize("request_, words", GRPC_CASES, ids=[str(i) for i in range(len(GRPC_CASES))])
def test_bad_grpc_input_is_invalid_argument_naming_the_field(gateway, stub, request_, words):
    with pytest.raises(grpc.RpcError) as error:
        list(stub.Generate(request_, timeout=30))
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert words in error.value.details(), error.value.details()


def test_the_gateway_keeps_serving_after_bad_input(gateway, http):
    for path, body, *_ in HTTP_CASES[:5]:
        reply = http(f"{gateway.http_url}/v1/{path}", raw=body) if isinstance(body, bytes) else \
            http(f"{gateway.http_url}/v1/{path}", body)
        assert reply.status == 400
    assert ok(gateway)
    assert http(gateway.http_url + "/readyz").status == 200


# -- size limits ---------------------------------------------------------------------------------
def test_oversized_requests_are_refused_before_they_cost_anything(gateway, http, stub):
    """HTTP bodies over 32 MiB get 413, more than 64 prompts in one request 400, gRPC messages over
    64 MiB RESOURCE_EXHAUSTED; none reaches a target, and the gateway keeps serving."""
    body = b'{"model": "llama", "prompt": "' + b"a" * (32 << 20) + b'"}'
    assert http(f"{gateway.http_url}/v1/completions", raw=body).status == 413
    many = http(f"{gateway.http_url}/v1/completions", {**BASE, "prompt": [[3, 4]] * 65})
    assert many.status == 400 and "prompt must have at most 64 items" in many.json()["error"]["message"]
    with pytest.raises(grpc.RpcError) as error:
        list(stub.Generate(pb.GenerateRequest(prompt_text="a" * (64 << 20)), timeout=60))
    assert error.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ok(gateway)


@pytest.mark.parametrize("value", [b"\xff\xfe-not-utf8", "caf\u00e9-\u2028".encode()])
def test_a_request_id_header_that_is_not_printable_text_is_400_not_500(gateway, value):
    """A client's x-request-id is echoed back and sent on to the target in a protobuf string: a
    header that is not UTF-8 text (it was a 500), or text with a line separator, must be refused
    with a JSON 400 naming it, and the gateway keeps serving."""
    import http.client
    import json
    from urllib.parse import urlsplit

    url = urlsplit(gateway.http_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    body = json.dumps({"model": "llama", "prompt": [5, 6], "max_tokens": 1}).encode()
    connection.putrequest("POST", "/v1/completions")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(len(body)))
    connection.putheader("x-request-id", value)
    connection.endheaders(body)
    response = connection.getresponse()
    error = json.loads(response.read())["error"]
    connection.close()
    assert response.status == 400 and error["param"] == "request_id" and "printable text" in error["message"]
    assert ok(gateway)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_as_json_is_415(gateway, content_type):
    """A browser can send a cross-site POST as text/plain or a form without asking first: only
    a body declared as application/json is read (415 with a JSON error otherwise)."""
    import http.client
    import json
    from urllib.parse import urlsplit

    url = urlsplit(gateway.http_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    body = json.dumps({"model": "llama", "prompt": [5, 6], "max_tokens": 1}).encode()
    headers = {"Content-Length": str(len(body))} | ({"Content-Type": content_type} if content_type else {})
    connection.request("POST", "/v1/completions", body=body, headers=headers)
    response = connection.getresponse()
    error = json.loads(response.read())["error"]
    connection.close()
    assert response.status == 415 and "Content-Type must be application/json" in error["message"]
    assert ok(gateway)
