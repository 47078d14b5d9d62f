"""Target side of prefix-aware routing: the block manager's stored/evicted events, the event
hub (sequence numbers, replay, snapshots), the WatchKvEvents stream of a real target, and the
gateway hashing exactly like the engine."""

from __future__ import annotations

import grpc
import pytest

from saguaro.cache.block_manager import BlockManager, BlockTable
from saguaro.cache.prefix_hash import block_hashes
from saguaro.services.target.kv_events import KvEventHub
from saguaro.v1 import routing_pb2 as rpb
from saguaro.v1 import routing_pb2_grpc as rpb_grpc

BS = 4


class Recorder:
    """A BlockEventListener that keeps what it hears."""

    def __init__(self):
        self.events: list[tuple[str, list[int]]] = []

    def blocks_stored(self, hashes):
        self.events.append(("stored", list(hashes)))

    def blocks_evicted(self, hashes):
        self.events.append(("evicted", list(hashes)))


def run_sequence(manager: BlockManager, tokens: list[int]) -> BlockTable:
    table = BlockTable()
    assert manager.allocate_prompt(table, tokens) is not None
    manager.register_computed(table, tokens, len(tokens))
    return table


def test_block_events_mirror_the_reusable_hashes():
    manager = BlockManager(num_blocks=4, block_size=BS)
    recorder = Recorder()
    manager.listener = recorder
    a = list(range(10, 19))  # 2 full blocks + 1
    table = run_sequence(manager, a)
    assert recorder.events == [("stored", block_hashes(a, BS))]  # the gateway's hash is the engine's
    assert set(manager.by_hash) == set(block_hashes(a, BS))
    manager.free(table)

    # The same prefix again: reused, nothing new to announce.
    run_sequence_and_free = run_sequence(manager, a[:8] + [99])
    assert recorder.events == [("stored", block_hashes(a, BS))]
    manager.free(run_sequence_and_free)

    # A different 4-block prompt needs every block: the cached ones are evicted and announced.
    b = list(range(50, 66))
    recorder.events.clear()
    table = run_sequence(manager, b)
    evicted = {h for kind, hs in recorder.events if kind == "evicted" for h in hs}
    stored = [h for kind, hs in recorder.events if kind == "stored" for h in hs]
    assert evicted == set(block_hashes(a, BS)) and stored == block_hashes(b, BS)
    assert set(manager.by_hash) == set(stored)


def test_no_listener_and_no_prefix_caching_are_silent():
    run_sequence(BlockManager(num_blocks=4, block_size=BS), list(range(8)))  # no listener: fine
    manager = BlockManager(num_blocks=4, block_size=BS, enable_prefix_caching=False)
    manager.listener = Recorder()
    run_sequence(manager, list(range(8)))
    assert manager.listener.events == []


def test_hub_replays_and_snapshots():
    hub = KvEventHub(block_size=BS, initial=[7], buffer=3)
    snapshot, seq, hashes = hub.read(None, timeout=0)
    assert (snapshot, seq, hashes) == (True, 0, [7])
    hub.blocks_stored([1, 2])
    hub.blocks_evicted([7])
    snapshot, seq, events = hub.read(0, timeout=0)
    assert not snapshot and seq == 2
    assert events == [(1, rpb.KV_EVENT_KIND_STORED, [1, 2]), (2, rpb.KV_EVENT_KIND_EVICTED, [7])]
    assert hub.read(2, timeout=0.01) == (False, 2, [])  # nothing new: a heartbeat
    for h in (3, 4, 5):
        hub.blocks_stored([h])  # the buffer keeps the last 3 events (3..5)
    assert [e[0] for e in hub.read(2, timeout=0)[2]] == [3, 4, 5]
    snapshot, seq, hashes = hub.read(1, timeout=0)  # event 2 is gone: a snapshot instead
    assert snapshot and seq == 5 and sorted(hashes) == [1, 2, 3, 4, 5]
    assert hub.read(99, timeout=0)[0]  # a seq from another instance: a snapshot


def test_a_target_streams_a_snapshot_then_its_events(model_dirs, targets):
    target = targets(model_dirs["llama"])
    prompt = list(range(3, 3 + 40))  # 2 full blocks of 16 (+8)
    with grpc.insecure_channel(target.address) as channel:
        stub = rpb_grpc.TargetRoutingStub(channel)
        stream = stub.WatchKvEvents(rpb.WatchKvEventsRequest(), timeout=30)
        first = next(stream)
        assert first.snapshot and first.block_size == 16 and len(first.instance_id) == 32
        target.client.generate(prompt, max_tokens=1)
        batch = next(stream)
        while not batch.events:  # heartbeats
            batch = next(stream)
        stored = [h for e in batch.events for h in e.block_hashes if e.kind == rpb.KV_EVENT_KIND_STORED]
        assert stored[:2] == block_hashes(prompt, 16)[:2] and batch.events[0].seq == first.seq + 1
        stream.cancel()

        # Resume after the first event: replay, no snapshot. Another instance id: a snapshot.
        resumed = next(stub.WatchKvEvents(rpb.WatchKvEventsRequest(instance_id=first.instance_id,
                                                                   after_seq=first.seq), timeout=30))
        assert not resumed.snapshot and resumed.events[0].seq == first.seq + 1
        fresh = next(stub.WatchKvEvents(rpb.WatchKvEventsRequest(instance_id="another", after_seq=1), timeout=30))
        assert fresh.snapshot and set(block_hashes(prompt, 16)[:2]) <= set(fresh.snapshot_hashes)

        files = stub.GetTokenizer(rpb.GetTokenizerRequest(), timeout=30)
        assert files.has_tokenizer and "tokenizer.json" in files.files
    load = target.client.load()
    assert load.prefix_cache_queried_tokens >= len(prompt) and load.max_num_seqs == 8


def test_the_gateway_refuses_prefix_routing_with_another_block_size(model_dirs, targets, start_gateway, caplog):
    target = targets(model_dirs["llama"])
    gateway = start_gateway([target.address], block_size=32, wait=False)
    from saguaro.client import Client

    with Client(gateway.grpc_address) as client:
        client.wait_until_ready(30)
        assert client.generate([3] * 40, max_tokens=2).finish_reason == "length"  # still served, by load
    assert any("--block-size must match" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("tokens", [[], list(range(15)), list(range(16)), list(range(100))])
def test_gateway_hashes_only_full_blocks(tokens):
    assert len(block_hashes(tokens, 16)) == len(tokens) // 16
