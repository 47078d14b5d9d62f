"""``n`` choices per prompt and ``stream_options.continuous_usage_stats``, with the official
`openai` client against a real gateway and target: greedy choices equal the one-choice answer,
seeded choices are reproducible and differ from one another, streams carry every choice to its
end (the merge interleaves them, shown on scripted streams: on live targets their timing decides
the order), running usage only grows and ends at the final usage, choices are numbered
prompt-major, and n beyond the bound is a 400 naming it. The gRPC API's ``n`` likewise, through
the SDK."""

from __future__ import annotations

import asyncio
import contextlib
import random

import grpc
import openai
import pytest

from saguaro.client import AsyncClient, Client, InvalidArgumentError
from saguaro.services.gateway.admission import Admission
from saguaro.services.gateway.choices import Choice, choice_seed, merged, upstream_requests
from saguaro.services.gateway.dispatch import Dispatch
from saguaro.services.gateway.errors import GatewayError
from saguaro.services.gateway.metrics import GatewayMetrics
from saguaro.services.gateway.api_models import MAX_N
from saguaro.services.gateway.openai_schema import OpenAIRequest
from saguaro.services.gateway.routing import HealthFilter, RouteRequest
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc

CONTEXT = 64
PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def target(model_dirs, module_targets):
    return module_targets(model_dirs["llama"], max_model_len=CONTEXT)


@pytest.fixture(scope="module")
def gateway(target, start_module_gateway):
    return start_module_gateway([target.address])


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused", max_retries=0)


def test_greedy_choices_are_all_the_one_choice_answer(client):
    one = client.completions.create(model="llama", prompt=PROMPT, max_tokens=8, temperature=0)
    three = client.completions.create(model="llama", prompt=PROMPT, max_tokens=8, temperature=0, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.text for c in three.choices} == {one.choices[0].text}
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    chat = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                          temperature=0, n=2)
    assert [c.index for c in chat.choices] == [0, 1]
    assert chat.choices[0].message.content == chat.choices[1].message.content


def test_seeded_choices_are_reproducible_and_differ(client):
    def sample() -> list[str]:
        answer = client.completions.create(model="llama", prompt=PROMPT, max_tokens=12, temperature=2, seed=7, n=3)
        return [c.text for c in answer.choices]

    first = sample()
    assert sample() == first
    assert len(set(first)) == 3  # seeds 7, 8, 9 at temperature 2: three different samples
    alone = client.completions.create(model="llama", prompt=PROMPT, max_tokens=12, temperature=2, seed=8)
    assert alone.choices[0].text == first[1]  # choice j samples with seed + j (vLLM's rule)


def test_a_stream_carries_every_choice_to_its_end(client):
    chunks = list(client.completions.create(model="llama", prompt=PROMPT, max_tokens=16, temperature=0, n=2,
                                            stream=True, stream_options={"include_usage": True}))
    indices = [c.choices[0].index for c in chunks if c.choices]
    assert set(indices) == {0, 1}  # (their order is the targets' timing; the merge's is tested below)
    finished = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason}
    assert set(finished) == {0, 1}
    texts = ["".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in (0, 1)]
    whole = client.completions.create(model="llama", prompt=PROMPT, max_tokens=16, temperature=0)
    assert texts == [whole.choices[0].text] * 2
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2 * whole.usage.completion_tokens


def test_chat_streams_a_role_chunk_per_choice(client):
    chunks = list(client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=4, temperature=0, n=2, stream=True))
    roles = [c.choices[0].index for c in chunks if c.choices[0].delta.role == "assistant"]
    assert sorted(roles) == [0, 1]
    assert sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason) == [0, 1]


@pytest.mark.parametrize("n", [1, 2])
def test_continuous_usage_grows_and_ends_at_the_final_usage(client, n):
    chunks = list(client.completions.create(
        model="llama", prompt=PROMPT, max_tokens=8, temperature=0, n=n, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    assert all(c.usage is not None for c in chunks)
    running = [c.usage for c in chunks]
    assert all(u.prompt_tokens == running[0].prompt_tokens for u in running)
    assert all(u.total_tokens == u.prompt_tokens + u.completion_tokens for u in running)
    completions = [u.completion_tokens for u in running]
    assert completions == sorted(completions) and completions[0] >= 1
    final = chunks[-1]
    assert final.choices == [] and final.usage == chunks[-2].usage
    plain = client.completions.create(model="llama", prompt=PROMPT, max_tokens=8, temperature=0, n=n)
    assert final.usage == plain.usage


def test_choices_are_numbered_prompt_major(client):
    prompts = [PROMPT, "import os"]
    answer = client.completions.create(model="llama", prompt=prompts, max_tokens=6, temperature=0, n=2)
    singles = [client.completions.create(model="llama", prompt=p, max_tokens=6, temperature=0) for p in prompts]
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert [c.text for c in answer.choices] == [s.choices[0].text for s in singles for _ in range(2)]
    assert answer.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    streamed = list(client.completions.create(model="llama", prompt=prompts, max_tokens=6, temperature=0, n=2,
                                              stream=True))
    texts = ["".join(c.choices[0].text for c in streamed if c.choices[0].index == i) for i in range(4)]
    assert texts == [c.text for c in answer.choices]


def test_the_other_choices_reuse_the_first_ones_prompt_kv(client, target):
    """They start once the first choice has prefilled the prompt, so they find its full blocks
    in the target's prefix cache (block size 16: a 40-token prompt has two full blocks)."""
    prompt = random.Random(14).choices(range(3, 500), k=40)  # a prompt no earlier test sent
    before = target.client.load().prefix_cache_hit_tokens
    client.completions.create(model="llama", prompt=prompt, max_tokens=2, temperature=0, n=3)
    assert target.client.load().prefix_cache_hit_tokens - before >= 2 * 32


def test_n_above_the_bound_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="llama", prompt=PROMPT, max_tokens=2, n=MAX_N + 1)
    assert refused.value.body["param"] == "n" and f"less than or equal to {MAX_N}" in refused.value.body["message"]


# -- n over gRPC (GenerateRequest.n), with the SDK ---------------------------------------------------
@pytest.fixture(scope="module")
def sdk(gateway):
    with Client(gateway.grpc_address, timeout=60) as client:
        yield client


def test_grpc_greedy_choices_are_the_one_choice_result(sdk):
    one = sdk.generate(PROMPT, max_tokens=8)
    three = sdk.generate(PROMPT, max_tokens=8, n=3, request_id="three")
    assert one.index is None and [r.index for r in three] == [0, 1, 2]
    assert all(r.request_id == "three" and r.finish_reason == one.finish_reason for r in three)
    assert [r.token_ids for r in three] == [one.token_ids] * 3 and [r.text for r in three] == [one.text] * 3
    assert [r.usage.completion_tokens for r in three] == [one.usage.completion_tokens] * 3
    assert [r.to_json()["index"] for r in three] == [0, 1, 2] and "index" not in one.to_json()


def test_grpc_seeded_choices_are_reproducible_per_choice(sdk):
    def sample() -> list[list[int]]:
        return [r.token_ids for r in sdk.generate(PROMPT, max_tokens=12, temperature=2, seed=7, n=3)]

    first = sample()
    assert sample() == first
    assert len({tuple(t) for t in first}) == 3  # seeds 7, 8, 9 at temperature 2: three different samples
    assert sdk.generate(PROMPT, max_tokens=12, temperature=2, seed=9).token_ids == first[2]  # choice j: seed + j


def test_grpc_streams_carry_indexed_deltas(gateway):
    async def run():
        async with AsyncClient(gateway.grpc_address, timeout=60) as client:
            stream = client.stream(PROMPT, max_tokens=16, n=2, stream_tokens_individually=True)
            return [d async for d in stream], stream.result, await client.generate(PROMPT, max_tokens=16)

    deltas, results, whole = asyncio.run(run())
    indices = [d.index for d in deltas]
    assert set(indices) == {0, 1}  # (their order is the targets' timing; the merge's is tested below)
    for result in results:
        mine = [d for d in deltas if d.index == result.index]
        assert [d.offset for d in mine] == list(range(len(mine)))  # each choice's offsets count its own tokens
        assert [t for d in mine for t in d.token_ids] == result.token_ids == whole.token_ids


def test_grpc_n_out_of_bounds_or_at_a_target_is_refused_naming_it(sdk, gateway, target):
    with pytest.raises(InvalidArgumentError, match=f"n must be between 1 and {MAX_N}"):
        sdk.generate(PROMPT, max_tokens=2, n=MAX_N + 1)
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        resumed = pb.GenerateRequest(prompt_text=PROMPT, n=2, resume=pb.Resume(token_ids=[5]))
        with pytest.raises(grpc.RpcError) as refused:
            list(pb_grpc.InferenceStub(channel).Generate(resumed, timeout=30))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "resume continues one choice's stream: n must be 0 or 1" in refused.value.details()
    with pytest.raises(InvalidArgumentError, match="n must be 0 or 1 at a target"):
        target.client.generate(PROMPT, max_tokens=2, n=2)


# -- the parts, alone ------------------------------------------------------------------------------
def test_seeds_per_choice_follow_vllm():
    sampling = pb.SamplingParams(temperature=1.0, seed=2**64 - 1)
    parsed = OpenAIRequest("completions", [[5, 6], [7]], sampling, pb.DECODE_MODE_DEFAULT, False, False, True, n=2)
    requests = upstream_requests(parsed, "r")
    assert [p for p, _ in requests] == [0, 0, 1, 1]
    assert [r.request_id for _, r in requests] == ["r-0", "r-1", "r-2", "r-3"]
    assert [r.sampling.seed for _, r in requests] == [2**64 - 1, 0, 2**64 - 1, 0]  # seed + j, mod 2^64
    assert choice_seed(5, 3) == 8
    unseeded = OpenAIRequest("completions", [[5]], pb.SamplingParams(), pb.DECODE_MODE_DEFAULT, False, False, True, n=2)
    assert not any(r.sampling.HasField("seed") for _, r in upstream_requests(unseeded, "r"))


def test_n_choices_are_admitted_all_or_none():
    admission = Admission(max_queue=4, retry_after_s=1, metrics=GatewayMetrics())
    tickets = admission.admit_many(3)
    with pytest.raises(GatewayError) as full:
        admission.admit_many(2)
    assert full.value.code.name == "RESOURCE_EXHAUSTED" and admission.queued == 3
    with pytest.raises(GatewayError) as never:
        admission.admit_many(5)
    assert never.value.param == "n"
    for ticket in tickets:
        ticket.leave()
    assert admission.queued == 0


class _Target:
    def __init__(self, address: str, routable: bool = True):
        self.address, self.routable = address, routable


def test_a_pinned_choice_routes_to_its_first_choices_target_while_it_can():
    a, b = _Target("a"), _Target("b")
    assert HealthFilter()([a, b], RouteRequest([], prefer="b")) == [b]
    assert HealthFilter()([a, b], RouteRequest([], exclude={"b"}, prefer="b")) == [a]  # it failed: any other
    assert HealthFilter()([a, _Target("b", routable=False)], RouteRequest([], prefer="b")) == [a]
    assert HealthFilter()([a, b], RouteRequest([])) == [a, b]


def test_all_choices_of_a_prompt_run_on_one_target(model_dirs, targets, start_gateway):
    """Two targets, round-robin routing: the choices still follow their first choice."""
    pool = [targets(model_dirs["llama"], max_model_len=CONTEXT) for _ in range(2)]
    gateway = start_gateway([t.address for t in pool], policy="round-robin")
    client = openai.OpenAI(base_url=gateway.http_url + "/v1", api_key="unused", max_retries=0)
    for _ in range(2):
        raw = client.completions.with_raw_response.create(model="llama", prompt=PROMPT, max_tokens=2,
                                                          temperature=0, n=4)
        assert len(set(raw.headers["x-saguaro-target"].split(","))) == 1


class _Dispatcher:
    """Streams scripted messages per request id; ``None`` in a script raises a GatewayError."""

    def __init__(self, scripts: dict[str, list]):
        self.scripts = scripts
        self.closed: list[str] = []

    async def stream(self, dispatch):
        request_id = dispatch.request.request_id
        dispatch.target = "t-" + request_id
        try:
            for item in self.scripts[request_id]:
                await asyncio.sleep(0)
                if item is None:
                    raise GatewayError(grpc.StatusCode.UNAVAILABLE, f"{request_id} failed")
                yield item
            await asyncio.Event().wait()  # (a stream that never ends unless cancelled)
        finally:
            self.closed.append(request_id)


def _choices(ids: list[str], n: int) -> list[Choice]:
    return [Choice(i, i // n, Dispatch(pb.GenerateRequest(request_id=r), r, [], 0.0, "completions"))
            for i, r in enumerate(ids)]


DELTA = pb.GenerateResponse(delta=pb.TokenDelta(token_ids=[5], text="x"))


FINAL = pb.GenerateResponse(final=pb.GenerateFinal(finish_reason=pb.FINISH_REASON_LENGTH))


def test_the_merge_relays_each_message_as_it_arrives():
    """Choices that stream at the same pace come out interleaved, not one choice after the
    other: the merge relays every message when its choice sends it (on live targets the order
    is their timing, so it is shown here on scripted streams that yield to each other)."""
    fake = _Dispatcher({"a": [DELTA, DELTA, DELTA, FINAL], "b": [DELTA, DELTA, DELTA, FINAL]})

    async def run() -> list[int]:
        async with contextlib.aclosing(merged(fake, _choices(["a", "b"], 1), 1)) as messages:
            return [choice.index async for choice, _ in messages]

    order = asyncio.run(run())
    assert sorted(order) == [0] * 4 + [1] * 4
    assert order.index(1) < len(order) - 1 - order[::-1].index(0)  # b began before a ended


def test_a_failing_choice_fails_the_request_and_cancels_the_others():
    """A choice's stream failing after the others began (a target lost mid-answer cannot be
    staged on demand against a live stack): the merge raises it and closes every other stream."""
    fake = _Dispatcher({"a": [DELTA], "b": [DELTA, None]})

    async def run():
        async with contextlib.aclosing(merged(fake, _choices(["a", "b"], 2), 2)) as messages:
            async for _ in messages:
                pass

    with pytest.raises(GatewayError, match="b failed"):
        asyncio.run(run())
    assert sorted(fake.closed) == ["a", "b"]  # "a" never ends by itself: it was cancelled
