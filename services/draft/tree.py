"""Attention layout of the draft's tree decode (ALGORITHM.md §3.7).

For a sequence with C committed tokens, the glue block ``[r, s_1..s_K]`` sits at table positions
C..C+K, and tree step d of branch m (fork depth j_m) gets the private scratch position
``C+K+1 + d*M + m`` — so a sequence's context at step d is the contiguous range
``0 .. C+K+(d+1)*M`` of its block table. RoPE, however, uses the *logical* position the token
would have in the real sequence, ``C+1+j_m+d``. The mask lets branch m see the committed prefix,
glue columns 0..j_m (r and s_1..s_{j_m}) and its own tree tokens of steps 0..d, nothing of
other branches. Scratch KV is never promoted: the next round's glue rewrites the committed
region under the true context.
"""

from __future__ import annotations

import torch

from saguaro.attention import AttentionMetadata


def tree_scratch_slots(committed_len: int, k: int, m: int) -> int:
    """Table positions one sequence needs for glue + a K-step tree of M branches."""
    return committed_len + k + 1 + k * m


def tree_step_metadata(
    block_tables: list[list[int]],
    committed_lens: list[int],
    fork_depth: torch.Tensor,
    k: int,
    step: int,
    block_size: int,
) -> tuple[AttentionMetadata, torch.Tensor]:
    """Metadata and RoPE positions for tree step ``step`` of B sequences x M branches.

    fork_depth: [B, M] depth j_m of each branch. Tokens are laid out sequence-major, branch
    order within a sequence as in ``fork_depth``.
    """
    batch, m = fork_depth.shape
    width = max(len(t) for t in block_tables)
    tables = torch.tensor([t + [0] * (width - len(t)) for t in block_tables], dtype=torch.long)
    c = torch.tensor(committed_lens, dtype=torch.long)[:, None]  # [B, 1]
    tree_start = c + k + 1
    lengths = tree_start[:, 0] + (step + 1) * m
    l_range = torch.arange(int(lengths.max()))
    context_slots = tables[:, l_range // block_size] * block_size + l_range % block_size  # [B, L]

    col = l_range[None, None, :]  # [1, 1, L]
    depth = fork_depth[:, :, None]  # [B, M, 1]
    glue_index = col - c[:, :, None]
    tree_index = col - tree_start[:, :, None]
    own = (tree_index % m == torch.arange(m)[None, :, None]) & (tree_index // m <= step)
    mask = (col < c[:, :, None]) | ((glue_index >= 0) & (glue_index <= depth)) | ((tree_index >= 0) & own)
    mask &= col < lengths[:, None, None]

    write_pos = tree_start + step * m + torch.arange(m)[None, :]  # [B, M]
    slot_mapping = context_slots.gather(1, write_pos).reshape(-1)
    positions = (c + 1 + fork_depth + step).reshape(-1)
    query_index = torch.arange(batch * m).view(batch, m)
    meta = AttentionMetadata(
        slot_mapping=slot_mapping,
        context_slots=context_slots,
        query_index=query_index,
        query_valid=torch.ones(batch, m, dtype=torch.bool),
        mask=mask,
    )
    return meta, positions
