"""The prefix index: which target instance holds which KV blocks (by block hash).

Fed by the targets' KV events (``kv_watch``), read when routing (``routing.PrefixScorer``).
Two implementations with the same semantics: ``MemoryPrefixIndex`` (embedded default, one
gateway) and ``RedisPrefixIndex`` (shared by gateway replicas, survives a gateway restart).

Entries are per target *instance* (a random id per target process, sent with its events), not
per address, so a restarted pod at the same address never inherits its predecessor's blocks.
Each instance has:

* its confirmed blocks, replaced by a snapshot and then changed by stored / evicted events. The
  sequence number of the last applied event is kept with them: several gateways (or one that
  reconnects) may deliver the same events again, and only the first delivery applies;
* provisional blocks: written when a request is routed there, before the target has computed
  them, so the next request with the same prefix follows even if it arrives first. They
  expire after ``provisional_ttl_s``.

``lookup`` returns, per instance, how many *leading* blocks of a prompt it holds (confirmed
or provisional), which is the prefix a prefill there could reuse.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

# (seq, stored?, hashes) of one KV event, as the index consumes it
Event = tuple[int, bool, Sequence[int]]


class IndexUnavailable(Exception):
    """The index cannot be read or written right now (Redis unreachable): route by load."""


class PrefixIndex(Protocol):
    name: str  # "memory" | "redis" (metrics label, logs)

    @property
    def available(self) -> bool: ...

    async def apply_snapshot(self, instance: str, seq: int, hashes: Sequence[int]) -> None:
        """Replace the instance's blocks, unless events up to ``seq`` or later were applied."""

    async def apply_events(self, instance: str, events: Sequence[Event]) -> bool:
        """Apply events in order, skipping already applied ones. False: the index does not know
        this instance or an event is missing (the caller must resync with a snapshot)."""

    async def heartbeat(self, instance: str, seq: int) -> bool:
        """The instance is alive at ``seq``: keep its entries. False: they are behind or gone."""

    async def add_provisional(self, instance: str, hashes: Sequence[int]) -> None: ...

    async def lookup(self, hashes: Sequence[int], instances: Sequence[str]) -> dict[str, int]:
        """Leading blocks of ``hashes`` each instance holds; raises ``IndexUnavailable``."""

    def forget(self, instance: str) -> None:
        """The instance left the pool (an in-process index drops it; Redis entries expire)."""

    async def wait_available(self) -> None: ...

    async def close(self) -> None: ...


class MemoryPrefixIndex:
    """The embedded index: plain dicts on the gateway's event loop (no locking needed)."""

    name = "memory"

    def __init__(self, provisional_ttl_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.provisional_ttl_s = provisional_ttl_s
        self.clock = clock
        self._blocks: dict[str, set[int]] = {}
        self._seq: dict[str, int] = {}
        # hash -> expiry; order is expiry order (constant TTL, re-adds move to the end)
        self._provisional: dict[str, OrderedDict[int, float]] = {}

    @property
    def available(self) -> bool:
        return True

    async def apply_snapshot(self, instance: str, seq: int, hashes: Sequence[int]) -> None:
        if self._seq.get(instance, -1) >= seq:
            return
        self._blocks[instance] = set(hashes)
        self._seq[instance] = seq

    async def apply_events(self, instance: str, events: Sequence[Event]) -> bool:
        seq = self._seq.get(instance)
        if seq is None:
            return False
        blocks = self._blocks[instance]
        for event_seq, stored, hashes in events:
            if event_seq <= seq:
                continue
            if event_seq != seq + 1:
                self._seq[instance] = seq
                return False
            if stored:
                blocks.update(hashes)
            else:
                blocks.difference_update(hashes)
            seq = event_seq
        self._seq[instance] = seq
        return True

    async def heartbeat(self, instance: str, seq: int) -> bool:
        return self._seq.get(instance, -1) >= seq

    async def add_provisional(self, instance: str, hashes: Sequence[int]) -> None:
        now = self.clock()
        entries = self._provisional.setdefault(instance, OrderedDict())
        while entries and entries[next(iter(entries))] <= now:  # drop expired ones from the front
            entries.popitem(last=False)
        expiry = now + self.provisional_ttl_s
        for h in hashes:
            entries[h] = expiry
            entries.move_to_end(h)

    async def lookup(self, hashes: Sequence[int], instances: Sequence[str]) -> dict[str, int]:
        now = self.clock()
        out = {}
        for instance in instances:
            blocks = self._blocks.get(instance, ())
            provisional = self._provisional.get(instance, {})
            n = 0
            for h in hashes:
                if h not in blocks and provisional.get(h, 0.0) <= now:
                    break
                n += 1
            out[instance] = n
        return out

    def forget(self, instance: str) -> None:
        self._blocks.pop(instance, None)
        self._seq.pop(instance, None)
        self._provisional.pop(instance, None)

    async def wait_available(self) -> None:
        return None

    async def close(self) -> None:
        return None
