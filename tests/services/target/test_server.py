"""The public Inference API over gRPC: exact output in every mode, streaming, batching,
per-request opt-out, clear errors for bad input, abort/cancel, health."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from tests_support import make_prompts

from saguaro.client import Health, InvalidArgumentError, Usage
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc

MAX_TOKENS = 10
K = 4


@pytest.fixture(scope="module")
def ar_server(model_dirs, serve_model):
    served = serve_model(model_dirs["llama"], "ar")
    yield served
    served.close()


@pytest.fixture(scope="module")
def sd_server(model_dirs, serve_model):
    served = serve_model(model_dirs["llama"], "sd", draft_dir=model_dirs["llama_draft_copy"])
    yield served
    served.close()


@pytest.fixture(scope="module")
def ssd_server(model_dirs, draft_service, serve_model):
    served = serve_model(model_dirs["llama"], "ssd", draft_dir=model_dirs["llama_draft_perturbed"],
                   draft_address=draft_service.address)
    yield served
    served.close()


@pytest.fixture(scope="module")
def servers(ar_server, sd_server, ssd_server):
    return {"ar": ar_server, "sd": sd_server, "ssd": ssd_server}


def run_stream(client, prompt, **options):
    stream = client.stream(prompt, **options)
    deltas = list(stream)
    return deltas, stream.result


@pytest.mark.parametrize("mode", ["ar", "sd", "ssd"])
def test_generate_matches_the_ar_engine(servers, reference, mode):
    prompts = make_prompts(3, 500, seed=11)
    expected = reference(prompts, MAX_TOKENS)
    for prompt, want in zip(prompts, expected):
        deltas, out = run_stream(servers[mode].client, prompt, max_tokens=MAX_TOKENS)
        assert out.token_ids == want
        assert [t for d in deltas for t in d.token_ids] == want
        assert [d.offset for d in deltas] == [sum(len(e.token_ids) for e in deltas[:i]) for i in range(len(deltas))]
        assert all(d.token_ids for d in deltas) and deltas[0].round == 0
        n = len(want)
        assert out.usage == Usage(prompt_tokens=len(prompt), completion_tokens=n, total_tokens=len(prompt) + n,
                                  cached_prompt_tokens=0)  # (a new prompt: nothing in the prefix cache)
        assert out.finish_reason in ("stop", "length") and out.prompt_token_ids == prompt
        timings = out.timings
        assert 0 <= timings.queue_s <= timings.time_to_first_token_s <= timings.total_s

        stats = out.stats
        assert stats["mode"] == mode
        # the prefill commits the first token; every later token comes from a decode round
        assert stats["rounds"] == sum(stats["tokens_per_round_histogram"]) >= 1
        assert sum(i * c for i, c in enumerate(stats["tokens_per_round_histogram"])) == n - 1
        assert stats["tokens_per_round"] == pytest.approx((n - 1) / stats["rounds"])
        assert stats["verify_time_s"] > 0
        if mode == "ar":
            assert stats["transport"] == "" and stats["lookahead_k"] == 0 and stats["draft_tokens"] == 0
            assert stats["tokens_per_round"] == 1.0
            continue
        assert stats["lookahead_k"] == K and len(stats["tokens_per_round_histogram"]) == K + 2
        assert stats["transport"] != "" and (stats["transport"] == "inprocess") == (mode == "sd")
        assert stats["spec_rounds"] == stats["rounds"] and stats["draft_tokens"] == K * stats["rounds"]
        assert len(stats["accepted_per_position"]) == K == len(stats["acceptance_per_position"])
        assert stats["accepted_draft_tokens"] == sum(stats["accepted_per_position"])
        assert stats["accepted_draft_tokens"] + stats["rounds"] >= n - 1  # the last round may be cut at max_tokens
        assert stats["cache_hits"] + stats["cache_misses"] == stats["rounds"]
        assert 0 <= stats["cache_hit_rate"] <= 1
        assert stats["backups_jit"] + stats["backups_fast"] <= stats["cache_misses"]
        assert stats["draft_time_s"] > 0 and stats["fallback_rounds"] == 0


def test_an_identical_draft_is_accepted(sd_server):
    _, out = run_stream(sd_server.client, make_prompts(1, 500, seed=12)[0], max_tokens=12, ignore_eos=True)
    assert out.stats["tokens_per_round"] > 2  # a copy of the target: most proposals pass


def test_text_prompt_streams_one_token_per_message(ssd_server, reference):
    deltas, out = run_stream(ssd_server.client, "def add(a, b):", max_tokens=12, stream_tokens_individually=True)
    want = reference(["def add(a, b):"], 12)[0]
    assert out.token_ids == want
    assert [d.token_ids for d in deltas] == [[t] for t in want]
    assert [d.offset for d in deltas] == list(range(len(want)))
    text = reference.tokenizer.decode(want, skip_special_tokens=True)
    assert "".join(d.text for d in deltas) == out.text == text


def test_concurrent_requests_share_the_loop(ssd_server, reference):
    prompts = make_prompts(6, 500, seed=13)
    expected = reference(prompts, MAX_TOKENS)
    results: dict[int, list[int]] = {}

    def worker(i: int) -> None:
        results[i] = ssd_server.client.generate(prompts[i], max_tokens=MAX_TOKENS).token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results.get(i) for i in range(len(prompts))] == expected


def test_a_request_may_opt_out_to_ar(ssd_server, reference):
    prompt = make_prompts(1, 500, seed=14)[0]
    out = ssd_server.client.generate(prompt, max_tokens=MAX_TOKENS, mode="ar")
    assert out.token_ids == reference([prompt], MAX_TOKENS)[0]
    stats = out.stats
    assert stats["mode"] == "ar" and stats["transport"] == "" and stats["draft_tokens"] == 0
    assert stats["lookahead_k"] == 0 and stats["cache_hits"] + stats["cache_misses"] == 0


@pytest.mark.parametrize("options, message", [
    (dict(prompt=[5, 6], temperature=-0.5), "temperature must be >= 0, got -0.5"),
    (dict(prompt=[5, 6], top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
    (dict(prompt=[5, 6], max_tokens=0), "max_tokens must be a positive integer, got 0"),
    (dict(prompt=[5, 600, -1]), r"prompt token ids \[600, -1\] are outside the vocabulary \[0, 500\)"),
    (dict(prompt=[5] * 1100), "the prompt has 1100 tokens but max_model_len is 1024"),
    (dict(prompt=[]), "the prompt is empty"),
    (dict(prompt=[5, 6], mode="sd"), "this server decodes with mode 'ssd'.*DECODE_MODE_SD"),
])
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(ssd_server, reference, options, message):
    prompt = options.pop("prompt")
    with pytest.raises(InvalidArgumentError, match=message) as info:
        ssd_server.client.generate(prompt, **options)
    assert info.value.code == "INVALID_ARGUMENT"
    assert ssd_server.client.generate([7, 8, 9], max_tokens=4).token_ids == reference([[7, 8, 9]], 4)[0]


def test_missing_prompt_and_text_without_tokenizer_are_refused(ssd_server):
    with grpc.insecure_channel(ssd_server.address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(pb.GenerateRequest(sampling=pb.SamplingParams(max_tokens=3)), timeout=30))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "no prompt: set prompt_text or prompt_token_ids" in info.value.details()


def test_an_undefined_decode_mode_is_refused_not_served_as_the_default(ssd_server):
    """The proto's contract: DEFAULT, AR or the server's mode; a value the enum does not define
    (a newer client's, or garbage) is INVALID_ARGUMENT, never silently the server's mode."""
    with grpc.insecure_channel(ssd_server.address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        request = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[5, 6]), sampling=pb.SamplingParams(max_tokens=3),
                                     decode_mode=7)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(request, timeout=30))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown decode_mode 7" in info.value.details()


def _first_delta_then(stream, action):
    """Iterate a stream, run ``action`` once after the first delta; return the deltas."""
    deltas = []
    for delta in stream:
        deltas.append(delta)
        if len(deltas) == 1:
            action()
    return deltas


def test_abort_ends_a_running_request(ar_server):
    client = ar_server.client
    stream = client.stream([5, 6, 7], max_tokens=1000, ignore_eos=True, request_id="long-1")
    found = []

    def abort():
        with pytest.raises(InvalidArgumentError, match="request id 'long-1' is already used"):
            client.generate([5, 6, 7], max_tokens=2, request_id="long-1")
        found.append(client.abort("long-1"))

    deltas = _first_delta_then(stream, abort)
    assert found == [True]
    assert stream.result.finish_reason == "abort"
    assert stream.result.usage.completion_tokens == len(stream.result.token_ids) < 1000
    assert [t for d in deltas for t in d.token_ids] == stream.result.token_ids
    assert client.abort("long-1") is False and client.abort("never-seen") is False
    assert client.generate([5, 6, 7], max_tokens=2, request_id="long-1").finish_reason == "length"


def test_client_cancel_aborts_the_request_in_the_engine(ar_server):
    stream = ar_server.client.stream([8, 9, 10], max_tokens=1000, ignore_eos=True, request_id="cancelled-1")
    deltas = _first_delta_then(stream, stream.cancel)
    assert deltas and stream.result is None
    deadline = time.monotonic() + 30
    while "cancelled-1" in ar_server.loop.live_request_ids() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "cancelled-1" not in ar_server.loop.live_request_ids()


def test_health_and_model_info(ar_server, ssd_server):
    assert ar_server.client.health() == Health(status="serving", draft_connected=False, mode="ar", message="")
    info = ar_server.client.model_info()
    assert info.model_name == "llama" and info.architecture == "LlamaForCausalLM"
    assert info.vocab_size == 500 and info.max_model_len == 1024 and info.dtype == "float32"
    assert info.decode_mode == "ar" and info.lookahead_k == 0 and info.draft_model_name == ""
    assert info.has_tokenizer and info.eos_token_ids

    assert ssd_server.client.health() == Health(status="serving", draft_connected=True, mode="ssd", message="")
    info = ssd_server.client.model_info()
    assert info.decode_mode == "ssd" and info.lookahead_k == K and info.fan_out == 2
    assert info.fan_out_list == [2] * (K + 1) and info.draft_model_name == "llama_draft_perturbed"


def test_health_is_degraded_once_the_draft_dies(model_dirs, reference, serve_model, start_draft):
    draft = start_draft(model_dirs["llama_draft_perturbed"])
    served = serve_model(model_dirs["llama"], "ssd", draft_address=draft.address, draft_timeout_s=2.0)
    try:
        assert served.client.health().status == "serving"
        prompt = make_prompts(1, 500, seed=15)[0]
        assert served.client.generate(prompt, max_tokens=6).stats["fallback_rounds"] == 0
        draft.stop()
        out = served.client.generate(prompt, max_tokens=MAX_TOKENS)
        assert out.token_ids == reference([prompt], MAX_TOKENS)[0]  # still exact, decoded without the draft
        assert out.stats["fallback_rounds"] > 0
        health = served.client.health()
        assert health == Health(status="degraded", draft_connected=False, mode="ar",
                                message="draft unavailable, decoding without speculation")
    finally:
        served.close()


def test_streams_beyond_the_limit_are_refused_and_health_still_answers(model_dirs):
    """Two stream slots, four concurrent streams on a slow engine: two are served, two refused
    with RESOURCE_EXHAUSTED and retry-after; meanwhile Health answers SERVING at once (it does
    not compete with generation for a slot)."""
    from saguaro.config import EngineConfig
    from saguaro.net import free_port
    from saguaro.services.target.local import speculative_engine
    from saguaro.services.target.server import serve_target
    from saguaro.tokenizer import load_tokenizer

    engine = speculative_engine(EngineConfig(model=model_dirs["llama"], kv_cache_bytes=16 << 20, max_num_seqs=4,
                                             show_progress=False, emulate_forward_s=0.05), "ar")
    address = f"127.0.0.1:{free_port()}"
    server, loop = serve_target(engine, load_tokenizer(model_dirs["llama"]), address, max_workers=2)
    outcomes: list[str] = []
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.InferenceStub(channel)

            def stream() -> None:
                request = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[5, 6, 7]),
                                             sampling=pb.SamplingParams(max_tokens=20, ignore_eos=True))
                call = stub.Generate(request)
                try:
                    responses = list(call)
                    outcomes.append("served" if responses[-1].WhichOneof("kind") == "final" else "cut")
                except grpc.RpcError as error:
                    retry = dict(error.trailing_metadata() or ()).get("retry-after")
                    outcomes.append(f"{error.code().name}:{retry}")

            threads = [threading.Thread(target=stream) for _ in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(0.3)  # the served streams are decoding (20 steps of 50 ms)
            for _ in range(5):
                started = time.monotonic()
                health = stub.Health(pb.HealthRequest(), timeout=5)
                assert health.status == pb.SERVING_STATUS_SERVING and time.monotonic() - started < 0.5
            for thread in threads:
                thread.join(60)
    finally:
        server.stop(None)
        loop.stop()
    assert sorted(outcomes) == ["RESOURCE_EXHAUSTED:1"] * 2 + ["served"] * 2, outcomes
