"""Paged KV cache, block manager and prefix-cache hashing."""

from saguaro.cache.block_manager import BlockManager, BlockTable
from saguaro.cache.kv_cache import KVCache, num_blocks_for_budget
from saguaro.cache.prefix_hash import block_hash, block_hashes

__all__ = ["BlockManager", "BlockTable", "KVCache", "block_hash", "block_hashes", "num_blocks_for_budget"]
