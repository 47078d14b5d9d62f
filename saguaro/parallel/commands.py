"""Rank 0's per-forward command to its followers: a fixed-size header, then one fused payload.

A follower must run exactly rank 0's forward (same tokens, positions, KV slots, mask, logits
rows) to join its collectives, and nothing else: block tables are decided by rank 0 and arrive
inside the attention metadata. Two broadcasts per forward, whatever the batch: the header (8
int64: command and the sizes that shape the payload) and the payload (every tensor, int64 ones
first so each stays 8-byte aligned, then the boolean ones, as raw bytes).
"""

from __future__ import annotations

import torch

from saguaro.attention import AttentionMetadata
from saguaro.rank import ForwardInputs

STOP, FORWARD = 0, 1
# command, tokens T, sequences B, context width L, query width Q, logits rows N (-1: all), has mask, writes_all
HEADER_SIZE = 8


def stop_header() -> torch.Tensor:
    header = torch.zeros(HEADER_SIZE, dtype=torch.int64)
    header[0] = STOP
    return header


def encode(inputs: ForwardInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(header, payload bytes) for ``inputs``."""
    meta = inputs.meta
    batch, width = meta.context_slots.shape
    queries = meta.query_valid.shape[1]
    if meta.mask is not None and tuple(meta.mask.shape) != (batch, queries, width):
        raise ValueError(f"attention mask of shape {tuple(meta.mask.shape)} is not [B, Q, L] = "
                         f"{(batch, queries, width)}")
    index = inputs.logits_index
    header = torch.tensor(
        [FORWARD, inputs.input_ids.numel(), batch, width, queries, -1 if index is None else index.numel(),
         meta.mask is not None, meta.writes_all],
        dtype=torch.int64,
    )
    longs = [inputs.input_ids, inputs.positions, meta.slot_mapping, meta.context_slots, meta.query_index]
    if index is not None:
        longs.append(index)
    bools = [meta.query_valid] + ([meta.mask] if meta.mask is not None else [])
    parts = [t.reshape(-1).to(torch.int64).view(torch.uint8) for t in longs]
    parts += [t.reshape(-1).view(torch.uint8) for t in bools]
    return header, torch.cat(parts)


def payload_size(header: torch.Tensor) -> int:
    """Bytes of the payload that follows ``header``."""
    _, tokens, batch, width, queries, rows, has_mask, _ = header.tolist()
    longs = 3 * tokens + batch * width + batch * queries + max(rows, 0)
    return 8 * longs + batch * queries * (1 + width * has_mask)


def decode(header: torch.Tensor, payload: torch.Tensor) -> ForwardInputs:
    """The inverse of ``encode`` (tensors are views into ``payload``)."""
    _, tokens, batch, width, queries, rows, has_mask, writes_all = header.tolist()
    sizes = [tokens, tokens, tokens, batch * width, batch * queries] + ([rows] if rows >= 0 else [])
    n_longs = 8 * sum(sizes)
    longs = payload[:n_longs].view(torch.int64).split(sizes)
    bools = payload[n_longs:].view(torch.bool)
    query_valid = bools[: batch * queries].view(batch, queries)
    mask = bools[batch * queries :].view(batch, queries, width) if has_mask else None
    input_ids, positions, slot_mapping, context_slots, query_index = longs[:5]
    meta = AttentionMetadata(
        slot_mapping=slot_mapping,
        context_slots=context_slots.view(batch, width),
        query_index=query_index.view(batch, queries),
        query_valid=query_valid,
        mask=mask,
        writes_all=bool(writes_all),
    )
    return ForwardInputs(input_ids, positions, meta, longs[5] if rows >= 0 else None)
