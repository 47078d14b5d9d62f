"""The prefix index's semantics, identical for the in-process index and the Redis one (real
redis-server): snapshots, events delivered twice (replicas), gaps, heartbeats, provisional
entries, leading-block lookups; Redis going away and coming back."""

from __future__ import annotations

import asyncio
import time

import pytest

from saguaro.services.gateway.prefix_index import IndexUnavailable, MemoryPrefixIndex
from saguaro.services.gateway.redis_index import RedisPrefixIndex

H = [0x1111, 0x2222, 0x3333, 0x4444, 2**64 - 1]  # block hashes (the last one: the full 64-bit range)


@pytest.fixture(params=["memory", "redis"])
def make_index(request):
    """make_index(provisional_ttl_s=10) -> a fresh index of the parametrised kind (the test
    closes it on its own event loop)."""
    if request.param == "memory":
        return lambda provisional_ttl_s=10.0: MemoryPrefixIndex(provisional_ttl_s)
    redis_server = request.getfixturevalue("redis_server")
    namespaces = iter(range(1000))
    return lambda provisional_ttl_s=10.0: RedisPrefixIndex(redis_server.url, namespace=f"test{next(namespaces)}",
                                                           provisional_ttl_s=provisional_ttl_s)


def run(coroutine):
    return asyncio.run(coroutine)


def test_snapshot_then_events_then_lookup(make_index):
    async def scenario():
        index = make_index()
        assert not await index.apply_events("pod-a", [(1, True, H[:1])])  # unknown instance: resync
        await index.apply_snapshot("pod-a", 3, H[:2])
        await index.apply_snapshot("pod-b", 7, H[:1])
        assert await index.lookup(H, ["pod-a", "pod-b", "pod-c"]) == {"pod-a": 2, "pod-b": 1, "pod-c": 0}
        assert await index.apply_events("pod-a", [(4, True, H[2:4]), (5, False, H[1:2])])
        # pod-a holds H0, H2, H3: only one *leading* block
        assert await index.lookup(H, ["pod-a"]) == {"pod-a": 1}
        assert await index.apply_events("pod-a", [(6, True, H[1:2])])
        assert await index.lookup(H, ["pod-a"]) == {"pod-a": 4}
        assert await index.lookup(H[4:], ["pod-a"]) == {"pod-a": 0}
        assert await index.lookup([], ["pod-a"]) == {"pod-a": 0}
        await index.close()

    run(scenario())


def test_events_delivered_twice_apply_once_and_gaps_ask_for_a_snapshot(make_index):
    async def scenario():
        index = make_index()
        await index.apply_snapshot("pod", 10, [H[0]])
        events = [(11, True, [H[1]]), (12, False, [H[0]])]
        assert await index.apply_events("pod", events)
        # a second gateway replica delivers the same events (and the stored one again): no effect
        assert await index.apply_events("pod", events)
        assert await index.apply_events("pod", [(11, True, [H[0]])])
        assert await index.lookup([H[1]], ["pod"]) == {"pod": 1}
        assert await index.lookup([H[0]], ["pod"]) == {"pod": 0}
        # an older snapshot (a replica that connected earlier) changes nothing
        await index.apply_snapshot("pod", 9, H)
        assert await index.lookup([H[0]], ["pod"]) == {"pod": 0}
        # a gap: events 13..14 are missing
        assert not await index.apply_events("pod", [(15, True, [H[2]])])
        assert await index.heartbeat("pod", 12) and not await index.heartbeat("pod", 13)
        await index.apply_snapshot("pod", 15, [H[3]])  # the resync
        assert await index.lookup([H[3]], ["pod"]) == {"pod": 1} and await index.heartbeat("pod", 15)
        await index.close()

    run(scenario())


def test_provisional_entries_count_until_they_expire(make_index, wait_until):
    ttl = 1.0  # (long enough that the lookup right after the write is well inside it on a busy machine)
    index = make_index(provisional_ttl_s=ttl)
    started = time.monotonic()  # before the write: they expire no sooner than ttl after this

    async def write():
        await index.apply_snapshot("pod", 1, [H[0]])
        await index.add_provisional("pod", H[:3])
        return await index.lookup(H, ["pod"])

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(write()) == {"pod": 3}
        wait_until(lambda: loop.run_until_complete(index.lookup(H, ["pod"])) == {"pod": 1},
                   what="provisional entries to expire")
        assert time.monotonic() - started >= ttl - 0.05  # they counted for their time to live (Redis: ms clock)
        loop.run_until_complete(index.close())
    finally:
        loop.close()


def test_redis_unreachable_makes_the_index_unavailable_until_it_is_back(redis_server, wait_until):
    changes = []
    index = RedisPrefixIndex(redis_server.url, probe_interval_s=0.05, on_availability=changes.append)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(index.apply_snapshot("pod", 1, H[:2]))
        redis_server.kill()
        with pytest.raises(IndexUnavailable):
            loop.run_until_complete(index.lookup(H, ["pod"]))
        assert not index.available and changes == [False]
        with pytest.raises(IndexUnavailable):  # no waiting on Redis while it is down
            loop.run_until_complete(index.apply_events("pod", [(2, True, H[2:3])]))
        redis_server.start()  # empty

        async def available_after_a_while() -> bool:
            await asyncio.sleep(0.05)  # the probe runs on this loop
            return index.available

        wait_until(lambda: loop.run_until_complete(available_after_a_while()), what="Redis to be back")
        assert changes == [False, True]
        assert not loop.run_until_complete(index.apply_events("pod", [(2, True, H[2:3])]))  # lost: resync
        loop.run_until_complete(index.close())
    finally:
        loop.close()


def test_redis_key_layout_is_the_documented_one(redis_server):
    import redis

    index = RedisPrefixIndex(redis_server.url, namespace="llama", index_ttl_s=60)

    async def write():
        await index.apply_snapshot("abc", 5, [H[0], H[4]])
        await index.add_provisional("abc", [H[1]])
        await index.close()

    run(write())
    r = redis.Redis(port=redis_server.port, decode_responses=True)
    assert r.smembers("saguaro:{llama}:blocks:abc") == {"0000000000001111", "ffffffffffffffff"}
    assert r.get("saguaro:{llama}:seq:abc") == "5"
    assert r.zrange("saguaro:{llama}:prov:abc", 0, -1) == ["0000000000002222"]
    assert 0 < r.pttl("saguaro:{llama}:blocks:abc") <= 60_000 and 0 < r.pttl("saguaro:{llama}:prov:abc") <= 10_000
