"""Paged KV store: write the new tokens' K/V into their slots (prefill, verify, tree steps).

:func:`store_kv` picks the implementation: the Triton kernel (``saguaro.kernels.kv_store_triton``)
on CUDA tensors, else :func:`store_kv_reference` (``index_copy_`` after dropping slot -1
tokens, which needs a host-visible filter when some tokens are skipped); the kernel does the
skip per token on the device, in one launch. The dispatcher lives here, beside its reference,
so that ``saguaro.kernels`` imports nothing above it (docs/kernels.md).
"""

from __future__ import annotations

import torch

from saguaro.attention.metadata import AttentionMetadata
from saguaro.kernels.dispatch import Backend, use_triton


def store_kv_reference(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata
) -> None:
    """Write new tokens' K/V into their slots; slot -1 means the token is not cached."""
    slots = meta.slot_mapping
    if not meta.writes_all:
        keep = slots >= 0
        slots, k, v = slots[keep], k[keep], v[keep]
    k_cache.index_copy_(0, slots, k)
    v_cache.index_copy_(0, slots, v)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    *,
    backend: Backend = "auto",
) -> None:
    """k, v: [T, Hkv, D]; caches: [slots, Hkv, D]; writes token t to ``meta.slot_mapping[t]``."""
    if not use_triton(backend, k.device):
        store_kv_reference(k, v, k_cache, v_cache, meta)
        return
    from saguaro.kernels.kv_store_triton import store_kv_triton

    store_kv_triton(k, v, k_cache, v_cache, meta.slot_mapping)
