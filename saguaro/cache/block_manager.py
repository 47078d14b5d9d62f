"""Block allocation for the paged KV cache: reference counts, prefix reuse, LRU eviction.

Ownership rules the rest of the engine relies on:
* A sequence writes KV only into blocks it owns alone; shared (ref > 1) blocks are full,
  hashed prefix blocks and are only read.
* A block is hashed (and so reusable by other sequences) only once every slot in it holds
  KV computed under the true context — i.e. it lies entirely below the sequence's
  ``num_computed`` tokens. Speculative lookahead slots are never hashed.
* Freed blocks with a hash stay in an LRU pool and keep their contents until a fresh block is
  needed; freed blocks without one go straight to the empty pool.

Listeners (e.g. the target's KV-event stream for prefix-aware routing) hear exactly the changes
of the set of reusable hashes, ``by_hash``: a hash entering it (stored) and leaving it
(evicted). A duplicate block that reaches an already-known hash is not reusable, so it is
silent. With no listener the hooks cost one attribute test.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from saguaro.cache.prefix_hash import block_hash


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


@dataclass
class BlockTable:
    """A sequence's view of the cache: its blocks and how many leading ones are hashed."""

    blocks: list[int] = field(default_factory=list)
    num_hashed: int = 0
    last_hash: int | None = None


@dataclass
class PrefixCacheStats:
    queried_tokens: int = 0
    hit_tokens: int = 0


class BlockEventListener(Protocol):
    """Hears reusable block hashes appear and disappear; called on the engine's thread, so an
    implementation must be quick and do its own locking if others read what it collects."""

    def blocks_stored(self, hashes: list[int]) -> None: ...

    def blocks_evicted(self, hashes: list[int]) -> None: ...


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.empty: deque[int] = deque(range(num_blocks))
        self.evictable: OrderedDict[int, None] = OrderedDict()  # hashed, unreferenced; LRU first
        self.by_hash: dict[int, int] = {}
        self.stats = PrefixCacheStats()
        self.listener: BlockEventListener | None = None

    # -- capacity -----------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.empty) + len(self.evictable)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / len(self.blocks)

    # -- allocation ---------------------------------------------------------------------
    def _take_fresh(self) -> int:
        if self.empty:
            block_id = self.empty.popleft()
        else:
            block_id, _ = self.evictable.popitem(last=False)
            block = self.blocks[block_id]
            if self.by_hash.get(block.hash) == block_id:
                del self.by_hash[block.hash]
                if self.listener is not None:
                    self.listener.blocks_evicted([block.hash])
            block.hash, block.token_ids = None, ()
        self.blocks[block_id].ref_count = 1
        return block_id

    def _prefix_hits(self, token_ids: list[int]) -> list[int]:
        """Leading full blocks of ``token_ids`` already in the cache (token ids checked)."""
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        parent = None
        bs = self.block_size
        # Keep at least one token to compute, so the prefill yields logits for the last one.
        for start in range(0, len(token_ids) - 1 - bs + 1, bs):
            chunk = tuple(token_ids[start : start + bs])
            parent = block_hash(parent, chunk)
            block_id = self.by_hash.get(parent)
            if block_id is None or self.blocks[block_id].token_ids != chunk:
                break
            hits.append(block_id)
        return hits

    def allocate_prompt(self, table: BlockTable, token_ids: list[int], reuse: bool = True) -> int | None:
        """Give a waiting sequence blocks for all its tokens, reusing cached prefix blocks.

        Returns the number of tokens whose KV is already present (a multiple of the block
        size), or None if the cache cannot hold the sequence now (nothing is changed then).
        ``reuse=False`` gives only fresh blocks, so every token is computed: a request scoring
        its prompt needs logits at positions whose KV is cached (it is not counted as a lookup).
        """
        hits = self._prefix_hits(token_ids) if reuse else []
        needed = self.blocks_needed(len(token_ids)) - len(hits)
        reused_free = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        if needed > self.num_free_blocks - reused_free:
            return None
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.evictable[block_id]
            block.ref_count += 1
        table.blocks = hits + [self._take_fresh() for _ in range(needed)]
        table.num_hashed = len(hits)
        table.last_hash = self.blocks[hits[-1]].hash if hits else None
        cached = len(hits) * self.block_size
        if reuse:
            self.stats.queried_tokens += len(token_ids)
            self.stats.hit_tokens += cached
        return cached

    def ensure_slots(self, table: BlockTable, num_tokens: int) -> bool:
        """Grow the table to hold ``num_tokens`` slots (lookahead included); False if full."""
        extra = self.blocks_needed(num_tokens) - len(table.blocks)
        if extra <= 0:
            return True
        if extra > self.num_free_blocks:
            return False
        table.blocks.extend(self._take_fresh() for _ in range(extra))
        return True

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            if block.hash is not None and self.by_hash.get(block.hash) == block_id:
                self.evictable[block_id] = None
            else:
                block.hash, block.token_ids = None, ()
                self.empty.append(block_id)

    def truncate(self, table: BlockTable, num_tokens: int) -> None:
        """Rollback: release blocks past ``num_tokens`` slots (never hashed ones)."""
        keep = max(self.blocks_needed(num_tokens), table.num_hashed)
        for block_id in table.blocks[keep:]:
            self._release(block_id)
        del table.blocks[keep:]

    def free(self, table: BlockTable) -> None:
        for block_id in reversed(table.blocks):
            self._release(block_id)
        table.blocks = []
        table.num_hashed = 0
        table.last_hash = None

    def register_computed(self, table: BlockTable, token_ids: list[int], num_computed: int) -> None:
        """Hash blocks that became full of correctly computed KV so others can reuse them."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = min(num_computed // bs, len(table.blocks))
        stored: list[int] = []
        while table.num_hashed < full:
            i = table.num_hashed
            chunk = tuple(token_ids[i * bs : (i + 1) * bs])
            h = block_hash(table.last_hash, chunk)
            block = self.blocks[table.blocks[i]]
            block.hash, block.token_ids = h, chunk
            if h not in self.by_hash:
                self.by_hash[h] = block.block_id
                stored.append(h)
            table.num_hashed += 1
            table.last_hash = h
        if stored and self.listener is not None:
            self.listener.blocks_stored(stored)
