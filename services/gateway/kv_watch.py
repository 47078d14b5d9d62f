"""Feed the prefix index from one target's KV-event stream (``TargetRouting.WatchKvEvents``).

The stream is resumed after a dropped connection (same instance, next seq) and replaced by a
snapshot whenever continuity is lost: a sequence gap, a new target instance (it restarted), an
index that lost the instance (Redis restarted or evicted it) or an index that was unreachable
(the events of that time were never written). Silence longer than a few heartbeats counts as
a dead connection.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from saguaro.services.gateway.metrics import GatewayMetrics
from saguaro.services.gateway.prefix_index import IndexUnavailable, PrefixIndex
from saguaro.services.gateway.targets import Target
from saguaro.v1 import routing_pb2 as rpb
from saguaro.wire import HEARTBEAT_S

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 3 * HEARTBEAT_S


class Resync(Exception):
    """Continuity is lost: reconnect asking for a snapshot."""


class KvWatcher:
    def __init__(self, target: Target, index: PrefixIndex, block_size: int, metrics: GatewayMetrics):
        self.target = target
        self.index = index
        self.block_size = block_size
        self.metrics = metrics
        self.seq: int | None = None  # last event applied from this instance; None: snapshot needed
        self.batches = 0  # batches applied (a stream that delivered some resets the backoff)

    async def run(self) -> None:
        backoff = 0.25
        while True:
            await self.index.wait_available()
            before = self.batches
            try:
                await self._stream()
            except Resync as exc:
                log.info("target %s: KV events resync (%s)", self.target.address, exc)
                self.seq = None
                continue
            except IndexUnavailable:
                self.seq = None  # what happened meanwhile never reached the index
            except grpc.aio.AioRpcError as exc:
                log.debug("target %s: KV event stream ended (%s)", self.target.address, exc.code().name)
            except _BlockSizeMismatch as exc:
                log.error("target %s: %s; prefix-aware routing ignores this target", self.target.address, exc)
                self.target.instance_id = None
                return
            backoff = 0.25 if self.batches > before else min(backoff * 2, 5.0)
            await asyncio.sleep(backoff)

    async def _stream(self) -> None:
        target = self.target
        resume = self.seq is not None and target.instance_id is not None
        request = rpb.WatchKvEventsRequest(instance_id=target.instance_id or "", after_seq=self.seq or 0) if resume \
            else rpb.WatchKvEventsRequest()
        call = target.routing.WatchKvEvents(request)
        try:
            while True:
                try:
                    batch = await asyncio.wait_for(call.read(), IDLE_TIMEOUT_S)
                except TimeoutError:
                    raise Resync(f"no KV events or heartbeat for {IDLE_TIMEOUT_S:.0f} s") from None
                if batch is grpc.aio.EOF:
                    return
                await self._apply(batch)
        finally:
            call.cancel()

    async def _apply(self, batch: rpb.KvEventBatch) -> None:
        target = self.target
        if batch.block_size != self.block_size:
            raise _BlockSizeMismatch(f"its KV blocks hold {batch.block_size} tokens but the gateway hashes "
                                     f"{self.block_size}-token blocks (--block-size must match the targets')")
        if batch.instance_id != target.instance_id:
            if target.instance_id is not None:
                self.index.forget(target.instance_id)
            target.instance_id = batch.instance_id
            if not batch.snapshot:
                raise Resync("new target instance")
        if batch.snapshot:
            await self.index.apply_snapshot(batch.instance_id, batch.seq, batch.snapshot_hashes)
            self.metrics.index_resyncs.inc()
            self.seq = batch.seq
        elif self.seq is None:
            raise Resync("no snapshot yet")
        elif batch.events:
            if batch.events[0].seq != self.seq + 1:
                raise Resync(f"events {self.seq + 1}..{batch.events[0].seq - 1} are missing")
            events = [(e.seq, e.kind == rpb.KV_EVENT_KIND_STORED, e.block_hashes) for e in batch.events]
            if not await self.index.apply_events(batch.instance_id, events):
                raise Resync("the index lost this instance's entries")
            self.seq = batch.events[-1].seq
        elif batch.seq != self.seq:
            raise Resync(f"heartbeat at seq {batch.seq}, last event received {self.seq}")
        elif not await self.index.heartbeat(batch.instance_id, batch.seq):
            raise Resync("the index lost this instance's entries")
        self.batches += 1


class _BlockSizeMismatch(Exception):
    pass
