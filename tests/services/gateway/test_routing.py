"""The routing pipeline's plugins one by one (filter, scorers, pickers, policies), the circuit
breaker's state machine, and Kubernetes discovery's event handling with real
``kubernetes.client`` EndpointSlice objects."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import grpc
from kubernetes.client import (DiscoveryV1EndpointPort, V1Endpoint, V1EndpointConditions, V1EndpointSlice,
                               V1ObjectMeta)

from saguaro.net import free_port
from saguaro.services.gateway.breaker import BreakerState, CircuitBreaker
from saguaro.services.gateway.discovery import KubernetesDiscovery, apply_slice_event, target_addresses
from saguaro.services.gateway.metrics import GatewayMetrics
from saguaro.services.gateway.prefix_index import MemoryPrefixIndex
from saguaro.services.gateway.redis_index import RedisPrefixIndex
from saguaro.services.gateway.routing import RouteRequest, make_router
from saguaro.services.gateway.targets import Target
from saguaro.v1 import inference_pb2 as pb

HASHES = [101, 102, 103, 104]


def pod(address: str, running: int = 0, waiting: int = 0, kv: float = 0.0, instance: str | None = None,
        status=pb.SERVING_STATUS_SERVING) -> Target:
    target = Target(address, grpc.aio.insecure_channel(address), CircuitBreaker(failures=1, cooldown_s=60))
    target.health = pb.HealthResponse(status=status, num_running=running, num_waiting=waiting, kv_cache_usage=kv)
    target.model_info = pb.ModelInfoResponse(model_name="m")
    target.instance_id = instance or address
    return target


def pick(router, targets, hashes=(), exclude=()):
    return asyncio.run(router.pick(targets, RouteRequest(list(hashes), exclude=set(exclude))))


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_health_filter_drops_unhealthy_open_and_tried_targets():
    async def scenario():
        router = make_router("least-load", None, GatewayMetrics(), lambda: "m")
        a, b, c, d = pod("a:1"), pod("b:1", status=pb.SERVING_STATUS_NOT_SERVING), pod("c:1"), pod("d:1")
        c.breaker.failure()  # threshold 1: open
        assert c.breaker.state is BreakerState.OPEN
        route = await router.pick([a, b, c, d], RouteRequest([], exclude={"d:1"}))
        assert route.target is a
        assert await router.pick([b, c], RouteRequest([])) is None

    run(scenario())


def test_least_load_prefers_short_queues_and_free_kv_and_breaks_ties_at_random():
    async def scenario():
        router = make_router("least-load", None, GatewayMetrics(), lambda: "m", rng=random.Random(0))
        busy, idle, full = pod("a:1", running=3, waiting=2), pod("b:1"), pod("c:1", kv=0.95)
        assert (await router.pick([busy, idle, full], RouteRequest([]))).target is idle
        idle.inflight = 9  # this gateway's own requests count even before the pod reports them
        assert (await router.pick([busy, idle], RouteRequest([]))).target is busy
        idle.inflight, idle.inflight_at_report = 0, 5  # a stale report counted 5 of ours, all since finished
        idle.health.num_running = 5
        assert idle.queue_depth == 0
        assert (await router.pick([busy, idle], RouteRequest([]))).target is idle
        twins = [pod("x:1"), pod("y:1")]
        chosen = Counter([(await router.pick(twins, RouteRequest([]))).target.address for _ in range(40)])
        assert set(chosen) == {"x:1", "y:1"}

    run(scenario())


def test_round_robin_cycles_in_address_order():
    async def scenario():
        router = make_router("round-robin", None, GatewayMetrics(), lambda: "m")
        targets = [pod("b:1"), pod("a:1", running=50), pod("c:1")]
        picks = [(await router.pick(targets, RouteRequest([]))) for _ in range(6)]
        assert [p.target.address for p in picks] == ["a:1", "b:1", "c:1"] * 2
        assert {p.reason for p in picks} == {"round_robin"}

    run(scenario())


def test_prefix_policy_follows_the_blocks_and_spreads_cold_prompts():
    async def scenario():
        index = MemoryPrefixIndex()
        router = make_router("prefix", index, GatewayMetrics(), lambda: "m", rng=random.Random(1))
        a, b = pod("a:1"), pod("b:1", running=2)
        await index.apply_snapshot("b:1", 1, HASHES[:3])
        route = await router.pick([a, b], RouteRequest(HASHES))
        assert route.target is b and route.reason == "prefix_hit" and route.prefix_blocks == 3
        await index.add_provisional("a:1", HASHES)  # a request routed there a moment ago
        route = await router.pick([a, b], RouteRequest(HASHES))
        assert route.target is a and route.prefix_blocks == 4
        # Prompts nobody holds go by load, and alternate between equally loaded pods (the one least
        # recently chosen for such a prompt first).
        assert (await router.pick([a, b], RouteRequest([900]))).target is a
        c, d = pod("c:1"), pod("d:1")
        cold = [(await router.pick([c, d], RouteRequest([900 + i]))) for i in range(4)]
        assert {r.reason for r in cold} == {"cold"}
        assert len({r.target.address for r in cold[:2]}) == 2 and len({r.target.address for r in cold[2:]}) == 2

    run(scenario())


def test_prefix_policy_routes_by_load_when_the_index_is_unreachable():
    async def scenario():
        index = RedisPrefixIndex(f"redis://127.0.0.1:{free_port()}/0", probe_interval_s=60)  # nothing listens
        router = make_router("prefix", index, GatewayMetrics(), lambda: "m")
        busy, idle = pod("a:1", running=4), pod("b:1")
        for _ in range(3):
            route = await router.pick([busy, idle], RouteRequest(HASHES))
            assert route.target is idle and route.reason == "index_unavailable"
        assert not index.available
        await index.close()

    run(scenario())


def test_the_circuit_breaker_opens_half_opens_and_closes():
    now = [0.0]
    changes = []
    breaker = CircuitBreaker(failures=2, cooldown_s=5, max_cooldown_s=12, clock=lambda: now[0], on_change=changes.append)
    breaker.failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allows()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allows()
    now[0] = 5.0
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allows()
    breaker.acquire()  # the one trial request
    assert not breaker.allows()
    breaker.failure()  # the trial failed: open again, cooldown doubled
    assert breaker.state is BreakerState.OPEN
    now[0] = 14.0
    assert breaker.state is BreakerState.OPEN
    now[0] = 15.0
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.acquire()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.allows()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN, BreakerState.HALF_OPEN,
                       BreakerState.CLOSED]


# -- Kubernetes discovery -------------------------------------------------------------------------
def endpoint_slice(name: str, *endpoints: tuple[str, bool | None, bool | None]) -> V1EndpointSlice:
    return V1EndpointSlice(
        address_type="IPv4", metadata=V1ObjectMeta(name=name, labels={"kubernetes.io/service-name": "targets"}),
        ports=[DiscoveryV1EndpointPort(name="grpc", port=50051, protocol="TCP")],
        endpoints=[V1Endpoint(addresses=[ip], conditions=V1EndpointConditions(ready=ready, terminating=terminating))
                   for ip, ready, terminating in endpoints])


def test_endpoint_slice_events_become_target_addresses():
    slices = apply_slice_event({}, "ADDED", endpoint_slice("t-1", ("10.0.0.1", True, False), ("10.0.0.2", None, None),
                                                           ("10.0.0.3", False, False)), 50051)
    assert target_addresses(slices) == {"10.0.0.1:50051", "10.0.0.2:50051"}  # not ready: left out
    slices = apply_slice_event(slices, "ADDED", endpoint_slice("t-2", ("fd00::7", True, False)), 50051)
    assert target_addresses(slices) == {"10.0.0.1:50051", "10.0.0.2:50051", "[fd00::7]:50051"}
    slices = apply_slice_event(slices, "MODIFIED", endpoint_slice("t-1", ("10.0.0.1", True, True),
                                                                  ("10.0.0.3", True, False)), 50051)
    assert target_addresses(slices) == {"10.0.0.3:50051", "[fd00::7]:50051"}  # terminating: left out
    slices = apply_slice_event(slices, "DELETED", endpoint_slice("t-2"), 50051)
    assert target_addresses(slices) == {"10.0.0.3:50051"}
    assert apply_slice_event(slices, "BOOKMARK", endpoint_slice("t-9", ("10.9.9.9", True, False)), 50051) == slices


def test_the_watcher_publishes_each_change_once_and_stops_at_an_error_event():
    published = []
    watcher = KubernetesDiscovery("default", "targets", 50051, published.append)
    watcher.consume([
        {"type": "ADDED", "object": endpoint_slice("t-1", ("10.0.0.1", True, False))},
        {"type": "MODIFIED", "object": endpoint_slice("t-1", ("10.0.0.1", True, False))},  # no change
        {"type": "ADDED", "object": endpoint_slice("t-2", ("10.0.0.2", True, False))},
        {"type": "ERROR", "object": None},  # e.g. 410 Gone: the loop relists
        {"type": "DELETED", "object": endpoint_slice("t-1")},
    ])
    assert published == [{"10.0.0.1:50051"}, {"10.0.0.1:50051", "10.0.0.2:50051"}]
