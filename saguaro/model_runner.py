"""One model, its paged KV cache and its block manager on one device.

The runner turns "these new tokens, on top of this many cached ones, in these blocks" into a
forward pass. Engines and services (AR, the target's verify, the draft's glue and tree) decide
*what* to run; the runner only knows how.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from saguaro.attention import AttentionBackend, AttentionMetadata, causal_metadata
from saguaro.cache import BlockManager, KVCache
from saguaro.config import EngineConfig, ModelConfig
from saguaro.emulation import StepCost, pad_to
from saguaro.errors import ConfigError
from saguaro.parallel.launch import TensorParallelLeader
from saguaro.parallel.sharding import shard_config
from saguaro.rank import ForwardInputs, RankModel, load_rank, resolve_dtype
from saguaro.step_graphs import StepGraphs

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


class ModelRunner:
    def __init__(self, config: EngineConfig, lookahead_slots: int = 0, extra_positions: int = 0):
        """``lookahead_slots``: KV slots a sequence may use past its tokens (speculation).
        ``extra_positions``: RoPE positions needed past ``max_model_len`` (tree tokens).

        With ``config.tensor_parallel_size`` > 1 this is rank 0: it spawns the other ranks
        (``saguaro.parallel.launch``), which load their shards while it loads its own, and
        drives them on every forward; ``close()`` (or garbage collection, or exit) stops them."""
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
        max_positions = self.max_model_len + extra_positions
        # emulation (benchmarks): the cost each device step is padded to; see device_step
        self.step_cost = (StepCost(config.emulate_forward_s, config.emulate_knee_tokens)
                          if config.emulate_forward_s else None)
        self._open_step: list[float] | None = None  # [started, tokens] of the device step in progress
        self.parallel: TensorParallelLeader | None = None
        self._finalizer: weakref.finalize | None = None
        if config.tensor_parallel_size > 1:
            shard_config(self.model_config, config.tensor_parallel_size)  # refuse an unsplittable model first
            self.parallel = TensorParallelLeader(config, max_positions)
            self._finalizer = weakref.finalize(self, self.parallel.close)
        try:
            self.rank = self._load(max_positions)
            per_seq = -(-(self.max_model_len + lookahead_slots) // config.block_size)
            if self.kv.num_blocks < per_seq:
                raise ConfigError(
                    f"the KV cache holds {self.kv.num_blocks} blocks of {config.block_size} tokens, fewer than one "
                    f"sequence of max_model_len={self.max_model_len} (+{lookahead_slots} lookahead) needs "
                    f"({per_seq}); raise the KV-cache budget or lower max_model_len"
                )
        except BaseException:
            self.close()
            raise
        self.lookahead_slots = lookahead_slots
        self.graphs: StepGraphs | None = None
        self._reserved_blocks = 0
        self.reset_cache()
        graphs = config.step_graphs if config.step_graphs is not None else self.device.type == "cuda"
        if graphs and self.parallel is None:  # under TP the ranks step in lockstep, eagerly
            self.enable_step_graphs()

    def enable_step_graphs(self) -> None:
        """Serve the steps the buckets hold through ``StepGraphs`` (saguaro/step_graphs.py):
        captured CUDA graphs on a GPU, the same padded steps run eagerly on a CPU (tests). One KV
        block is taken out of the cache as the scratch slot of padded tokens, so it forgets
        every sequence."""
        self._reserved_blocks = 1
        self.reset_cache()
        scratch = (self.kv.num_blocks - 1) * self.config.block_size
        self.graphs = StepGraphs(self.rank, scratch, self.config.max_num_seqs, self.max_model_len + self.lookahead_slots)

    def _load(self, max_positions: int) -> RankModel:
        args = (self.config, self.model_config, self.dtype, self.device, max_positions)
        if self.parallel is None:
            return load_rank(*args)
        with self.parallel.watch():
            rank = load_rank(*args, group=self.parallel.group)
        self.parallel.serving = True
        return rank

    def close(self) -> None:
        """Stop the tensor-parallel followers (nothing to do at TP = 1 or when already closed)."""
        if self._finalizer is not None:
            self._finalizer()

    @property
    def kv(self) -> KVCache:
        return self.rank.kv

    def reset_cache(self) -> None:
        """Forget every sequence: all blocks free, no prefix hashes (KV contents are garbage)."""
        self.blocks = BlockManager(self.kv.num_blocks - self._reserved_blocks, self.config.block_size,
                                   self.config.enable_prefix_caching)

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
        inputs = ForwardInputs(input_ids, positions, meta, logits_index)
        graphed = self.graphs.forward(inputs, attention) if self.graphs else None
        if graphed is not None:
            logits = graphed
        elif self.parallel is None:
            logits = self.rank.forward(inputs, attention)
        else:
            logits = self.parallel.forward(self.rank, inputs, attention)
        if self.step_cost is not None:
            if self._open_step is not None:  # padded with the rest of its device step
                self._open_step[1] += input_ids.numel()
            else:
                pad_to(started + self.step_cost.seconds(input_ids.numel()))
        return logits

    @contextmanager
    def device_step(self) -> Iterator[None]:
        """One device step: the forwards inside, with their metadata and sampling around them.

        On a GPU, CUDA graphs make a step's metadata, forward and sampling one launch; under
        emulation (``config.emulate_forward_s``) the step is therefore padded as one unit, to
        the cost of the tokens its forwards ran. Without emulation, and when nested, it is free.
        """
        if self.step_cost is None or self._open_step is not None:
            yield
            return
        self._open_step = [time.perf_counter(), 0]
        try:
            yield
        finally:
            started, tokens = self._open_step
            self._open_step = None
        pad_to(started + self.step_cost.seconds(int(tokens)))  # not reached when the step raised

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
