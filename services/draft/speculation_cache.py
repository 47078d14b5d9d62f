"""The speculation cache: pre-computed drafts keyed by the verification outcome.

Key (seq_id, n, r): the sequence, how many draft tokens the target accepted in the round being
verified, and the token it emitted after them. Value: K draft tokens drafted under exactly that
context, and the K proposal distributions they were sampled from (None when greedy).

Entries live per sequence and are replaced wholesale whenever that sequence is speculated
again, so an entry can only ever answer the round it was built for; lookups are by key, never by
row position, because batch composition changes between rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CachedDraft:
    tokens: torch.Tensor  # [K] long
    probs: torch.Tensor | None  # [K, V] fp32 proposal distributions, None for greedy rows


class SpeculationCache:
    def __init__(self) -> None:
        self._by_seq: dict[int, dict[tuple[int, int], CachedDraft]] = {}

    def take(self, seq_id: int, accepted: int, token: int) -> CachedDraft | None:
        """Look up an outcome and drop the sequence's other entries (they are now stale)."""
        entries = self._by_seq.pop(seq_id, None)
        return None if entries is None else entries.get((accepted, token))

    def store(self, seq_id: int, entries: dict[tuple[int, int], CachedDraft]) -> None:
        self._by_seq[seq_id] = entries

    def drop(self, seq_id: int) -> None:
        self._by_seq.pop(seq_id, None)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_seq.values())
