"""Mid-stream migration: a target that dies after the first token, and a gateway that dies
mid-stream, cost the client nothing. Real parts throughout: `saguaro target` / `saguaro gateway`
child processes killed with SIGKILL, in-process target servers stopped, real gRPC and HTTP. The
output is compared with transformers (``hf_greedy``) and with an unbroken run: the same tokens,
offsets without a gap, the same text chunk for chunk (a character split across the break too).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable

import grpc
import pytest
from tests_support import hf_greedy

from saguaro.net import free_port
from saguaro.client import AsyncClient, Client, GenerateResult, StreamDelta, Usage
from saguaro.tokenizer import decode, load_tokenizer
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow  # kills and restarts real target and gateway processes

FORWARD_S = 0.1  # emulated forward time of the targets that get killed: the stream is still running then
PROMPT = [11, 12, 13, 14, 15]
MAX_TOKENS = 16
KILL_AFTER = 5  # tokens the client has seen when the serving target is killed


# -- helpers -----------------------------------------------------------------------------------
def stream_and_break(client: Client, prompt: list[int], after: int, breaker: Callable[[], None],
                     **options) -> tuple[list[StreamDelta], GenerateResult]:
    """Stream one token per delta; once ``after`` tokens arrived, call ``breaker`` (a kill)."""
    stream = client.stream(prompt, stream_tokens_individually=True, **options)
    deltas: list[StreamDelta] = []
    for delta in stream:
        deltas.append(delta)
        if len(deltas) == after:
            breaker()
    return deltas, stream.result


def pieces(deltas: list[StreamDelta]) -> list[tuple[list[int], str, int]]:
    return [(d.token_ids, d.text, d.offset) for d in deltas]


def serving_target(gateway, request_id: str) -> str:
    """Address of the target the gateway runs ``request_id`` on right now."""
    return gateway.call(lambda: gateway.gateway.dispatcher.live[request_id].target.address)


def slow_pods(targets, model_dir: str, n: int) -> dict:
    """``n`` in-process targets with slow forwards, by address."""
    return {t.address: t for t in (targets(model_dir, emulate_forward_s=FORWARD_S) for _ in range(n))}


def slow_child_target(children, model_dir: str):
    port = free_port()
    return children(["target", "--model", model_dir, "--mode", "ar", "--port", str(port), "--metrics-port", "0",
                     "--emulate-forward-ms", str(FORWARD_S * 1000), "--kv-cache-bytes", str(16 << 20),
                     "--max-num-seqs", "8"], f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def expected(model_dirs) -> list[int]:
    tokens = hf_greedy(model_dirs["llama"], PROMPT, MAX_TOKENS)
    assert len(tokens) == MAX_TOKENS  # no EOS on the way: every test below runs the full length
    return tokens


@pytest.fixture(scope="module")
def tokenizer(model_dirs):
    return load_tokenizer(model_dirs["llama"])


@pytest.fixture(scope="module")
def steady_target(model_dirs, module_targets):
    """A target nobody kills."""
    return module_targets(model_dirs["llama"])


@pytest.fixture(scope="module")
def unbroken(steady_target) -> list[tuple[list[int], str, int]]:
    """The deltas of the request the tests break, on a target nobody kills."""
    return pieces(list(steady_target.client.stream(PROMPT, max_tokens=MAX_TOKENS, stream_tokens_individually=True)))


# -- the resume protocol at one target ----------------------------------------------------------
def _generate(stub, prompt: list[int], resume: pb.Resume | None = None, **sampling) -> list[pb.GenerateResponse]:
    request = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=prompt), sampling=pb.SamplingParams(**sampling),
                                 stream_tokens_individually=True)
    if resume is not None:
        request.resume.CopyFrom(resume)
    return list(stub.Generate(request, timeout=60))


def test_a_resumed_stream_continues_tokens_offsets_and_text_at_every_break(steady_target):
    with grpc.insecure_channel(steady_target.address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        whole = _generate(stub, PROMPT, max_tokens=24, ignore_eos=True)
        deltas = [m.delta for m in whole[:-1]]
        tokens = [t for d in deltas for t in d.token_ids]
        assert any(d.text == "" for d in deltas[:-1])  # some break points fall inside a character
        for k in range(1, len(deltas)):
            resume = pb.Resume(token_ids=tokens[:k], text="".join(d.text for d in deltas[:k]))
            rest = _generate(stub, PROMPT, resume, max_tokens=24, ignore_eos=True)
            assert [(list(m.delta.token_ids), m.delta.text, m.delta.offset) for m in rest[:-1]] == \
                [(list(d.token_ids), d.text, d.offset) for d in deltas[k:]], f"break after {k} tokens"
            final = rest[-1].final
            assert final.finish_reason == pb.FINISH_REASON_LENGTH
            assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (len(PROMPT), 24)


def test_a_resume_that_already_ends_the_request_gets_only_the_final(steady_target, expected):
    with grpc.insecure_channel(steady_target.address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        stop = expected[3]
        (message,) = _generate(stub, PROMPT, pb.Resume(token_ids=expected[:4]), max_tokens=MAX_TOKENS,
                               stop_token_ids=[stop])
        assert message.final.finish_reason == pb.FINISH_REASON_STOP and message.final.stop_token_id == stop
        assert message.final.usage.completion_tokens == 4
        (message,) = _generate(stub, PROMPT, pb.Resume(token_ids=expected[:6]), max_tokens=6)
        assert message.final.finish_reason == pb.FINISH_REASON_LENGTH
        with pytest.raises(grpc.RpcError) as error:
            _generate(stub, PROMPT, pb.Resume(token_ids=expected[:4], text="not the text"), max_tokens=8)
        assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "resume.text" in error.value.details()


def test_the_gateway_checks_resumed_tokens(steady_target, start_gateway):
    gateway = start_gateway([steady_target.address])
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        for resume, max_tokens, words in ((pb.Resume(token_ids=[1, 100_000]), 8, "outside the vocabulary"),
                                          (pb.Resume(token_ids=[5] * 9), 8, "more than sampling.max_tokens")):
            with pytest.raises(grpc.RpcError) as error:
                _generate(stub, PROMPT, resume, max_tokens=max_tokens)
            assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "resume.token_ids" in error.value.details() and words in error.value.details()


# -- migration at the gateway -------------------------------------------------------------------
def test_a_sigkilled_target_mid_stream_is_invisible_to_a_grpc_client(model_dirs, children, start_gateway, expected,
                                                                     unbroken, tokenizer, metric):
    pods = [slow_child_target(children, model_dirs["llama"]) for _ in range(2)]
    for pod in pods:
        pod.wait_ready()
    by_address = {p.address: p for p in pods}
    gateway = start_gateway([p.address for p in pods], policy="least-load")
    with Client(gateway.grpc_address, timeout=120, retries=0, resumes=0) as client:  # the gateway alone copes
        deltas, result = stream_and_break(client, PROMPT, KILL_AFTER,
                                          lambda: by_address[serving_target(gateway, "victim")].kill(),
                                          max_tokens=MAX_TOKENS, request_id="victim")
    assert result.token_ids == expected
    assert pieces(deltas) == unbroken  # same tokens, offsets and text chunks as an unbroken stream
    assert result.text == decode(tokenizer, expected)
    assert result.finish_reason == "length"
    assert result.usage == Usage(prompt_tokens=len(PROMPT), completion_tokens=MAX_TOKENS,
                                 total_tokens=len(PROMPT) + MAX_TOKENS, cached_prompt_tokens=0)
    assert metric(gateway, "saguaro_gateway_migrations_total", outcome="resumed") == 1
    assert sum(p.proc.poll() is not None for p in pods) == 1  # one pod did die mid-stream


def _sse_events(url: str, body: dict, request_id: str, after: int = 0,
                breaker: Callable[[], None] = lambda: None) -> list[dict]:
    """Read an SSE stream line by line; call ``breaker`` once ``after`` text chunks arrived."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "x-request-id": request_id})
    events, chunks = [], 0
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return events
            events.append(json.loads(line[len("data: "):]))
            if events[-1].get("choices") and events[-1]["choices"][0]["text"]:
                chunks += 1
                if chunks == after:
                    breaker()
    raise AssertionError("the stream ended without [DONE]")


def test_a_stopped_target_mid_stream_is_invisible_to_an_sse_client(model_dirs, targets, start_gateway, expected,
                                                                   tokenizer, metric):
    pods = slow_pods(targets, model_dirs["llama"], 2)
    gateway = start_gateway(list(pods), policy="least-load")
    url = gateway.http_url + "/v1/completions"
    body = {"model": "llama", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    unbroken = _sse_events(url, body, "unbroken")
    events = _sse_events(url, body, "victim", 2, lambda: pods[serving_target(gateway, "victim")].close())
    assert "error" not in events[-1]
    chunks = [e["choices"][0]["text"] for e in events if e["choices"]]
    assert chunks == [e["choices"][0]["text"] for e in unbroken if e["choices"]]
    assert "".join(chunks) == decode(tokenizer, expected)
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"].items() >= {"prompt_tokens": len(PROMPT), "completion_tokens": MAX_TOKENS,
                                           "total_tokens": len(PROMPT) + MAX_TOKENS}.items()
    assert metric(gateway, "saguaro_gateway_migrations_total", outcome="resumed") == 1



def test_stop_tokens_hold_across_the_seam(model_dirs, targets, start_gateway, expected, metric):
    # A stop token that first appears well after the break: the new target must stop on it.
    stop_at = next(j for j in range(KILL_AFTER + 3, MAX_TOKENS) if expected[j] not in expected[:j])
    pods = slow_pods(targets, model_dirs["llama"], 2)
    gateway = start_gateway(list(pods), policy="least-load")
    with Client(gateway.grpc_address, timeout=120, retries=0, resumes=0) as client:
        deltas, result = stream_and_break(client, PROMPT, KILL_AFTER,
                                          lambda: pods[serving_target(gateway, "stop")].close(),
                                          max_tokens=MAX_TOKENS, stop_token_ids=[expected[stop_at]], request_id="stop")
    assert result.token_ids == expected[:stop_at + 1]
    assert (result.finish_reason, result.stop_token_id) == ("stop", expected[stop_at])
    assert [d.offset for d in deltas] == list(range(stop_at + 1))
    assert result.usage.completion_tokens == stop_at + 1
    assert metric(gateway, "saguaro_gateway_migrations_total", outcome="resumed") == 1


def test_a_sampled_request_migrates_and_keeps_its_length(model_dirs, targets, start_gateway, tokenizer, metric):
    pods = slow_pods(targets, model_dirs["llama"], 2)
    gateway = start_gateway(list(pods), policy="least-load")
    options = {"max_tokens": MAX_TOKENS, "temperature": 0.8, "seed": 7, "ignore_eos": True}
    with Client(gateway.grpc_address, timeout=120, retries=0, resumes=0) as client:
        unbroken = client.generate(PROMPT, **options)
        deltas, result = stream_and_break(client, PROMPT, KILL_AFTER,
                                          lambda: pods[serving_target(gateway, "sampled")].close(),
                                          request_id="sampled", **options)
    assert (len(result.token_ids), result.finish_reason) == (MAX_TOKENS, "length")
    assert [d.offset for d in deltas] == list(range(MAX_TOKENS))
    assert result.token_ids[:KILL_AFTER] == unbroken.token_ids[:KILL_AFTER]  # same seed, same target: same start
    assert result.text == decode(tokenizer, result.token_ids)
    assert metric(gateway, "saguaro_gateway_migrations_total", outcome="resumed") == 1


def test_a_spent_migration_budget_ends_the_stream_with_a_clear_error(model_dirs, targets, start_gateway, expected,
                                                                     metric):
    pods = slow_pods(targets, model_dirs["llama"], 3)
    gateway = start_gateway(list(pods), policy="least-load", max_migrations=1)
    with Client(gateway.grpc_address, timeout=120, retries=0, resumes=0) as client:
        stream = client.stream(PROMPT, max_tokens=MAX_TOKENS, stream_tokens_individually=True, request_id="doomed")
        received = []
        for delta in stream:
            received.extend(delta.token_ids)
            if len(received) in (3, 8):  # the first target, then the one that took over
                pods[serving_target(gateway, "doomed")].close()
    result = stream.result
    assert result.finish_reason == "error"
    assert "not migrated" in result.error_message and "--max-migrations 1" in result.error_message
    assert result.token_ids == expected[:len(result.token_ids)] and len(result.token_ids) >= 8
    assert result.usage.completion_tokens == len(result.token_ids)
    assert metric(gateway, "saguaro_gateway_migrations_total", outcome="resumed") == 1
    assert metric(gateway, "saguaro_gateway_migrations_total", outcome="exhausted") == 1


# -- the client SDK resumes when the gateway itself dies -----------------------------------------
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_sdk_resumes_on_a_restarted_gateway_after_a_sigkill(kind, model_dirs, targets, children, expected,
                                                                unbroken, tokenizer):
    target = targets(model_dirs["llama"], emulate_forward_s=FORWARD_S)
    port = free_port()
    args = ["gateway", "--port", str(port), "--http-port", "0", "--targets", target.address]
    gateway = children(args, f"127.0.0.1:{port}").wait_ready()

    def restart() -> None:
        gateway.kill()
        children(args, gateway.address)  # not waited for: the client's retries wait for it

    # The replacement takes seconds to route again: the resumed request is retried until then.
    patience = {"timeout": 120, "retries": 200, "retry_backoff_s": 0.05, "max_retry_delay_s": 0.25, "resumes": 1}
    options = {"max_tokens": MAX_TOKENS, "stream_tokens_individually": True}
    if kind == "sync":
        with Client(gateway.address, **patience) as client:
            stream = client.stream(PROMPT, **options)
            deltas = []
            for delta in stream:
                deltas.append(delta)
                if len(deltas) == KILL_AFTER:
                    restart()
    else:
        async def run():
            async with AsyncClient(gateway.address, **patience) as client:
                stream = client.stream(PROMPT, **options)
                out = []
                async for delta in stream:
                    out.append(delta)
                    if len(out) == KILL_AFTER:
                        restart()
                return stream, out

        stream, deltas = asyncio.run(run())
    result = stream.result
    assert stream.resumes == 1
    assert result.token_ids == expected
    assert pieces(deltas) == unbroken
    assert result.text == decode(tokenizer, expected)
    assert result.usage.completion_tokens == MAX_TOKENS and result.finish_reason == "length"
