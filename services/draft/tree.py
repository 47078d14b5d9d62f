"""Attention layout of the draft's tree decode (docs/speculation.md, "One round").

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


class TreeRound:
    """The attention metadata and RoPE positions of the k tree steps of one round, built once.

    Slots and positions are linear in the step, and step d's context is a prefix of step
    k-1's: the committed prefix and the glue columns are visible at every step, and branch m's
    tree column of step d' becomes visible at step d'. So the block-table gather, the mask's
    fixed part and each column's step are computed once, and a step only slices them and
    compares (instead of rebuilding a dense [B, M, L] mask from the block tables every step).

    fork_depth: [B, M] depth j_m of each branch. Tokens are laid out sequence-major, branch
    order within a sequence as in ``fork_depth``.
    """

    def __init__(
        self,
        block_tables: list[list[int]],
        committed_lens: list[int],
        fork_depth: torch.Tensor,
        k: int,
        block_size: int,
    ):
        batch, m = fork_depth.shape
        width = max(len(t) for t in block_tables)
        tables = torch.tensor([t + [0] * (width - len(t)) for t in block_tables], dtype=torch.long)
        c = torch.tensor(committed_lens, dtype=torch.long)[:, None]  # [B, 1]
        self._m = m
        self._tree_start = (c + k + 1)[:, 0]  # [B]
        l_range = torch.arange(int(self._tree_start.max()) + k * m)
        self._context_slots = tables[:, l_range // block_size] * block_size + l_range % block_size  # [B, L]
        col = l_range[None, None, :]  # [1, 1, L]
        glue_index = col - c[:, :, None]
        tree_index = col - self._tree_start[:, None, None]
        self._always = (col < c[:, :, None]) | ((glue_index >= 0) & (glue_index <= fork_depth[:, :, None]))
        own = (tree_index >= 0) & (tree_index % m == torch.arange(m)[None, :, None])
        self._visible_from = torch.where(own, tree_index // m, k)  # the step that sees the column (k: none)
        self._write = self._tree_start[:, None] + torch.arange(m)[None, :]  # [B, M] slots of step 0
        self._positions = (c + 1 + fork_depth).reshape(-1)
        self._query_index = torch.arange(batch * m).view(batch, m)
        self._query_valid = torch.ones(batch, m, dtype=torch.bool)

    def step(self, step: int) -> tuple[AttentionMetadata, torch.Tensor]:
        """Metadata and RoPE positions for tree step ``step``."""
        width = int(self._tree_start.max()) + (step + 1) * self._m
        context_slots = self._context_slots[:, :width].contiguous()
        meta = AttentionMetadata(
            slot_mapping=context_slots.gather(1, self._write + step * self._m).reshape(-1),
            context_slots=context_slots,
            query_index=self._query_index,
            query_valid=self._query_valid,
            mask=self._always[:, :, :width] | (self._visible_from[:, :, :width] <= step),
        )
        return meta, self._positions + step


def tree_step_metadata(
    block_tables: list[list[int]],
    committed_lens: list[int],
    fork_depth: torch.Tensor,
    k: int,
    step: int,
    block_size: int,
) -> tuple[AttentionMetadata, torch.Tensor]:
    """Metadata and RoPE positions for one tree step (``TreeRound`` builds all k at once)."""
    return TreeRound(block_tables, committed_lens, fork_depth, k, block_size).step(step)
