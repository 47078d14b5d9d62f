"""What an attention call needs to know about the batch, independent of the backend.

Every attention pattern the engine uses — prefill on top of a cached prefix, single-token
decode, the K+1-query verify block, and the draft's tree step with a custom mask — is the
same operation in this representation: new tokens write their K/V into paged slots, then each
query attends to the subset of its sequence's slots that ``mask`` allows. Only how ``mask`` is
built differs (causal vs tree), which is why one interface serves all four.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Batch layout for one forward.

    New tokens are flattened sequence-major (all queries of sequence 0, then sequence 1, ...),
    T tokens in total; attention is computed on a padded [B, Q] view of them.

    slot_mapping:  [T] KV slot each new token writes (-1: do not write).
    context_slots: [B, L] the KV slots each sequence's queries may read, in context order
                   (entries past a sequence's context length are padding).
    query_index:   [B, Q] flat index of each (sequence, query) pair; padding points at 0.
    query_valid:   [B, Q] which (sequence, query) pairs are real.
    mask:          [B, Q, L] True where a query may attend a context entry; None means every
                   query sees every entry of ``context_slots`` (uniform-length decode).
    dense:         every (sequence, query) pair is a token, in row-major order (T = B * Q), and
                   ``mask`` is set: the fixed-shape grid of a CUDA-graphed step
                   (saguaro/step_graphs.py), which the backend reads and writes without gathers.
    """

    slot_mapping: torch.Tensor
    context_slots: torch.Tensor
    query_index: torch.Tensor
    query_valid: torch.Tensor
    mask: torch.Tensor | None
    writes_all: bool = True  # no -1 in slot_mapping: lets the backend skip a filter
    dense: bool = False

    @property
    def num_sequences(self) -> int:
        return self.context_slots.shape[0]


def _pad(rows: list[list[int]], pad: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


def _decode_metadata(context_slots: torch.Tensor, lengths: torch.Tensor, l_range: torch.Tensor) -> AttentionMetadata:
    """One query per sequence, at its last position: the per-token decode step, kept lean."""
    batch = len(lengths)
    rows = torch.arange(batch)
    uniform = bool((lengths == l_range.shape[0]).all())
    return AttentionMetadata(
        slot_mapping=context_slots[rows, lengths - 1],
        context_slots=context_slots,
        query_index=rows[:, None],
        query_valid=torch.ones(batch, 1, dtype=torch.bool),
        mask=None if uniform else (l_range[None, :] < lengths[:, None])[:, None, :],
    )


def causal_metadata(
    block_tables: list[list[int]],
    context_lens: list[int],
    num_queries: list[int],
    block_size: int,
) -> tuple[AttentionMetadata, torch.Tensor]:
    """Metadata and RoPE positions for causal attention over paged sequences.

    Sequence b has ``context_lens[b]`` tokens in context, the last ``num_queries[b]`` of which
    are new: query q sits at position ``context_lens[b] - num_queries[b] + q``, writes its K/V
    into that position's slot and sees every position up to and including its own. This one
    shape serves prefill (with or without a cached prefix), decode (one query) and verify
    (K+1 queries).
    """
    tables = _pad(block_tables, 0)
    lengths = torch.tensor(context_lens, dtype=torch.long)
    width_l = max(context_lens)
    l_range = torch.arange(width_l)
    context_slots = tables[:, l_range // block_size] * block_size + l_range % block_size
    if max(num_queries) == 1:
        return _decode_metadata(context_slots, lengths, l_range), lengths - 1
    nq = torch.tensor(num_queries, dtype=torch.long)
    width_q = int(nq.max())
    q_range = torch.arange(width_q)
    query_valid = q_range[None, :] < nq[:, None]
    q_pos = (lengths - nq)[:, None] + q_range[None, :]  # [B, Q] position of each query
    offsets = torch.cumsum(nq, 0) - nq
    query_index = torch.where(query_valid, offsets[:, None] + q_range[None, :], 0)
    positions = q_pos[query_valid]
    slot_mapping = context_slots.gather(1, q_pos.clamp(max=width_l - 1))[query_valid]
    mask = None
    if width_q > 1 or bool((lengths != width_l).any()):
        mask = l_range[None, None, :] <= q_pos[:, :, None]
        # Padding queries attend entry 0 only, so no row is fully masked (NaN-free softmax).
        mask |= (~query_valid)[:, :, None] & (l_range == 0)[None, None, :]
    meta = AttentionMetadata(slot_mapping=slot_mapping, context_slots=context_slots, query_index=query_index,
                             query_valid=query_valid, mask=mask)
    return meta, positions
