"""Triton kernel: fork tokens, top-F_j of glue row j with s_{j+1} excluded, whole batch.

One program per (sequence, depth). F_j is small (a handful) while V is large, so the
program runs F_j selection passes over the row, each taking the best token ranked strictly
below the previous pick; the row stays in L2 after the first pass. The ranking is the
reference's :func:`~saguaro.speculative.verification.rank_keys` order — value descending
by its ordered fp32 bit pattern (-0.0 folded into +0.0, NaNs where their bits put them),
ties to the lowest index — compared as an (int32 key, index) pair, so the picks are
bit-identical to ``torch.topk`` on the int64 keys. The picks land directly in the branch
slots ``start_j .. start_j + F_j - 1`` (start_j = F_0 + ... + F_{j-1} of the row).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from saguaro.kernels.dispatch import record_launch

_INT32_MIN = tl.constexpr(-(2**31))
_INT32_MAX = tl.constexpr(2**31 - 1)


@triton.jit
def _ordered_key(x):
    """int32 whose order is the float order of ``x`` (fp32), as in ``rank_keys``."""
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _fork_kernel(
    logits_ptr, tok_ptr, fan_ptr, fork_tok_ptr, fork_depth_ptr,
    stride_lb, stride_lk, stride_lv,
    stride_tb, stride_tk, stride_fb, stride_fk, stride_ob,
    V,
    K: tl.constexpr, BLOCK_K1: tl.constexpr, BLOCK_V: tl.constexpr,
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
    # Loop-carried values start as int32 tensors: compiled loops need one type per variable.
    prev_key = tl.full((), _INT32_MAX, tl.int32)
    prev_idx = tl.full((), -1, tl.int32)
    for rank in range(count):
        best_key = tl.full((), _INT32_MIN, tl.int32)
        best_idx = tl.zeros((), tl.int32) + V
        for block in range(0, V, BLOCK_V):
            idx = block + offs
            x = tl.load(logits_row + idx * stride_lv, mask=idx < V, other=0.0).to(tl.float32)
            key = _ordered_key(x)
            below_prev = (key < prev_key) | ((key == prev_key) & (idx > prev_idx))
            eligible = (idx < V) & (idx != excluded) & below_prev
            block_key = tl.max(tl.where(eligible, key, _INT32_MIN), 0)
            block_idx = tl.min(tl.where(eligible & (key == block_key), idx, V), 0)
            better = (block_idx < V) & ((best_idx == V) | (block_key > best_key))
            best_key = tl.where(better, block_key, best_key)
            best_idx = tl.where(better, block_idx, best_idx)
        tl.store(fork_tok_ptr + row * stride_ob + start + rank, best_idx.to(tl.int64))
        tl.store(fork_depth_ptr + row * stride_ob + start + rank, depth.to(tl.int64))
        prev_key = best_key
        prev_idx = best_idx


def fork_triton(
    glue_logits: torch.Tensor, draft_tokens: torch.Tensor, fan_out: torch.Tensor, branches: int, block_v: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch on validated inputs: glue_logits [B, K+1, V], draft_tokens [B, K], fan_out
    [B, K+1] (rows summing to ``branches`` = M). Returns ``(fork_tokens, fork_depth)`` [B, M]."""
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
        K=k1 - 1, BLOCK_K1=triton.next_power_of_2(k1), BLOCK_V=min(block_v, triton.next_power_of_2(vocab)),
    )
    return fork_tokens, fork_depth
