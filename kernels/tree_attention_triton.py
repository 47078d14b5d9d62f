"""Triton kernel: one tree step of the draft — one query per branch over the paged cache.

The mask of ALGORITHM.md §3.7 is never materialised. Branch m of a sequence with C
committed tokens and fork depth j sees, in order: table positions 0..C+j (prefix and glue
r, s_1..s_j), then its own tree tokens of steps 0..d at table positions C+K+1+i*M+m. The
kernel walks exactly that list — ``C + j + d + 2`` entries — mapping each through the block
table, so other branches' tree tokens are not even loaded (the reference gathers the whole
``C+K+1+(d+1)*M`` context and masks it).

Grid: (branch token, KV head). The query heads sharing a KV head (GQA group) form the rows
of one tile, padded to 16 so both products are ``tl.dot`` tensor-core tiles; softmax is the
online (flash) form in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from saguaro.kernels.dispatch import record_launch


@triton.jit
def _tree_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, tables_ptr, committed_ptr, depth_ptr,
    stride_qt, stride_qh, stride_qd,
    stride_ct, stride_ch, stride_cd,
    stride_ot, stride_oh, stride_od,
    stride_tb, stride_tc, stride_db, stride_dm,
    step, scale,
    K: tl.constexpr, M: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    GROUP: tl.constexpr, DIM: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    seq = token // M
    branch = token % M
    committed = tl.load(committed_ptr + seq)
    glue_end = committed + tl.load(depth_ptr + seq * stride_db + branch * stride_dm) + 1
    context = glue_end + step + 1
    tree_base = committed + K + 1 + branch  # table position of this branch's step-0 token

    rows = tl.arange(0, BLOCK_G)
    dims = tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + rows
    q_mask = (rows < GROUP)[:, None] & (dims < DIM)[None, :]
    q = tl.load(q_ptr + token * stride_qt + heads[:, None] * stride_qh + dims[None, :] * stride_qd, mask=q_mask, other=0.0)

    row_max = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    row_sum = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    offs = tl.arange(0, BLOCK_N)
    for start in range(0, context, BLOCK_N):
        entry = start + offs
        visible = entry < context
        table_pos = tl.where(entry < glue_end, entry, tree_base + (entry - glue_end) * M)
        block = tl.load(tables_ptr + seq * stride_tb + (table_pos // BLOCK_SIZE) * stride_tc, mask=visible, other=0)
        slot = block.to(tl.int64) * BLOCK_SIZE + table_pos % BLOCK_SIZE
        kv_offset = slot[:, None] * stride_ct + kv_head * stride_ch + dims[None, :] * stride_cd
        kv_mask = visible[:, None] & (dims < DIM)[None, :]
        k = tl.load(k_cache_ptr + kv_offset, mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + kv_offset, mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        scores = tl.where(visible[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        rescale = tl.exp(row_max - new_max)
        weights = tl.exp(scores - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(weights, 1)
        acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v, input_precision=PRECISION)
        row_max = new_max
    out = acc / row_sum[:, None]
    out_offset = token * stride_ot + heads[:, None] * stride_oh + dims[None, :] * stride_od
    tl.store(out_ptr + out_offset, out.to(out_ptr.dtype.element_ty), mask=q_mask)


def tree_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    committed_lens: torch.Tensor,
    fork_depth: torch.Tensor,
    k: int,
    step: int,
    block_size: int,
    scale: float,
    block_n: int = 64,
) -> torch.Tensor:
    """q: [B*M, H, D] (sequence-major, branch order of ``fork_depth`` [B, M]); caches
    [slots, Hkv, D] already holding this step's K/V. Returns [B*M, H*D] in q's dtype."""
    tokens, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    branches = fork_depth.shape[1]
    out = torch.empty(tokens, heads, dim, dtype=q.dtype, device=q.device)
    if tokens == 0:
        return out.view(tokens, heads * dim)
    group = heads // kv_heads
    record_launch("tree_attention")
    _tree_attention_kernel[(tokens, kv_heads)](
        q, k_cache, v_cache, out, block_tables, committed_lens, fork_depth,
        *q.stride(), *k_cache.stride(), *out.stride(), *block_tables.stride(), *fork_depth.stride(),
        step, scale,
        K=k, M=branches, BLOCK_SIZE=block_size, GROUP=group, DIM=dim,
        BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_D=max(16, triton.next_power_of_2(dim)),
        BLOCK_N=block_n, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return out.view(tokens, heads * dim)
