"""Paged KV cache, block manager and prefix-cache hashing.

The names below are resolved on first use (PEP 562): the gateway hashes prompt blocks with
``saguaro.cache.prefix_hash`` and must not load torch for the KV tensors it never holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saguaro.lazy_exports import lazy_getattr

if TYPE_CHECKING:
    from saguaro.cache.block_manager import BlockManager, BlockTable
    from saguaro.cache.kv_cache import KVCache, num_blocks_for_budget
    from saguaro.cache.prefix_hash import block_hash, block_hashes

_EXPORTS = {
    "BlockManager": "saguaro.cache.block_manager",
    "BlockTable": "saguaro.cache.block_manager",
    "KVCache": "saguaro.cache.kv_cache",
    "num_blocks_for_budget": "saguaro.cache.kv_cache",
    "block_hash": "saguaro.cache.prefix_hash",
    "block_hashes": "saguaro.cache.prefix_hash",
}

__all__ = ["BlockManager", "BlockTable", "KVCache", "block_hash", "block_hashes", "num_blocks_for_budget"]


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
