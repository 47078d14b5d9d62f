"""Triton kernel: scatter new tokens' K/V into their paged-cache slots (slot -1 = skip).

One program per new token copies its [Hkv, D] rows of K and V. A skipped token's program
branches out before any load, so skipped tokens cost no memory traffic, and prefill, verify
and tree steps (which may leave tokens uncached) share one kernel with no host-side filter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from saguaro.kernels.dispatch import record_launch


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_ct, stride_ch, stride_cd,
    HEADS: tl.constexpr, DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        heads = tl.arange(0, BLOCK_H)[:, None]
        dims = tl.arange(0, BLOCK_D)[None, :]
        mask = (heads < HEADS) & (dims < DIM)
        dst = slot * stride_ct + heads * stride_ch + dims * stride_cd
        k = tl.load(k_ptr + token * stride_kt + heads * stride_kh + dims * stride_kd, mask=mask)
        tl.store(k_cache_ptr + dst, k, mask=mask)
        v = tl.load(v_ptr + token * stride_vt + heads * stride_vh + dims * stride_vd, mask=mask)
        tl.store(v_cache_ptr + dst, v, mask=mask)

def store_kv_triton(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k, v: [T, Hkv, D] (any strides); caches: [slots, Hkv, D] with equal strides; slots: [T]."""
    tokens, heads, dim = k.shape
    if k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must share one layout")
    if tokens == 0:
        return
    record_launch("store_kv")
    _store_kv_kernel[(tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        *k.stride(), *v.stride(), *k_cache.stride(),
        HEADS=heads, DIM=dim, BLOCK_H=triton.next_power_of_2(heads), BLOCK_D=triton.next_power_of_2(dim),
    )
