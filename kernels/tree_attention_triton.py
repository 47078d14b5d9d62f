"""Triton kernel: one tree step of the draft — M branch queries per sequence over the paged cache.

The mask of the tree layout (docs/speculation.md, "One round") is never materialised; it is recomputed per tile from the
committed length C, the fork depths j_m, the step d, K and M. A sequence's context is the
contiguous table range 0 .. C+K+(d+1)M, and branch m sees entry e iff

    e <= C + j_m                                   (prefix, glue r and s_1..s_{j_m})
    or e >= C+K+1 and (e - C-K-1) % M == m         (its own tree tokens of steps 0..d)

The M branches share the prefix, so the query tile is all M branches x the GQA group of one
KV head (branch-major rows): every cached K/V entry is read from DRAM once per (sequence,
KV head), not once per branch — the prefix dominates the bytes. Both products are
``tl.dot`` tiles (rows padded to >= 16) with an online softmax in fp32.

Split-K (flash-decoding): with few sequences, (sequence, KV head) pairs alone cannot fill
the GPU at long contexts, so the context is cut into ``splits`` ranges; each writes a
partial output and its log-sum-exp, and a second small kernel merges them. A row that sees
nothing in its range (a range of other branches' tree tokens) leaves an empty partial
(lse = -inf) that the merge weighs 0; every row sees r, so the merged total is never empty.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from saguaro.kernels.dispatch import record_launch


@triton.jit
def _tree_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    tables_ptr, committed_ptr, depth_ptr,
    stride_qt, stride_qh, stride_qd,
    stride_ct, stride_ch, stride_cd,
    stride_ot, stride_oh, stride_od,
    stride_tb, stride_tc, stride_db, stride_dm,
    step, scale, split_entries,
    K: tl.constexpr, M: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    GROUP: tl.constexpr, DIM: tl.constexpr, ROW_TILES: tl.constexpr, SPLITS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0) // ROW_TILES
    rows = (tl.program_id(0) % ROW_TILES) * BLOCK_R + tl.arange(0, BLOCK_R)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    committed = tl.load(committed_ptr + seq)
    tree_start = committed + K + 1
    context = tree_start + (step + 1) * M
    lo = split * split_entries
    hi = tl.minimum(context, lo + split_entries)

    row_ok = rows < M * GROUP
    branch = rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    token = (seq * M + branch).to(tl.int64)
    glue_end = committed + tl.load(depth_ptr + seq * stride_db + branch * stride_dm, mask=row_ok, other=0) + 1
    dims = tl.arange(0, BLOCK_D)
    q_mask = row_ok[:, None] & (dims < DIM)[None, :]
    q = tl.load(q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :] * stride_qd,
                mask=q_mask, other=0.0)

    row_max = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    row_sum = tl.zeros((BLOCK_R,), tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
    offs = tl.arange(0, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        entry = start + offs
        in_range = entry < hi
        block = tl.load(tables_ptr + seq * stride_tb + (entry // BLOCK_SIZE) * stride_tc, mask=in_range, other=0)
        slot = block.to(tl.int64) * BLOCK_SIZE + entry % BLOCK_SIZE
        kv_offset = slot[:, None] * stride_ct + kv_head * stride_ch + dims[None, :] * stride_cd
        kv_mask = in_range[:, None] & (dims < DIM)[None, :]
        k = tl.load(k_cache_ptr + kv_offset, mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + kv_offset, mask=kv_mask, other=0.0)

        tree_index = entry - tree_start
        own_tree = (tree_index >= 0)[None, :] & ((tree_index % M)[None, :] == branch[:, None])
        visible = ((entry[None, :] < glue_end[:, None]) | own_tree) & in_range[None, :]
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows that saw nothing yet
        rescale = tl.exp(row_max - safe_max)
        weights = tl.exp(scores - safe_max[:, None])
        row_sum = row_sum * rescale + tl.sum(weights, 1)
        acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v, input_precision=PRECISION)
        row_max = new_max

    has_mass = row_sum > 0
    norm = tl.where(has_mass, row_sum, 1.0)
    out = acc / norm[:, None]
    if SPLITS == 1:
        out_offset = token[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :] * stride_od
        tl.store(out_ptr + out_offset, out.to(out_ptr.dtype.element_ty), mask=q_mask)
    else:
        # Partials: [SPLITS, T, H, BLOCK_D] and [SPLITS, T, H], contiguous.
        tokens_total = tl.num_programs(0) // ROW_TILES * M
        part_row = (split * tokens_total + token) * (tl.num_programs(1) * GROUP) + head
        lse = tl.where(has_mass, row_max + tl.log(norm), float("-inf"))
        tl.store(part_out_ptr + part_row[:, None] * BLOCK_D + dims[None, :], out, mask=row_ok[:, None])
        tl.store(part_lse_ptr + part_row, lse, mask=row_ok)


@triton.jit
def _merge_splits_kernel(
    part_out_ptr, part_lse_ptr, out_ptr, stride_ot, stride_oh, stride_od, rows_per_split,
    DIM: tl.constexpr, SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out[t, h] = sum_s exp(lse_s - lse) * out_s, one program per (token, head)."""
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    row = token * tl.num_programs(1) + head
    splits = tl.arange(0, BLOCK_S)
    dims = tl.arange(0, BLOCK_D)
    lse = tl.load(part_lse_ptr + splits * rows_per_split + row, mask=splits < SPLITS, other=float("-inf"))
    weights = tl.exp(lse - tl.max(lse, 0))
    parts = tl.load(part_out_ptr + (splits[:, None] * rows_per_split + row) * BLOCK_D + dims[None, :],
                    mask=(splits < SPLITS)[:, None], other=0.0)
    out = tl.sum(weights[:, None] * parts, 0) / tl.sum(weights, 0)
    tl.store(out_ptr + token * stride_ot + head * stride_oh + dims * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=dims < DIM)


def _default_splits(device: torch.device, programs: int, max_context: int, block_n: int) -> int:
    """Enough context splits for ~2 programs per SM, each split at least 4 tiles long."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(2 * sms, programs), triton.cdiv(max_context, 4 * block_n)))


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
    max_committed: int,
    scale: float,
    *,
    splits: int | None = None,
    block_n: int = 64,
    max_block_r: int = 128,
) -> torch.Tensor:
    """q: [B*M, H, D] (sequence-major, branch order of ``fork_depth`` [B, M]); caches
    [slots, Hkv, D] already holding this step's K/V. Returns [B*M, H*D] in q's dtype.

    ``splits``, ``block_n`` and ``max_block_r`` are tile choices (tests shrink them so that
    splits, context tiles and row tiles all cross boundaries at tiny shapes).
    """
    tokens, heads, dim = q.shape
    batch, branches = fork_depth.shape
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    out = torch.empty(tokens, heads, dim, dtype=q.dtype, device=q.device)
    if tokens == 0:
        return out.view(tokens, heads * dim)
    block_r = min(max_block_r, max(16, triton.next_power_of_2(branches * group)))
    row_tiles = triton.cdiv(branches * group, block_r)
    block_d = max(16, triton.next_power_of_2(dim))
    max_context = max_committed + k + 1 + (step + 1) * branches
    if splits is None:
        splits = _default_splits(q.device, batch * row_tiles * kv_heads, max_context, block_n)
    split_entries = triton.cdiv(triton.cdiv(max_context, splits), block_n) * block_n
    part_out = part_lse = out  # placeholders, unused when splits == 1
    if splits > 1:
        part_out = torch.empty(splits, tokens, heads, block_d, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(splits, tokens, heads, dtype=torch.float32, device=q.device)
    record_launch("tree_attention")
    _tree_attention_kernel[(batch * row_tiles, kv_heads, splits)](
        q, k_cache, v_cache, out, part_out, part_lse, block_tables, committed_lens, fork_depth,
        *q.stride(), *k_cache.stride(), *out.stride(), *block_tables.stride(), *fork_depth.stride(),
        step, scale, split_entries,
        K=k, M=branches, BLOCK_SIZE=block_size, GROUP=group, DIM=dim, ROW_TILES=row_tiles, SPLITS=splits,
        BLOCK_R=block_r, BLOCK_D=block_d, BLOCK_N=block_n, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=8 if block_r >= 128 else 4,
    )
    if splits > 1:
        record_launch("tree_attention_merge")
        _merge_splits_kernel[(tokens, heads)](
            part_out, part_lse, out, *out.stride(), tokens * heads,
            DIM=dim, SPLITS=splits, BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d,
        )
    return out.view(tokens, heads * dim)
