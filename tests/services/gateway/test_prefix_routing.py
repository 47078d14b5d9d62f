"""Prefix-aware routing on a synthetic multi-tenant workload, measured by the targets' own
prefix caches (Health's prefix_cache_hit_tokens), with the in-process index and with a real
redis-server: hit rate, gateway replicas, a restarted gateway, Redis killed and restarted.

The two target pods have small KV caches: each holds about half of the tenants' shared
prefixes. Round-robin sends every tenant to both pods, so they evict each other's prefixes;
prefix-aware routing keeps each tenant on one pod.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from saguaro.config import ModelConfig

TENANTS, PREFIX_TOKENS, SUFFIX_TOKENS, ROUNDS = 8, 128, 8, 5
CACHE_BLOCKS = 40  # per pod: 4 tenants' prefixes (32 blocks) and room to run, not 8 tenants'


@pytest.fixture(scope="module")
def pods(model_dirs, module_targets):
    cfg = ModelConfig.from_dir(model_dirs["llama"])
    block_bytes = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 16 * 4  # K and V, fp32, 16 tokens
    return [module_targets(model_dirs["llama"], kv_cache_bytes=CACHE_BLOCKS * block_bytes, max_model_len=256)
            for _ in range(2)]


@dataclass
class Outcome:
    hit_rate: float  # prefix tokens the pods found cached / prefix tokens sent (measured requests)
    failures: int
    placements: dict[int, set[str]]  # tenant -> targets that served its measured requests


class Workload:
    """Tenants sharing a long prompt prefix each; every request adds a unique suffix."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.tenants = [[self.rng.randrange(3, 500) for _ in range(PREFIX_TOKENS)] for _ in range(TENANTS)]

    def prompt(self, tenant: int) -> list[int]:
        return self.tenants[tenant] + [self.rng.randrange(3, 500) for _ in range(SUFFIX_TOKENS)]

    def warm_up(self, gateway, http) -> None:
        for tenant in range(TENANTS):
            assert self._send(gateway, http, tenant).status == 200

    def run(self, gateways: list, pods, http, rounds: int = ROUNDS, between=None) -> Outcome:
        """``rounds`` rounds over all tenants in random order, cycling through ``gateways``;
        ``between(i)`` runs before request i (fault injection)."""
        before = sum(p.client.load().prefix_cache_hit_tokens for p in pods)
        failures, sent, placements = 0, 0, {}
        for _ in range(rounds):
            order = list(range(TENANTS))
            self.rng.shuffle(order)
            for tenant in order:
                if between is not None:
                    between(sent)
                reply = self._send(gateways[sent % len(gateways)], http, tenant)
                sent += 1
                if reply.status != 200:
                    failures += 1
                    continue
                placements.setdefault(tenant, set()).add(reply.headers["x-saguaro-target"])
        after = sum(p.client.load().prefix_cache_hit_tokens for p in pods)
        return Outcome((after - before) / (sent * PREFIX_TOKENS), failures, placements)

    def _send(self, gateway, http, tenant: int):
        return http(gateway.http_url + "/v1/completions",
                    {"model": "llama", "prompt": self.prompt(tenant), "max_tokens": 1, "temperature": 0})


def test_round_robin_makes_the_pods_evict_each_others_prefixes(pods, start_gateway, http):
    gateway = start_gateway([p.address for p in pods], policy="round-robin")
    workload = Workload(seed=1)
    workload.warm_up(gateway, http)
    outcome = workload.run([gateway], pods, http)
    assert outcome.failures == 0
    assert outcome.hit_rate <= 0.55, outcome.hit_rate


def test_prefix_routing_with_the_in_process_index(pods, start_gateway, http, metric):
    gateway = start_gateway([p.address for p in pods])  # default policy: prefix, in-process index
    workload = Workload(seed=2)
    workload.warm_up(gateway, http)
    outcome = workload.run([gateway], pods, http)
    assert outcome.failures == 0
    assert outcome.hit_rate >= 0.9, outcome.hit_rate
    assert all(len(targets) == 1 for targets in outcome.placements.values())
    assert metric(gateway, "saguaro_gateway_routing_decisions_total", reason="prefix_hit") >= TENANTS * ROUNDS
    assert metric(gateway, "saguaro_gateway_prefix_index_hits_total") >= TENANTS * ROUNDS


def test_redis_index_is_shared_by_replicas_and_survives_a_gateway_restart(pods, start_gateway, redis_server, http):
    addresses = [p.address for p in pods]
    first = start_gateway(addresses, redis_url=redis_server.url)
    second = start_gateway(addresses, redis_url=redis_server.url)
    workload = Workload(seed=3)
    workload.warm_up(first, http)  # only the first replica saw the tenants arrive

    both = workload.run([first, second], pods, http)  # alternate between the replicas
    assert both.failures == 0
    assert both.hit_rate >= 0.9, both.hit_rate
    assert all(len(targets) == 1 for targets in both.placements.values()), both.placements  # the replicas agree

    first.stop()
    second.stop()
    restarted = start_gateway(addresses, redis_url=redis_server.url)  # a cold process, the same Redis
    again = workload.run([restarted], pods, http)
    assert again.failures == 0
    assert again.hit_rate >= 0.9, again.hit_rate
    assert again.placements == both.placements


def test_redis_killed_mid_run_fails_no_request_and_recovers(pods, start_gateway, redis_server, http, metric,
                                                            wait_until):
    gateway = start_gateway([p.address for p in pods], redis_url=redis_server.url)
    workload = Workload(seed=4)
    workload.warm_up(gateway, http)

    def kill_redis_halfway(i: int) -> None:
        if i == TENANTS * ROUNDS // 2:
            redis_server.kill()

    outcome = workload.run([gateway], pods, http, between=kill_redis_halfway)
    assert outcome.failures == 0
    assert metric(gateway, "saguaro_gateway_prefix_index_available", backend="redis") == 0
    assert metric(gateway, "saguaro_gateway_routing_decisions_total", reason="index_unavailable") > 0
    assert http(gateway.http_url + "/readyz").status == 200  # still ready: Redis is not needed to serve

    resyncs = metric(gateway, "saguaro_gateway_prefix_index_resyncs_total")
    redis_server.start()  # empty: the gateway refills it from the targets' snapshots
    wait_until(lambda: metric(gateway, "saguaro_gateway_prefix_index_available", backend="redis") == 1,
               what="the gateway to see Redis again")
    wait_until(lambda: metric(gateway, "saguaro_gateway_prefix_index_resyncs_total") >= resyncs + 2,
               what="both targets' KV snapshots to be written to Redis")
    # While Redis was down, tenants were spread by load; one round settles them again.
    assert workload.run([gateway], pods, http, rounds=1).failures == 0
    recovered = workload.run([gateway], pods, http, rounds=2)
    assert recovered.failures == 0
    assert recovered.hit_rate >= 0.9, recovered.hit_rate
