"""One rank's model: its weights, its paged KV cache and its attention backend on one device.

Rank 0 (inside ``saguaro.model_runner.ModelRunner``) and every tensor-parallel follower
(``saguaro.parallel.follower``) build it the same way and run the same forward, so it lives
below both: the runner drives the followers, and the followers must not need the runner.
See docs/parallelism.md.
"""

from __future__ import annotations

import dataclasses
import resource
from dataclasses import dataclass

import torch

from saguaro.attention import AttentionBackend, AttentionMetadata, select_backend
from saguaro.cache import KVCache, num_blocks_for_budget
from saguaro.config import EngineConfig, ModelConfig, parse_dtype
from saguaro.models import CausalLM, load_model
from saguaro.parallel.group import TensorParallelGroup


def resolve_dtype(name: str, cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """'auto' is fp32 on CPU (bf16 matmuls are slow there) and the checkpoint's dtype on CUDA."""
    if name != "auto":
        return parse_dtype(name)
    if device.type == "cpu":
        return torch.float32
    return parse_dtype(cfg.torch_dtype or "bfloat16")


@dataclass
class RankLoad:
    """What loading cost one rank: checkpoint bytes it read, and its peak resident memory before
    and after loading its weights (the difference is the load's own footprint)."""

    bytes_read: int
    peak_rss_before_bytes: int
    peak_rss_bytes: int


@dataclass
class ForwardInputs:
    """One forward's tokens, positions, attention layout and logits rows (CPU tensors): built
    once by ``ModelRunner.forward`` and handed as one value to whatever runs it (a rank, the
    tensor-parallel followers, a CUDA-graph replay)."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_index: torch.Tensor | None = None


@dataclass
class RankModel:
    """What one rank holds: its weights (its shard under TP), its KV cache (its KV heads only)
    and the attention backend. Rank 0 and every tensor-parallel follower build it the same way
    (``load_rank``) and run the same forward."""

    model: CausalLM
    kv: KVCache
    attention: AttentionBackend
    device: torch.device
    loads: list[RankLoad]  # per rank, in rank order (on rank 0 every rank's)

    def forward(self, inputs: ForwardInputs, attention: AttentionBackend | None = None) -> torch.Tensor | None:
        return self.model(
            inputs.input_ids.to(self.device),
            inputs.positions.to(self.device),
            self.kv.layers,
            _to(inputs.meta, self.device),
            attention or self.attention,
            None if inputs.logits_index is None else inputs.logits_index.to(self.device),
        )


def load_rank(
    config: EngineConfig,
    model_config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    group: TensorParallelGroup | None = None,
) -> RankModel:
    """Load this rank's weights and size its KV cache. Under TP every rank must address the same
    block ids (rank 0's block tables drive them all), so the ranks agree on the smallest count."""
    lead = group is None or group.rank == 0
    before = peak_rss_bytes()
    model = load_model(config.model, model_config, dtype, device, max_positions,
                       show_progress=config.show_progress and lead, group=group)
    num_blocks = num_blocks_for_budget(
        model.local_cfg, config.block_size, dtype, device, config.kv_cache_bytes, config.gpu_memory_utilization
    )
    mine = [model.bytes_loaded, before, peak_rss_bytes()]
    loads = [RankLoad(*mine)]
    if group is not None:
        table = group.all_gather_ints([num_blocks, *mine])
        num_blocks = min(row[0] for row in table)
        loads = [RankLoad(*row[1:]) for row in table]
    kv = KVCache(model.local_cfg, num_blocks, config.block_size, dtype, device)
    return RankModel(model, kv, select_backend(device), device, loads)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024



def _to(meta: AttentionMetadata, device: torch.device) -> AttentionMetadata:
    if device.type == "cpu":
        return meta
    return dataclasses.replace(
        meta,
        slot_mapping=meta.slot_mapping.to(device),
        context_slots=meta.context_slots.to(device),
        query_index=meta.query_index.to(device),
        query_valid=meta.query_valid.to(device),
        mask=None if meta.mask is None else meta.mask.to(device),
    )
