"""Failures around the gateway: a pod killed before the first token (real processes, the
`saguaro gateway` command), client cancel and Abort free the sequence on the target, a full
queue answers 429 / RESOURCE_EXHAUSTED with Retry-After, deadlines, the circuit breaker."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from saguaro.net import free_port
from saguaro.client import Client, ServiceUnavailableError

pytestmark = pytest.mark.slow  # kills, stalls and restarts real target processes

SLOW_FORWARD_S = 0.4  # every forward of the slow targets takes this long (emulated accelerator)


def load_of(client: Client) -> int:
    load = client.load()
    return load.num_running + load.num_waiting


def idle(client: Client) -> bool:
    load = client.load()
    return load.num_running == load.num_waiting == 0 and load.kv_cache_usage == 0


def test_a_pod_killed_before_the_first_token_is_retried_on_another(model_dirs, children, reference, metric,
                                                                     wait_until):
    pods = []
    for _ in range(2):
        port = free_port()
        pods.append(children(["target", "--model", model_dirs["llama"], "--mode", "ar", "--port", str(port),
                              "--emulate-forward-ms", str(SLOW_FORWARD_S * 1000), "--metrics-port", "0",
                              "--kv-cache-bytes", str(16 << 20), "--max-num-seqs", "8"], f"127.0.0.1:{port}"))
    grpc_port, http_port = free_port(), free_port()
    gateway = children(["gateway", "--port", str(grpc_port), "--http-port", str(http_port), "--policy", "least-load",
                        "--targets", *(p.address for p in pods), "--max-queue", "8"], f"127.0.0.1:{grpc_port}")
    for child in (*pods, gateway):
        child.wait_ready()
    metrics_url = f"http://127.0.0.1:{http_port}"
    wait_until(lambda: metric(metrics_url, "saguaro_gateway_target_healthy") == 2, timeout=60,
               what="the gateway to see both targets healthy")
    direct = [Client(p.address) for p in pods]
    with Client(gateway.address, timeout=120, retries=0) as client:  # a retry here would be the gateway's
        client.wait_until_ready(60)
        prompt = [11, 12, 13, 14]
        outcome = {}
        request = threading.Thread(target=lambda: outcome.update(out=client.generate(prompt, max_tokens=3)))
        request.start()
        wait_until(lambda: any(load_of(d) for d in direct), what="a target to take the request")
        victim = next(i for i, d in enumerate(direct) if load_of(d))
        pods[victim].kill()  # SIGKILL during its prefill: no token was sent yet
        request.join(120)
        assert outcome["out"].token_ids == reference([prompt], 3)[0]
        assert client.generate([5, 6, 7], max_tokens=2).finish_reason == "length"  # and it keeps serving

    assert metric(metrics_url, "saguaro_gateway_retries_total") >= 1
    wait_until(lambda: metric(metrics_url, "saguaro_gateway_target_healthy", target=pods[victim].address) == 0,
               what="the dead target to be marked unhealthy")
    for d in direct:
        d.close()


@pytest.fixture(scope="module")
def slow_target(model_dirs, module_targets):
    return module_targets(model_dirs["llama"], emulate_forward_s=SLOW_FORWARD_S)


@pytest.fixture(scope="module")
def fast_target(model_dirs, module_targets):
    return module_targets(model_dirs["llama"])


def test_client_cancel_frees_the_sequence_on_the_target(fast_target, start_gateway, wait_until):
    gateway = start_gateway([fast_target.address])
    with Client(gateway.grpc_address) as client:
        stream = client.stream([8, 9, 10], max_tokens=1000, ignore_eos=True, request_id="cancel-me")
        for _ in stream:
            assert load_of(fast_target.client) == 1
            stream.cancel()
        assert stream.result is None
    wait_until(lambda: idle(fast_target.client), what="the target to free the cancelled sequence")
    assert fast_target.loop.live_request_ids() == []


def test_http_client_disconnect_frees_the_sequence(fast_target, start_gateway, wait_until):
    gateway = start_gateway([fast_target.address])
    body = b'{"model": "llama", "prompt": [8, 9, 10], "max_tokens": 900, "ignore_eos": true, "stream": true}'
    request = urllib.request.Request(gateway.http_url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.readline().startswith(b"data: ")
        assert load_of(fast_target.client) == 1
    wait_until(lambda: idle(fast_target.client), what="the target to free the abandoned sequence")


def test_abort_through_the_gateway_ends_the_stream(fast_target, start_gateway):
    gateway = start_gateway([fast_target.address])
    with Client(gateway.grpc_address) as client:
        stream = client.stream([8, 9, 10], max_tokens=1000, ignore_eos=True, request_id="abort-me")
        found = []
        for _delta in stream:
            if not found:
                found.append(client.abort("abort-me"))
        assert found == [True] and stream.result.finish_reason == "abort"
        assert client.abort("abort-me") is False
    assert idle(fast_target.client)


def test_a_full_queue_answers_429_and_resource_exhausted_with_retry_after(slow_target, start_gateway, http,
                                                                          wait_until, reference):
    gateway = start_gateway([slow_target.address], max_queue=1)
    with Client(gateway.grpc_address, retries=0) as client:
        first = {}
        running = threading.Thread(target=lambda: first.update(out=client.generate([20, 21], max_tokens=2)))
        running.start()
        wait_until(lambda: gateway.call(lambda: gateway.gateway.dispatcher.admission.queued) == 1,
                   what="the first request to wait for its first token")
        refused = http(gateway.http_url + "/v1/completions", {"model": "llama", "prompt": "x", "max_tokens": 1})
        assert refused.status == 429 and refused.headers["retry-after"] == "1"
        assert "--max-queue 1" in refused.json()["error"]["message"]
        with pytest.raises(ServiceUnavailableError) as error:
            client.generate([22, 23], max_tokens=1)
        assert error.value.code == "RESOURCE_EXHAUSTED" and error.value.retry_after == 1
        running.join(60)
        assert first["out"].token_ids == reference([[20, 21]], 2)[0]
        assert client.generate([22, 23], max_tokens=1).finish_reason == "length"  # room again


def test_a_stream_that_waits_between_tokens_gets_sse_keep_alives(slow_target, start_gateway):
    """Each token of the slow target takes 0.4 s; with keep-alives every 0.1 s, comment lines
    arrive between the data chunks (a proxy with a short idle timeout keeps the connection), and
    the stream still ends with its finish chunk and [DONE]."""
    gateway = start_gateway([slow_target.address], sse_keepalive_s=0.1)
    body = json.dumps({"model": "llama", "prompt": [40, 41], "max_tokens": 3, "stream": True,
                       "ignore_eos": True}).encode()
    request = urllib.request.Request(gateway.http_url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        lines = [line.decode().rstrip("\n") for line in response]
    keepalives = [line for line in lines if line.startswith(":")]
    data = [line for line in lines if line.startswith("data: ")]
    assert keepalives and all(line == ": keep-alive" for line in keepalives)
    assert data[-1] == "data: [DONE]"
    assert json.loads(data[-2][len("data: "):])["choices"][0]["finish_reason"] == "length"


def test_a_deadline_ends_the_request_and_frees_the_target(slow_target, start_gateway, wait_until):
    gateway = start_gateway([slow_target.address])
    with Client(gateway.grpc_address, retries=0) as client:
        with pytest.raises(ServiceUnavailableError) as error:
            client.generate([30, 31], max_tokens=50, ignore_eos=True, timeout=SLOW_FORWARD_S * 3)
        assert error.value.code == "DEADLINE_EXCEEDED"
        assert f"within {SLOW_FORWARD_S * 3} s" in str(error.value)  # the request's deadline, not the client's
    wait_until(lambda: idle(slow_target.client), what="the target to drop the expired request")


def test_the_circuit_opens_on_failures_and_closes_when_the_pod_is_back(model_dirs, targets, start_gateway, metric,
                                                                       wait_until):
    pods = sorted((targets(model_dirs["llama"]) for _ in range(2)), key=lambda t: t.address)
    # Health every 2 s: the request right after the pod dies finds it still believed healthy.
    gateway = start_gateway([p.address for p in pods], policy="round-robin", breaker_failures=1,
                            breaker_cooldown_s=0.5, health_interval_s=2.0)
    doomed = pods[0]  # round-robin starts with the lowest address
    doomed.close()
    with Client(gateway.grpc_address, retries=0) as client:
        assert client.generate([40, 41], max_tokens=2).finish_reason == "length"  # retried on the other pod
        assert metric(gateway, "saguaro_gateway_target_circuit_state", target=doomed.address) == 2  # open
        assert metric(gateway, "saguaro_gateway_target_circuit_transitions_total", target=doomed.address,
                      state="open") == 1

        targets(model_dirs["llama"], address=doomed.address)  # the pod comes back

        def closed_again() -> bool:
            assert client.generate([42, 43], max_tokens=2).finish_reason == "length"
            return metric(gateway, "saguaro_gateway_target_circuit_state", target=doomed.address) == 0

        wait_until(closed_again, what="a half-open trial request to close the circuit")
    assert metric(gateway, "saguaro_gateway_target_circuit_transitions_total", target=doomed.address,
                  state="half_open") >= 1


def test_targets_come_and_go_without_a_restart(fast_target, model_dirs, targets, start_gateway, metric, wait_until):
    """Discovery hands the pool the full address set on every change (what the Kubernetes watch does)."""
    gateway = start_gateway([fast_target.address])
    newcomer = targets(model_dirs["llama"])
    gateway.call(gateway.gateway.pool.set_addresses, [fast_target.address, newcomer.address])
    wait_until(lambda: metric(gateway, "saguaro_gateway_target_healthy") == 2, what="the new target to be healthy")
    gateway.call(gateway.gateway.pool.set_addresses, [newcomer.address])
    with Client(gateway.grpc_address) as client:
        for _ in range(4):
            assert client.generate([3, 4, 5], max_tokens=2).finish_reason == "length"
        assert client.health().message == "1 of 1 targets healthy"
    assert metric(gateway, "saguaro_gateway_target_healthy", target=fast_target.address) == 0  # series removed
    assert newcomer.client.load().prefix_cache_queried_tokens >= 4 * 3  # it served them all


STREAMS = 64


def test_streams_at_the_target_limit_are_served_and_readiness_holds(model_dirs, targets, start_gateway, http):
    """64 concurrent streams on a target with max_num_seqs 16 (four times it, the target's
    stream limit; the gateway's queue limit above that): every request gets 200 or 429, while
    /readyz and the target's health stay SERVING throughout. A Health check never waits behind
    generation for a slot; with one shared cap of 64 calls it was refused here, and the gateway
    reported its only target unhealthy."""
    target = targets(model_dirs["llama"], max_num_seqs=16, emulate_forward_s=0.05)
    gateway = start_gateway([target.address], max_queue=64)
    statuses: list[int] = []

    def stream(i: int) -> None:
        body = json.dumps({"model": "llama", "prompt": [40 + i % 50, 41], "max_tokens": 20, "stream": True,
                           "ignore_eos": True}).encode()
        request = urllib.request.Request(gateway.http_url + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                lines = [line.decode().rstrip("\n") for line in response]
                statuses.append(response.status if "data: [DONE]" in lines else -1)
        except urllib.error.HTTPError as error:
            statuses.append(error.code)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
    for thread in threads:
        thread.start()
    ready, health = [], []
    while any(thread.is_alive() for thread in threads):
        ready.append(http(gateway.http_url + "/readyz").status)
        health.append(target.client.health(timeout=5).status)
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert len(statuses) == STREAMS and set(statuses) <= {200, 429} and statuses.count(200) > 0
    assert ready and set(ready) == {200} and set(health) == {"serving"}
