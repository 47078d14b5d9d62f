"""CUDA graphs for the model's small device steps: fixed shapes per bucket, static buffers, replay.

A decode, verify or draft step launches hundreds of small kernels; on a GPU their launch cost,
not the arithmetic, sets the step time of a small batch. A CUDA graph records the launches of one
step once and replays them as one, but it replays fixed shapes and fixed buffers. So every step
is laid out on a dense grid whose size is a bucket:

* batch B rounded up to a bucket (1, 2, 4, 8, ... up to ``max_num_seqs``);
* queries per sequence Q as the step has them (1 for a decode, k + 1 for a verify or the
  draft's glue, m branches for a tree step): few distinct values, each its own graph;
* context width L (the KV slots a query may read) rounded up to a power of two, at least
  ``MIN_CONTEXT``.

Padding is inert: padded tokens write their K/V to a scratch slot that no sequence owns (the
runner reserves one KV block for it), read only that slot, and their logits are dropped. The
grid's metadata is *dense* (every (sequence, query) pair is a token, in row-major order), so the
attention backend reads and writes it without the gathers that would need the token count on
the host. Steps outside the buckets (prefill, more than ``max_graph_tokens`` tokens, a custom
attention backend) run eagerly.

On a CPU nothing is captured: the padded step runs eagerly on the same buffers. The bucketing,
padding and static-buffer code is therefore the code the CPU tests run, and a padded step must
give the eager step's logits (tests/engine/test_step_graphs.py). docs/gpu.md says what ran on a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from saguaro.attention import AttentionBackend, AttentionMetadata
from saguaro.rank import ForwardInputs

log = logging.getLogger(__name__)

MIN_CONTEXT = 256  # smallest context bucket: fewer graphs for short contexts, little waste
MAX_GRAPH_TOKENS = 512  # a step above this many grid tokens is compute-bound: launches no longer matter
MAX_GRAPHS = 256  # captured graphs kept per runner; steps past it run eagerly (each graph holds its buffers)


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch`` itself."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    buckets, size = [], 1
    while size < max_batch:
        buckets.append(size)
        size *= 2
    return buckets + [max_batch]


def bucket_up(value: int, buckets: list[int]) -> int | None:
    """The smallest bucket that holds ``value`` (None: none does)."""
    return next((b for b in buckets if b >= value), None)


def context_bucket(width: int, max_width: int) -> int | None:
    """A power of two >= ``width`` (at least ``MIN_CONTEXT``), capped at ``max_width``."""
    if width > max_width:
        return None
    size = MIN_CONTEXT
    while size < width:
        size *= 2
    return min(size, max_width)


@dataclass(frozen=True)
class StepShape:
    """The fixed shape of a graphed step: the grid is ``batch`` x ``queries`` tokens."""

    batch: int
    queries: int
    context: int

    @property
    def tokens(self) -> int:
        return self.batch * self.queries


@dataclass
class PaddedStep:
    """A step's inputs on its bucket's dense grid, and where each real token's row landed."""

    input_ids: torch.Tensor  # [B*Q]
    positions: torch.Tensor  # [B*Q]
    meta: AttentionMetadata  # dense: [B, Q] grid, [B, L] context, [B, Q, L] mask
    rows: torch.Tensor  # [T] grid row of each real token, in the step's flat token order


def pad_step(input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, shape: StepShape,
             scratch_slot: int) -> PaddedStep:
    """Lay a step out on ``shape``'s grid. Real tokens keep their ids, positions, slots, context
    and mask; padded tokens write and read only ``scratch_slot``, and see only that one entry,
    so no softmax row is empty and no real sequence's KV is touched."""
    batch, queries = meta.query_valid.shape
    width = meta.context_slots.shape[1]
    seq, query = meta.query_valid.nonzero(as_tuple=True)
    tokens = meta.query_index[seq, query]
    rows = torch.empty(input_ids.shape[0], dtype=torch.long)
    rows[tokens] = seq * shape.queries + query
    grid_ids = torch.zeros(shape.tokens, dtype=input_ids.dtype)
    grid_ids[rows] = input_ids.cpu()
    grid_positions = torch.zeros(shape.tokens, dtype=positions.dtype)
    grid_positions[rows] = positions.cpu()
    slots = meta.slot_mapping.cpu()
    grid_slots = torch.full((shape.tokens,), scratch_slot, dtype=torch.long)
    grid_slots[rows] = torch.where(slots >= 0, slots, scratch_slot)
    context = torch.full((shape.batch, shape.context), scratch_slot, dtype=torch.long)
    context[:batch, :width] = meta.context_slots.cpu()
    mask = torch.zeros(shape.batch, shape.queries, shape.context, dtype=torch.bool)
    if meta.mask is None:  # a uniform decode: every query sees its whole context
        mask[:batch, :queries, :width] = True
    else:
        mask[:batch, :queries, :width] = meta.mask.cpu()
    real = torch.zeros(shape.batch, shape.queries, dtype=torch.bool)
    real[:batch, :queries] = meta.query_valid.cpu()
    # a padded query sees the first context entry only (its own scratch slot on padded rows)
    mask[..., 0] |= ~real
    grid = torch.arange(shape.tokens).view(shape.batch, shape.queries)
    dense = AttentionMetadata(slot_mapping=grid_slots, context_slots=context, query_index=grid,
                              query_valid=torch.ones(shape.batch, shape.queries, dtype=torch.bool), mask=mask,
                              dense=True)
    return PaddedStep(grid_ids, grid_positions, dense, rows)


@dataclass
class _Graph:
    """One captured step: its static inputs, the logits buffer it writes, and the graph."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits: torch.Tensor
    graph: object | None  # torch.cuda.CUDAGraph; None on a CPU (the step runs eagerly on the buffers)


class StepGraphs:
    """Graphed forwards of one rank's model: pads each step to its bucket, captures a graph the
    first time a shape is seen (on CUDA), and replays it after copying the inputs into the
    graph's static buffers."""

    def __init__(self, rank, scratch_slot: int, max_batch: int, max_context: int,
                 max_graph_tokens: int = MAX_GRAPH_TOKENS):
        """``rank``: a ``saguaro.rank.RankModel``; ``scratch_slot``: a KV slot no sequence owns."""
        self.rank = rank
        self.scratch_slot = scratch_slot
        self.batches = batch_buckets(max_batch)
        self.max_context = max_context
        self.max_graph_tokens = max_graph_tokens
        self.capture = rank.device.type == "cuda"
        self.graphs: dict[StepShape, _Graph] = {}
        self.replays = 0  # steps served by a graph (or, on a CPU, by the padded path)
        self._pool = torch.cuda.graph_pool_handle() if self.capture else None

    def shape_of(self, meta: AttentionMetadata) -> StepShape | None:
        """The bucket of a step (None: it runs eagerly)."""
        if meta.dense:
            return None
        batch, queries = meta.query_valid.shape
        padded_batch = bucket_up(batch, self.batches)
        context = context_bucket(meta.context_slots.shape[1], self.max_context)
        if padded_batch is None or context is None or padded_batch * queries > self.max_graph_tokens:
            return None
        shape = StepShape(padded_batch, queries, context)
        if shape not in self.graphs and len(self.graphs) >= MAX_GRAPHS:
            return None
        return shape

    def forward(self, inputs: ForwardInputs, attention: AttentionBackend | None) -> torch.Tensor | None:
        """The step's fp32 logits as the eager forward returns them; None when the step is
        outside the buckets (the caller runs it eagerly)."""
        if attention is not None:
            return None  # a custom backend (the draft's tree kernel) holds per-step state a graph would freeze
        shape = self.shape_of(inputs.meta)
        if shape is None:
            return None
        step = pad_step(inputs.input_ids, inputs.positions, inputs.meta, shape, self.scratch_slot)
        graph = self.graphs.get(shape)
        if graph is None:  # building runs the step once (a CPU: eagerly; CUDA: a replay after capture)
            graph = self.graphs[shape] = self._build(shape, step)
        else:
            self._load(graph, step)
            if graph.graph is not None:
                graph.graph.replay()
            else:  # a CPU: the padded step runs eagerly on the static inputs
                graph.logits = self._run(graph)
        self.replays += 1
        logits = graph.logits[step.rows.to(graph.logits.device)]
        return logits if inputs.logits_index is None else logits[inputs.logits_index.to(logits.device)]

    def _run(self, graph: _Graph) -> torch.Tensor:
        return self.rank.model(graph.input_ids, graph.positions, self.rank.kv.layers, graph.meta,
                               self.rank.attention, None)

    def _build(self, shape: StepShape, step: PaddedStep) -> _Graph:
        device = self.rank.device
        meta = step.meta
        static = _Graph(step.input_ids.to(device), step.positions.to(device), AttentionMetadata(
            slot_mapping=meta.slot_mapping.to(device), context_slots=meta.context_slots.to(device),
            query_index=meta.query_index.to(device), query_valid=meta.query_valid.to(device),
            mask=meta.mask.to(device), dense=True), logits=None, graph=None)
        if not self.capture:
            static.logits = self._run(static)
            return static
        # Warm up on a side stream (allocator and autotuning settle), then record. Both run the
        # real inputs: their KV writes are the step's own, and replaying writes the same values.
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            self._run(static)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static.logits = self._run(static)
        static.graph = graph
        graph.replay()
        log.debug("captured a CUDA graph for %s", shape)
        return static

    @staticmethod
    def _load(graph: _Graph, step: PaddedStep) -> None:
        graph.input_ids.copy_(step.input_ids, non_blocking=True)
        graph.positions.copy_(step.positions, non_blocking=True)
        graph.meta.slot_mapping.copy_(step.meta.slot_mapping, non_blocking=True)
        graph.meta.context_slots.copy_(step.meta.context_slots, non_blocking=True)
        graph.meta.mask.copy_(step.meta.mask, non_blocking=True)
