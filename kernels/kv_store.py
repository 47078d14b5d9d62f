"""Paged KV store: write the new tokens' K/V into their slots (prefill, verify, tree steps).

The torch reference is :func:`saguaro.attention.backend.store_kv` (``index_copy_`` after
dropping slot -1 tokens, which needs a host-visible filter when some tokens are skipped);
the Triton kernel does the skip per token on the device, in one launch.
"""

from __future__ import annotations

import torch

from saguaro.attention import AttentionMetadata
from saguaro.attention.backend import store_kv as store_kv_reference
from saguaro.kernels.dispatch import Backend, use_triton


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
