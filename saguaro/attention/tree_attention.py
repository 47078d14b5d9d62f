"""Tree attention: the draft's inner loop, one query per branch per step (docs/speculation.md, "One round").

:func:`tree_attention` picks the implementation: the Triton kernel
(``saguaro.kernels.tree_attention_triton``) on CUDA tensors, else the torch reference,
``TorchAttention`` on the metadata of :func:`saguaro.services.draft.tree.tree_step_metadata`
(a dense [B, M, L] mask, a gather of each sequence's whole context, a padded SDPA). The
Triton kernel needs only the compact layout below — per-sequence committed length,
per-branch fork depth, the step — and derives the mask per tile, so the host builds no mask
and each cached entry is read once per sequence and KV head. The dispatcher lives here,
beside its reference, so that ``saguaro.kernels`` imports nothing above it.

``tree_attention`` has the ``AttentionBackend`` call signature plus the keyword ``tree``, so
``functools.partial(tree_attention, tree=layout)`` is a backend the model can run a tree
step with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saguaro.attention.backend import TorchAttention
from saguaro.attention.kv_store import store_kv
from saguaro.attention.metadata import AttentionMetadata
from saguaro.kernels.dispatch import Backend, use_triton

_reference = TorchAttention()


@dataclass(frozen=True)
class TreeStep:
    """What the kernel needs to know about tree step ``step`` (the arguments of
    ``tree_step_metadata``, as device tensors, plus the longest C on the host so tiling
    needs no device sync). Everything but ``step`` is fixed for the K steps of a round:
    build it once and ``dataclasses.replace(tree, step=d)``."""

    block_tables: Tensor  # [B, W] int32, block ids of each sequence's table (padded)
    committed_lens: Tensor  # [B] int32, C per sequence
    fork_depth: Tensor  # [B, M] int32, depth j_m of each branch
    max_committed: int
    k: int
    step: int
    block_size: int

    @classmethod
    def build(
        cls,
        block_tables: list[list[int]],
        committed_lens: list[int],
        fork_depth: Tensor,
        k: int,
        step: int,
        block_size: int,
    ) -> TreeStep:
        """Same arguments as ``tree_step_metadata``; tensors land on ``fork_depth``'s device."""
        device = fork_depth.device
        width = max(len(t) for t in block_tables)
        tables = torch.tensor([t + [0] * (width - len(t)) for t in block_tables], dtype=torch.int32)
        return cls(
            block_tables=tables.to(device),
            committed_lens=torch.tensor(committed_lens, dtype=torch.int32).to(device),
            fork_depth=fork_depth.to(torch.int32).contiguous(),
            max_committed=max(committed_lens),
            k=k,
            step=step,
            block_size=block_size,
        )


def tree_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    meta: AttentionMetadata,
    scale: float,
    *,
    tree: TreeStep | None,
    backend: Backend = "auto",
) -> Tensor:
    """Store this step's K/V, then attend: q [B*M, H, D] -> [B*M, H*D].

    ``meta`` (from ``tree_step_metadata``) drives the reference; the Triton path reads only
    its ``slot_mapping`` (for the store) and takes the visibility from ``tree``, which only
    it needs (CPU callers may pass None).
    """
    if not use_triton(backend, q.device):
        return _reference(q, k, v, k_cache, v_cache, meta, scale)
    if tree is None:
        raise ValueError("the Triton tree-attention path needs the TreeStep layout")
    store_kv(k, v, k_cache, v_cache, meta, backend="triton")
    from saguaro.kernels.tree_attention_triton import tree_attention_triton

    return tree_attention_triton(
        q, k_cache, v_cache, tree.block_tables, tree.committed_lens, tree.fork_depth,
        tree.k, tree.step, tree.block_size, tree.max_committed, scale,
    )
