"""Proposal distributions on the wire, canonicalised so both sides hold the same q.

Distributional exactness needs the verifier to use *exactly* the distribution each draft token
was sampled from. A lossy wire dtype (bf16/fp16) would break that if the draft sampled from
fp32 q and shipped a rounded copy. So the draft samples from ``canonical(q)``: q encoded to the
wire dtype, decoded, and renormalised in fp32 — the very computation the verifier applies to
the received bytes. Same bytes, same ops, bit-identical q on both sides.
"""

from __future__ import annotations

import torch

from saguaro.v1 import speculation_pb2 as pb

WIRE_DTYPES = {
    pb.DTYPE_UNSPECIFIED: torch.float32,
    pb.DTYPE_FLOAT32: torch.float32,
    pb.DTYPE_BFLOAT16: torch.bfloat16,
    pb.DTYPE_FLOAT16: torch.float16,
}


def _normalise(probs: torch.Tensor) -> torch.Tensor:
    return probs / probs.sum(dim=-1, keepdim=True)


def canonical(probs: torch.Tensor, wire_dtype: int) -> torch.Tensor:
    """The fp32 distribution the verifier will reconstruct from ``encode(probs)``."""
    return _normalise(probs.to(WIRE_DTYPES[wire_dtype]).float())


def encode(probs: torch.Tensor, wire_dtype: int) -> bytes:
    """Little-endian bytes of ``probs`` ([K, V]) in the wire dtype."""
    return probs.to(WIRE_DTYPES[wire_dtype]).contiguous().view(torch.uint8).numpy().tobytes()


def decode(payload: bytes, wire_dtype: int, rows: int, vocab: int) -> torch.Tensor:
    """Inverse of ``encode`` followed by the canonical renormalisation: [rows, vocab] fp32.

    The bytes come from another process: anything that is not a probability law (an unknown
    dtype, a wrong length, NaN, infinities, negative or all-zero rows) is a ValueError, so the
    target ignores that proposal instead of verifying against garbage.
    """
    dtype = WIRE_DTYPES.get(wire_dtype)
    if dtype is None:
        raise ValueError(f"proposal payload has an unknown dtype {wire_dtype}")
    expected = rows * vocab * torch.empty((), dtype=dtype).element_size()
    if len(payload) != expected:
        raise ValueError(f"proposal payload has {len(payload)} bytes, expected {expected} ({rows}x{vocab} {dtype})")
    raw = torch.frombuffer(bytearray(payload), dtype=dtype).view(rows, vocab).float()
    sums = raw.sum(dim=-1, keepdim=True)
    # non-negative entries with a finite positive sum are all finite; NaN fails every comparison
    if not (bool((raw.min() >= 0) & torch.isfinite(sums).all() & (sums > 0).all())):
        raise ValueError("proposal payload is not a probability law (NaN, infinite, negative or all-zero rows)")
    return raw / sums
