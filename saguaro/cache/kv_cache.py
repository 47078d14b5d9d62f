"""The paged KV tensors of one model, sized from a memory budget."""

from __future__ import annotations

import torch

from saguaro.config import ModelConfig
from saguaro.errors import ConfigError


def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * element


def num_blocks_for_budget(
    cfg: ModelConfig,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    kv_cache_bytes: int,
    gpu_memory_utilization: float | None,
) -> int:
    """Blocks that fit: a byte budget on CPU; on CUDA optionally a fraction of free memory."""
    budget = kv_cache_bytes
    if device.type == "cuda" and gpu_memory_utilization is not None:
        free, _total = torch.cuda.mem_get_info(device)
        budget = int(free * gpu_memory_utilization)
    blocks = budget // bytes_per_block(cfg, block_size, dtype)
    if blocks < 1:
        raise ConfigError(
            f"KV-cache budget of {budget} bytes holds no block of {block_size} tokens "
            f"({bytes_per_block(cfg, block_size, dtype)} bytes each); raise --kv-cache-bytes"
        )
    return int(blocks)


class KVCache:
    """K and V for every layer, addressed by flat slot = block_id * block_size + offset.

    Under tensor parallelism ``cfg`` is the rank's shard: each rank caches only its own KV heads,
    in blocks whose ids rank 0's block manager assigns for all ranks alike."""

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device):
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (cfg.num_layers, 2, num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)
        self.tensor = torch.zeros(shape, dtype=dtype, device=device)
        self.layers = [(self.tensor[i, 0], self.tensor[i, 1]) for i in range(cfg.num_layers)]
