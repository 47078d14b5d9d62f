"""Triton kernel: fork tokens, top-F_j of glue row j with s_{j+1} excluded, whole batch.

One program per (sequence, depth) streams its glue row once, keeping a running best-first
list of F_max candidates in registers: each vocabulary tile is merged into the list by
F_max extraction rounds (the better of the tile's best and the list's next entry), so the
row is read from memory exactly once whatever F is. The ranking is the reference's
:func:`~saguaro.speculative.distributions.topk_indices` order — value descending by its
ordered fp32 bit pattern (-0.0 folded into +0.0, NaNs where their bits put them), ties to
the lowest index — compared as an (int32 key, index) pair, so the picks are bit-identical
to the reference's. The first F_j picks land directly in the
branch slots ``start_j .. start_j + F_j - 1`` (start_j = F_0 + ... + F_{j-1} of the row).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from saguaro.kernels.dispatch import record_launch

_INT32_MIN = tl.constexpr(-(2**31))


@triton.jit
def _ordered_key(x):
    """int32 whose order is the float order of ``x`` (fp32), as in ``topk_indices``."""
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _better(key_a, idx_a, key_b, idx_b):
    """Rank order: larger key first, then lower index. (INT32_MIN, V) is "empty"."""
    return (key_a > key_b) | ((key_a == key_b) & (idx_a < idx_b))


@triton.jit
def _fork_kernel(
    logits_ptr, tok_ptr, fan_ptr, fork_tok_ptr, fork_depth_ptr,
    stride_lb, stride_lk, stride_lv,
    stride_tb, stride_tk, stride_fb, stride_fk, stride_ob,
    V,
    K: tl.constexpr, F_MAX: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K1: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    depth = tl.program_id(1)
    depths = tl.arange(0, BLOCK_K1)
    fan = tl.load(fan_ptr + row * stride_fb + depths * stride_fk, mask=depths <= K, other=0)
    count = tl.sum(tl.where(depths == depth, fan, 0), 0)
    start = tl.sum(tl.where(depths < depth, fan, 0), 0)
    excluded = tl.load(tok_ptr + row * stride_tb + depth * stride_tk, mask=depth < K, other=-1)

    logits_row = logits_ptr + row * stride_lb + depth * stride_lk
    offs = tl.arange(0, BLOCK_V)
    slots = tl.arange(0, BLOCK_F)
    top_key = tl.full((BLOCK_F,), _INT32_MIN, tl.int32)
    top_idx = tl.zeros((BLOCK_F,), tl.int32) + V
    for block in range(0, V, BLOCK_V):
        idx = block + offs
        key = _ordered_key(tl.load(logits_row + idx * stride_lv, mask=idx < V, other=0.0).to(tl.float32))
        live = (idx < V) & (idx != excluded)
        merged_key = tl.full((BLOCK_F,), _INT32_MIN, tl.int32)
        merged_idx = tl.zeros((BLOCK_F,), tl.int32) + V
        head = 0  # next unused entry of the running list
        for rank in tl.static_range(F_MAX):
            tile_key = tl.max(tl.where(live, key, _INT32_MIN), 0)
            tile_idx = tl.min(tl.where(live & (key == tile_key), idx, V), 0)
            list_key = tl.max(tl.where(slots == head, top_key, _INT32_MIN), 0)
            list_idx = tl.min(tl.where(slots == head, top_idx, V), 0)
            from_tile = _better(tile_key, tile_idx, list_key, list_idx)
            merged_key = tl.where(slots == rank, tl.where(from_tile, tile_key, list_key), merged_key)
            merged_idx = tl.where(slots == rank, tl.where(from_tile, tile_idx, list_idx), merged_idx)
            live = live & (idx != tl.where(from_tile, tile_idx, -1))
            head = head + tl.where(from_tile, 0, 1)
        top_key = merged_key
        top_idx = merged_idx
    out = row * stride_ob + start + slots
    tl.store(fork_tok_ptr + out, top_idx.to(tl.int64), mask=slots < count)
    tl.store(fork_depth_ptr + out, tl.zeros((BLOCK_F,), tl.int64) + depth, mask=slots < count)


def fork_triton(
    glue_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    fan_out: torch.Tensor,
    branches: int,
    max_fan_out: int,
    block_v: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch on validated inputs: glue_logits [B, K+1, V], draft_tokens [B, K], fan_out
    [B, K+1] (rows summing to ``branches`` = M, entries at most ``max_fan_out``).
    Returns ``(fork_tokens, fork_depth)``, LongTensor[B, M] each. ``block_v`` is the
    vocabulary tile (tests shrink it so the running list crosses tiles)."""
    batch, k1, vocab = glue_logits.shape
    fork_tokens = torch.empty(batch, branches, dtype=torch.long, device=glue_logits.device)
    fork_depth = torch.empty_like(fork_tokens)
    if batch == 0:
        return fork_tokens, fork_depth
    record_launch("fork")
    _fork_kernel[(batch, k1)](
        glue_logits, draft_tokens, fan_out, fork_tokens, fork_depth,
        *glue_logits.stride(), *draft_tokens.stride(), *fan_out.stride(), fork_tokens.stride(0),
        vocab,
        K=k1 - 1, F_MAX=max_fan_out, BLOCK_F=triton.next_power_of_2(max(max_fan_out, 1)),
        BLOCK_K1=triton.next_power_of_2(k1), BLOCK_V=min(block_v, triton.next_power_of_2(vocab)),
    )
    return fork_tokens, fork_depth
