"""Attention backends behind one interface.

``TorchAttention`` is the portable path (CPU, and CUDA when flash-attn is absent): it scatters
new K/V into the paged cache, gathers each sequence's context through its slot table and runs
``scaled_dot_product_attention`` with the metadata's mask. It is the reference every faster
backend must match.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from saguaro.attention.kv_store import store_kv, store_kv_reference
from saguaro.attention.metadata import AttentionMetadata


# A backend is called as ``backend(q, k, v, k_cache, v_cache, meta, scale)``, with the shapes
# ``TorchAttention.__call__`` documents; the draft's tree kernel adds the keyword ``tree``.
AttentionBackend = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata, float], torch.Tensor
]


class TorchAttention:
    """Portable paged attention: gather by slot table, mask, SDPA.

    ``store`` writes the new K/V; on CUDA it is the Triton KV-store kernel's dispatch.
    """

    def __init__(self, store=store_kv_reference):
        self.store = store

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """q: [T, H, D]; k, v: [T, Hkv, D]; caches: [slots, Hkv, D]. Returns [T, H*D]."""
        self.store(k, v, k_cache, v_cache, meta)
        heads, dim = q.shape[1], q.shape[2]
        batch, width = meta.context_slots.shape
        flat = meta.context_slots.view(-1)
        # index_select is several times faster than advanced indexing for this gather.
        if meta.mask is None or meta.dense:  # the tokens are the [B, Q] grid in order: no gather needed
            queries = q.view(batch, -1, heads, dim).transpose(1, 2)
        else:
            queries = q.index_select(0, meta.query_index.view(-1)).view(batch, -1, heads, dim).transpose(1, 2)
        keys = k_cache.index_select(0, flat).view(batch, width, -1, dim).transpose(1, 2)  # [B, Hkv, L, D]
        values = v_cache.index_select(0, flat).view(batch, width, -1, dim).transpose(1, 2)
        mask = None if meta.mask is None else meta.mask[:, None]
        out = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask, scale=scale, enable_gqa=keys.shape[1] != heads
        )
        out = out.transpose(1, 2)  # [B, Q, H, D]
        if meta.dense or (out.shape[1] == 1 and meta.query_valid.all()):
            return out.reshape(-1, heads * dim)
        return out[meta.query_valid].reshape(-1, heads * dim)


def select_backend(device: torch.device) -> AttentionBackend:
    """The portable backend; on CUDA its KV writes go through the Triton store kernel.

    flash-attn for prefill/verify belongs here too; it has not been wired (no GPU has been
    available to test it), see docs/kernels.md.
    """
    if device.type == "cuda":
        return TorchAttention(store_kv)
    return TorchAttention()
