"""Bounded work before admission (docs/security.md): a prompt too large for the context is
refused before it is tokenized, a body that inflates past what any request needs is refused
while it is read, tokenizing happens off the event loop, and heads and bodies sent too slowly
are cut off, so a hostile request never stalls the streams already running or holds a
connection for ever."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.slow  # real targets behind a gateway, with emulated slow forwards

FORWARD_S = 0.05  # every forward of the target takes this long: a stream of 30 tokens lasts 1.5 s


@pytest.fixture(scope="module")
def gateway(model_dirs, module_targets, start_module_gateway):
    target = module_targets(model_dirs["llama"], emulate_forward_s=FORWARD_S)
    return start_module_gateway([target.address], sse_keepalive_s=60.0)


def post(gateway, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(gateway.http_url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class LiveStream(threading.Thread):
    """A streamed completion, recording when each data chunk arrived."""

    def __init__(self, gateway):
        super().__init__(daemon=True)
        self.gateway = gateway
        self.arrivals: list[float] = []
        self.lines: list[str] = []

    def run(self) -> None:
        body = json.dumps({"model": "llama", "prompt": [40, 41], "max_tokens": 30, "stream": True,
                           "ignore_eos": True}).encode()
        request = urllib.request.Request(self.gateway.http_url + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    self.arrivals.append(time.monotonic())
                    self.lines.append(line)



# The stream's longest wait during the hostile request: its chunks come every 50 ms (up to 0.2 s
# when an incomplete UTF-8 character holds a few back), so 1 s is far above its own pace on a busy
# machine, and far below what tokenizing the refused text on the event loop would cost (seconds).
# That each request is refused before its costly work is shown by its answer, not by this bound.
STALL_S = 1.0


def beside_a_stream(gateway, hostile) -> tuple[float, object]:
    """``hostile()`` while a stream runs: (the stream's longest wait between two chunks while the
    call ran, its answer). Only waits that overlap the call count, so the bound measures a stall
    the call causes, not the call's own length nor the stream's jitter at other times."""
    stream = LiveStream(gateway)
    stream.start()
    deadline = time.monotonic() + 30
    while len(stream.arrivals) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    answer = hostile()
    ended = time.monotonic()
    stream.join(60)
    assert stream.lines[-1] == "data: [DONE]"
    arrivals = stream.arrivals
    waits = [b - a for a, b in zip(arrivals, arrivals[1:]) if b >= began and a <= ended]
    assert waits, "the stream must be running when the hostile request is sent"
    return max(waits), answer


def test_a_multi_megabyte_prompt_is_refused_and_live_streams_keep_flowing(gateway):
    """8 MB of text, beyond what any request to this model needs: refused while the body is
    read (413); the live stream is not held up (its longest wait during the request stays under STALL_S)."""
    prompt = "def add(a, b):\n    return a + b\n" * ((8 << 20) // 32)
    body = json.dumps({"model": "llama", "prompt": prompt, "max_tokens": 4}).encode()
    gap, (status, answer) = beside_a_stream(gateway, lambda: post(gateway, body))
    assert status == 413 and "larger than" in answer["error"]["message"]
    assert gap < STALL_S


def test_text_beyond_what_the_context_can_hold_is_refused_before_tokenizing(gateway):
    """A prompt just over the byte limit (the context times the longest token, with slack):
    400 naming its size, with no tokenizing; one just under it is tokenized (and refused as
    too many tokens, as before); a live stream keeps flowing meanwhile."""
    preparer = gateway.gateway.preparer()
    limit = preparer.text_byte_limit
    assert preparer.body_byte_limit > 6 * limit
    over = json.dumps({"model": "llama", "prompt": "a" * (limit + 1), "max_tokens": 4}).encode()
    gap, (status, answer) = beside_a_stream(gateway, lambda: post(gateway, over))
    assert status == 400 and answer["error"]["param"] == "prompt" and "bytes of text" in answer["error"]["message"]
    assert gap < STALL_S
    under = json.dumps({"model": "llama", "prompt": "a " * (limit // 2), "max_tokens": 4}).encode()
    status, answer = post(gateway, under)
    assert status == 400 and "max_model_len" in answer["error"]["message"]


def test_a_body_that_inflates_past_the_limit_is_413_and_live_streams_keep_flowing(gateway):
    """A gzip body of about 30 KB that inflates to 30 MiB: refused while it is read (413, a JSON
    error), not parsed; the live stream is not held up."""
    inflated = b'{"model": "llama", "prompt": "' + b" " * (30 << 20) + b'", "max_tokens": 1}'
    body = gzip.compress(inflated)
    assert len(body) < 64 << 10
    gap, (status, answer) = beside_a_stream(
        gateway, lambda: post(gateway, body, {"Content-Encoding": "gzip"}))
    assert status == 413 and "larger than" in answer["error"]["message"]
    assert gap < STALL_S


def test_a_chat_whose_messages_exceed_the_context_is_refused_before_rendering(gateway):
    messages = [{"role": "user", "content": "x" * (1 << 20)}]
    body = json.dumps({"model": "llama", "messages": messages, "max_tokens": 4}).encode()
    request = urllib.request.Request(gateway.http_url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=60)
    answer = json.loads(error.value.read())
    assert error.value.code == 400 and answer["error"]["param"] == "messages"
    assert "bytes of text" in answer["error"]["message"]
    status, ok = post(gateway, json.dumps({"model": "llama", "prompt": [5, 6], "max_tokens": 2}).encode())
    assert status == 200 and ok["choices"][0]["finish_reason"] == "length"


@pytest.fixture(scope="module")
def impatient_gateway(model_dirs, module_targets, start_module_gateway):
    target = module_targets(model_dirs["llama"])
    return start_module_gateway([target.address], http_header_timeout_s=0.5, http_body_timeout_s=0.5)


def raw_connection(gateway) -> socket.socket:
    url = urlsplit(gateway.http_url)
    return socket.create_connection((url.hostname, url.port), timeout=10)


def test_a_request_head_sent_too_slowly_is_closed(impatient_gateway):
    """Slowloris: a head that never completes holds its connection only until the header
    timeout (here 0.5 s), then the server closes it; new requests are served meanwhile."""
    connection = raw_connection(impatient_gateway)
    connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: saguaro\r\n")
    started = time.monotonic()
    connection.sendall(b"X-Slow: 1\r\n")
    assert connection.recv(1024) == b""  # closed by the server
    assert time.monotonic() - started < 5
    connection.close()
    status, answer = post(impatient_gateway, json.dumps({"model": "llama", "prompt": [5, 6], "max_tokens": 1}).encode())
    assert status == 200


def test_a_body_sent_too_slowly_is_408(impatient_gateway):
    """The head is complete, the body stops after 10 of its 100 bytes: 408 with a JSON error
    once the body timeout (0.5 s) has passed."""
    connection = raw_connection(impatient_gateway)
    connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: saguaro\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n" + b'{"model": ')
    response = http.client.HTTPResponse(connection)
    response.begin()
    body = response.read()
    connection.close()
    assert response.status == 408
    assert "did not arrive within 0.5 s" in json.loads(body)["error"]["message"]
    # and its unread rest is drained no longer than a body may take (aiohttp's default: 10 s,
    # which held this gateway's shutdown as long)
    assert impatient_gateway.gateway._http_runner.server._kwargs["lingering_time"] == 0.5


def test_a_request_from_a_half_closed_socket_is_answered(impatient_gateway):
    """The client sends its request and shuts its sending side (a FIN): it still gets its
    answer, and then the connection closes."""
    body = json.dumps({"model": "llama", "prompt": [5, 6], "max_tokens": 2}).encode()
    connection = raw_connection(impatient_gateway)
    connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: saguaro\r\nContent-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    connection.shutdown(socket.SHUT_WR)
    response = http.client.HTTPResponse(connection)
    response.begin()
    answer = json.loads(response.read())
    assert response.status == 200 and answer["choices"][0]["finish_reason"] == "length"
    assert connection.recv(1024) == b""  # closed after the response
    connection.close()


@pytest.mark.parametrize("raw", [b"GARBAGE\r\n\r\n", b"GET /v1/models HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"],
                         ids=["bad request line", "oversized header"])
def test_requests_the_http_parser_refuses_get_a_json_error(impatient_gateway, raw, caplog):
    """aiohttp's own refusals (before any handler runs) answer 4xx with an OpenAI JSON error, and
    log one line, not a traceback."""
    connection = raw_connection(impatient_gateway)
    with caplog.at_level("INFO", logger="saguaro.services.gateway.http_api"):
        connection.sendall(raw)
        response = http.client.HTTPResponse(connection)
        response.begin()
        error = json.loads(response.read())["error"]
    connection.close()
    assert 400 <= response.status < 500 and response.getheader("Content-Type").startswith("application/json")
    assert error["type"] == "invalid_request_error" and error["message"].startswith("malformed HTTP request")
    refusals = [r for r in caplog.records if "malformed HTTP request" in r.getMessage()]
    assert refusals and all(r.exc_info is None for r in refusals)


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nothing-here", 404), ("GET", "/v1/completions", 405)])
def test_the_routers_own_refusals_are_json_errors(impatient_gateway, method, path, status):
    request = urllib.request.Request(impatient_gateway.http_url + path, method=method)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == status and error.value.headers["Content-Type"].startswith("application/json")
    assert path in json.loads(error.value.read())["error"]["message"]
    if status == 405:
        assert "POST" in error.value.headers["Allow"]
