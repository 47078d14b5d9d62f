"""Chained block hashes for prefix caching — a documented, cross-process-stable format.

Block i of a token sequence (tokens ``i*bs .. (i+1)*bs - 1``, full blocks only) hashes to::

    h_i = first 8 bytes, big-endian unsigned, of
          SHA-256( h_{i-1} as 8 bytes big-endian   (omitted for i = 0)
                   || each token id as 8 bytes little-endian signed )

so a block's hash identifies its whole prefix, not just its own tokens. The gateway computes
the same hashes from token ids to route a request to the pod that already holds its prefix;
nothing here depends on Python's per-process ``hash`` seed, so every process and machine
agrees. See docs/prefix-caching.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

HASH_BYTES = 8


def block_hash(parent: int | None, tokens: Sequence[int]) -> int:
    digest = hashlib.sha256()
    if parent is not None:
        digest.update(parent.to_bytes(HASH_BYTES, "big"))
    digest.update(np.asarray(tokens, dtype="<i8").tobytes())
    return int.from_bytes(digest.digest()[:HASH_BYTES], "big")


def block_hashes(token_ids: Sequence[int], block_size: int, parent: int | None = None) -> list[int]:
    """Hashes of every *full* block of ``token_ids`` (a trailing partial block has none)."""
    hashes: list[int] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = block_hash(parent, token_ids[start : start + block_size])
        hashes.append(parent)
    return hashes
