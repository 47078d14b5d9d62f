"""The gRPC client SDK against the gateway: typed results, keyword options, retries before the first token,
cancellation that aborts on the target (sync break, async task cancel), API-key and W3C
trace-context metadata reaching the target through the gateway."""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import threading
from dataclasses import is_dataclass

import pytest
from opentelemetry.sdk.trace import TracerProvider

from saguaro.client import AsyncClient, Client, GenerateResult, ServiceUnavailableError, Usage
from saguaro.errors import InvalidRequestError
from saguaro.services.target.api import InferenceService
from saguaro.v1 import inference_pb2 as pb


class RecordingService(InferenceService):
    """The real target service, remembering the metadata of each Generate call."""

    seen: list[dict[str, str]] = []

    def Generate(self, request, context):
        RecordingService.seen.append(dict(context.invocation_metadata()))
        yield from super().Generate(request, context)


def idle(client: Client) -> bool:
    load = client.load()
    return load.num_running + load.num_waiting == 0 and load.kv_cache_usage == 0


@pytest.fixture(scope="module")
def target(model_dirs, module_targets):
    return module_targets(model_dirs["llama"])


def test_results_are_typed_and_json_ready(target, start_gateway):
    gateway = start_gateway([target.address])
    with Client(gateway.grpc_address) as client:
        out = client.generate([3, 4, 5], max_tokens=3, request_id="typed-1")
        health, load, info = client.health(), client.load(), client.model_info()
    assert isinstance(out, GenerateResult) and is_dataclass(out) and not isinstance(out, dict)
    assert out.request_id == "typed-1" and len(out.token_ids) == 3 and isinstance(out.text, str)
    assert out.finish_reason == "length" and out.stop_reason is None and out.index is None
    assert out.usage == Usage(prompt_tokens=3, completion_tokens=3, total_tokens=6, cached_prompt_tokens=0)
    assert out.stats["mode"] == "ar" and out.timings.total_s >= out.timings.time_to_first_token_s > 0
    # to_json: what `saguaro generate --json` prints (the offline API's keys, usage with cached_prompt_tokens)
    printed = json.loads(json.dumps(out.to_json()))
    assert list(printed) == ["request_id", "prompt_token_ids", "token_ids", "text", "finish_reason", "timings",
                             "stats", "usage", "stop_string", "logprobs", "prompt_logprobs"]
    assert printed["token_ids"] == out.token_ids and printed["prompt_token_ids"] == [3, 4, 5]
    assert printed["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
                                "cached_prompt_tokens": 0}
    assert list(printed["timings"]) == ["time_to_first_token_s", "total_s", "decode_tokens_per_s", "queue_s"]
    assert health.status == "serving" and health.to_json()["status"] == "serving"
    assert load.max_num_seqs == 8 and json.loads(json.dumps(load.to_json()))["max_num_seqs"] == 8
    assert info.model_name == "llama" and info.to_json()["vocab_size"] == info.vocab_size == 500


def test_usage_counts_the_prompt_tokens_the_prefix_cache_served(target, start_gateway):
    """As the HTTP API's cached_tokens: a repeated prompt's full blocks (16 tokens) come from the
    target's prefix cache; its last token is always computed."""
    prompt = random.Random(31).choices(range(3, 500), k=40)  # a prompt no other test sends
    gateway = start_gateway([target.address])
    with Client(gateway.grpc_address) as client:
        first = client.generate(prompt, max_tokens=2)
        again = client.generate(prompt, max_tokens=2)
    assert first.usage.cached_prompt_tokens == 0
    assert again.usage == Usage(prompt_tokens=40, completion_tokens=2, total_tokens=42, cached_prompt_tokens=32)
    assert again.to_json()["usage"]["cached_prompt_tokens"] == 32


def test_every_sampling_field_is_a_keyword_and_a_typo_is_a_type_error():
    """One keyword-only parameter per field of SamplingParams, on both clients' generate and
    stream; a misspelt keyword fails before anything is sent, naming it."""
    fields = {f.name for f in pb.SamplingParams.DESCRIPTOR.fields}
    for method in (Client.generate, Client.stream, AsyncClient.generate, AsyncClient.stream):
        parameters = inspect.signature(method).parameters
        keyword_only = {name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert fields | {"n", "mode", "request_id", "timeout", "stream_tokens_individually"} == keyword_only, method
        assert "max_tokens" in inspect.getdoc(method)
    with Client("127.0.0.1:9") as client:
        with pytest.raises(TypeError, match="'temprature'"):
            client.generate([3], temprature=0.5)
        with pytest.raises(InvalidRequestError, match="n must be at least 1"):
            client.generate([3], n=0)


def test_abort_stops_every_choice(target, start_gateway):
    gateway = start_gateway([target.address])
    with Client(gateway.grpc_address) as client:
        stream = client.stream([8, 9, 10], max_tokens=1000, ignore_eos=True, n=2, request_id="both")
        started, aborted = set(), False
        for delta in stream:
            started.add(delta.index)
            if started == {0, 1} and not aborted:  # both choices run on the target
                aborted = client.abort("both")
    assert aborted
    assert [r.index for r in stream.result] == [0, 1]
    assert [r.finish_reason for r in stream.result] == ["abort", "abort"]
    assert all(r.usage.completion_tokens == len(r.token_ids) < 1000 for r in stream.result)


def test_requests_refused_before_the_first_token_are_retried(model_dirs, targets, start_gateway, metric, wait_until):
    slow = targets(model_dirs["llama"], emulate_forward_s=0.3)
    gateway = start_gateway([slow.address], max_queue=1)
    with Client(gateway.grpc_address, retries=0) as impatient, Client(gateway.grpc_address, retries=6) as patient:
        first = threading.Thread(target=lambda: impatient.generate([3, 4], max_tokens=2))
        first.start()
        wait_until(lambda: gateway.call(lambda: gateway.gateway.dispatcher.admission.queued) == 1,
                   what="the first request to fill the queue")
        out = patient.generate([5, 6], max_tokens=2)  # refused (429) at least once, then served
        first.join(60)
    assert out.finish_reason == "length"
    assert metric(gateway, "saguaro_gateway_requests_total", api="grpc", code="RESOURCE_EXHAUSTED") >= 1


def test_retries_stop_at_the_deadline_with_the_servers_error(start_gateway):
    gateway = start_gateway(["127.0.0.1:9"], wait=False)  # nothing will ever be healthy
    with Client(gateway.grpc_address, retries=3, timeout=2.5) as client:
        with pytest.raises(ServiceUnavailableError) as error:
            client.generate([3, 4], max_tokens=2)
    assert error.value.code == "UNAVAILABLE" and error.value.retry_after == 1
    assert "no healthy target" in str(error.value)


def test_leaving_a_sync_stream_early_aborts_on_the_target(target, start_gateway, wait_until):
    gateway = start_gateway([target.address])
    with Client(gateway.grpc_address) as client:
        for delta in client.stream([8, 9, 10], max_tokens=1000, ignore_eos=True):
            assert delta.token_ids
            break
        wait_until(lambda: idle(target.client), what="the target to abort the abandoned request")


def test_cancelling_an_async_task_aborts_on_the_target(target, start_gateway, wait_until):
    gateway = start_gateway([target.address])

    async def scenario():
        async with AsyncClient(gateway.grpc_address) as client:
            started = asyncio.Event()

            async def consume():
                async for _ in client.stream([8, 9, 10], max_tokens=1000, ignore_eos=True):
                    started.set()

            task = asyncio.create_task(consume())
            await started.wait()
            assert target.client.load().num_running == 1  # (the gateway's Health lags by a poll)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    wait_until(lambda: idle(target.client), what="the target to abort the cancelled request")


def test_api_key_and_trace_context_reach_the_target_through_the_gateway(model_dirs, wired_target, start_gateway):
    address, _ = wired_target(model_dirs["llama"], service_class=RecordingService)
    gateway = start_gateway([address], api_keys=frozenset({"secret"}))
    tracer = TracerProvider().get_tracer("test")
    RecordingService.seen.clear()
    with tracer.start_as_current_span("sync call") as span, Client(gateway.grpc_address, api_key="secret") as client:
        client.generate([3, 4], max_tokens=2)

    async def call_async():
        async with AsyncClient(gateway.grpc_address, api_key="secret") as client:
            await client.generate([3, 4], max_tokens=2)

    with tracer.start_as_current_span("async call") as async_span:
        asyncio.run(call_async())
    with Client(gateway.grpc_address, api_key="secret") as client:  # no current span: no traceparent
        client.generate([3, 4], max_tokens=2)

    traceparents = [m.get("traceparent") for m in RecordingService.seen]
    ids = [f"{s.get_span_context().trace_id:032x}-{s.get_span_context().span_id:016x}" for s in (span, async_span)]
    assert traceparents[0].startswith(f"00-{ids[0]}-") and traceparents[1].startswith(f"00-{ids[1]}-")
    assert traceparents[2] is None
    assert all("authorization" not in m for m in RecordingService.seen)  # the key stops at the gateway
