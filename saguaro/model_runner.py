"""One model, its paged KV cache and its block manager on one device.

The runner turns "these new tokens, on top of this many cached ones, in these blocks" into a
forward pass. Engines and services (AR, the target's verify, the draft's glue and tree) decide
*what* to run; the runner only knows how.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from saguaro.attention import AttentionBackend, AttentionMetadata, causal_metadata, select_backend
from saguaro.cache import BlockManager, KVCache, num_blocks_for_budget
from saguaro.config import EngineConfig, ModelConfig, parse_dtype
from saguaro.emulation import pad_to
from saguaro.errors import ConfigError, ModelLoadError
from saguaro.models import load_model

log = logging.getLogger(__name__)


@dataclass
class CausalChunk:
    """New tokens of one sequence, run causally after ``start`` already-cached tokens."""

    blocks: list[int]
    start: int
    token_ids: list[int]


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available on this machine")
    return device


def resolve_dtype(name: str, cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """'auto' is fp32 on CPU (bf16 matmuls are slow there) and the checkpoint's dtype on CUDA."""
    if name != "auto":
        return parse_dtype(name)
    if device.type == "cpu":
        return torch.float32
    return parse_dtype(cfg.torch_dtype or "bfloat16")


class ModelRunner:
    def __init__(self, config: EngineConfig, lookahead_slots: int = 0, extra_positions: int = 0):
        """``lookahead_slots``: KV slots a sequence may use past its tokens (speculation).
        ``extra_positions``: RoPE positions needed past ``max_model_len`` (tree tokens)."""
        config.validate()
        self.config = config
        self.model_dir = Path(config.model)
        self.model_config = ModelConfig.from_dir(self.model_dir)
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.model_config, self.device)
        limit = self.model_config.max_position_embeddings
        self.max_model_len = min(config.max_model_len or limit, limit)
        if config.max_model_len and config.max_model_len > limit:
            log.warning("max_model_len %d exceeds the model's %d positions; using %d", config.max_model_len, limit, limit)
        self.model = load_model(
            self.model_dir,
            self.model_config,
            self.dtype,
            self.device,
            max_positions=self.max_model_len + extra_positions,
            show_progress=config.show_progress,
        )
        num_blocks = num_blocks_for_budget(
            self.model_config, config.block_size, self.dtype, self.device, config.kv_cache_bytes, config.gpu_memory_utilization
        )
        per_seq = -(-(self.max_model_len + lookahead_slots) // config.block_size)
        if num_blocks < per_seq:
            raise ConfigError(
                f"the KV cache holds {num_blocks} blocks of {config.block_size} tokens, fewer than one "
                f"sequence of max_model_len={self.max_model_len} (+{lookahead_slots} lookahead) needs "
                f"({per_seq}); raise the KV-cache budget or lower max_model_len"
            )
        self.lookahead_slots = lookahead_slots
        self.kv = KVCache(self.model_config, num_blocks, config.block_size, self.dtype, self.device)
        self.reset_cache()
        self.attention = select_backend(self.device)

    def reset_cache(self) -> None:
        """Forget every sequence: all blocks free, no prefix hashes (KV contents are garbage)."""
        self.blocks = BlockManager(self.kv.num_blocks, self.config.block_size, self.config.enable_prefix_caching)

    @property
    def vocab_size(self) -> int:
        return self.model_config.vocab_size

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        logits_index: torch.Tensor | None = None,
        attention: AttentionBackend | None = None,
    ) -> torch.Tensor:
        """Run prepared tokens; fp32 logits for ``logits_index`` rows (all rows if None).

        ``attention`` overrides the runner's backend for this call (the draft's tree steps)."""
        started = time.perf_counter()
        logits = self.model(
            input_ids.to(self.device),
            positions.to(self.device),
            self.kv.layers,
            _to(meta, self.device),
            attention or self.attention,
            None if logits_index is None else logits_index.to(self.device),
        )
        if self.config.emulate_forward_s:
            pad_to(started + self.config.emulate_forward_s)
        return logits

    def run_causal(self, chunks: list[CausalChunk], all_logits: bool = False) -> torch.Tensor:
        """Causal forward of several sequences' new tokens.

        Returns fp32 logits: one row per sequence (its last token) or, with ``all_logits``,
        one row per new token in order (the verify block needs every row).
        """
        counts = [len(c.token_ids) for c in chunks]
        meta, positions = causal_metadata(
            [c.blocks for c in chunks], [c.start + n for c, n in zip(chunks, counts)], counts, self.config.block_size
        )
        input_ids = torch.tensor([t for c in chunks for t in c.token_ids], dtype=torch.long)
        logits_index = None if all_logits else torch.cumsum(torch.tensor(counts), 0) - 1
        return self.forward(input_ids, positions, meta, logits_index)


def _to(meta: AttentionMetadata, device: torch.device) -> AttentionMetadata:
    if device.type == "cpu":
        return meta
    return AttentionMetadata(
        slot_mapping=meta.slot_mapping.to(device),
        context_slots=meta.context_slots.to(device),
        query_index=meta.query_index.to(device),
        query_valid=meta.query_valid.to(device),
        mask=None if meta.mask is None else meta.mask.to(device),
        writes_all=meta.writes_all,
    )
