"""The laws speculative decoding draws from: p, the proposal q', and exact categorical draws.

Pure tensor functions shared by the draft (which samples its proposal from q') and the
verifier (which must see the very same p and q' bit for bit): the rejection rule of
:mod:`saguaro.speculative.verification` is exact only relative to the distributions both
sides computed here (docs/speculation.md, "Why the output is exact"). No hidden global RNG:
every random draw is an explicit uniform.

Semantics chosen here (documented once, relied upon by the tests):

* Ties rank to the lowest index (:func:`topk_indices`), never to ``torch.topk``'s unspecified
  pick, so the draft and the verifier select the same top tokens from the same q.
* Inverse-CDF draws pick the first index j with positive mass and cumsum[j] > u*total, i.e.
  token j owns the half-open interval [cumsum[j-1], cumsum[j]) of length mass[j]; a
  zero-mass token owns an empty interval and can never be returned, even for u == 0.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

__all__ = [
    "broadcast_temperature",
    "probs_from_logits",
    "proposal_probs",
    "saguaro_rescale",
    "sample_inverse_cdf",
    "topk_indices",
]

_INT32_LOW_BITS = 0x7FFFFFFF


# --------------------------------------------------------------------------------------
# deterministic ranking
# --------------------------------------------------------------------------------------


def _ordered_bits(values: Tensor) -> Tensor:
    """int32 keys whose order is the fp32 order of ``values`` (exact for bf16/fp16 inputs);
    -0.0 is folded into +0.0, and NaNs sit where their bits put them."""
    f = values.to(torch.float32) + 0.0  # fresh contiguous copy; canonicalises -0.0
    bits = f.view(torch.int32)
    return torch.where(bits < 0, bits ^ _INT32_LOW_BITS, bits)


def topk_indices(values: Tensor, k: int, allowed: Tensor | None = None) -> Tensor:
    """Indices of the k largest entries of each row, ordered by value desc, ties lowest index.

    ``torch.topk`` does not specify which of several equal values it returns. Both the
    Saguaro rescale (which must select the same top tokens on the draft and on the verifier,
    else q' differs between the two sides and exactness breaks) and the fork rule (which
    should be reproducible) need a fixed tie rule. Values are ranked by their ordered fp32
    bits (int32, the width of the values themselves): a ``topk`` finds each row's k-th key,
    every entry above it is taken, and the lowest-index entries equal to it fill the rest;
    the picks are then sorted by key, stably. ``allowed`` (bool, the shape of ``values``):
    entries outside it rank below every entry in it (the fork's excluded draft token, which
    a depth with fewer branches than the widest never reaches). Returns LongTensor[..., k].
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if values.dim() < 1 or k > values.shape[-1]:
        raise ValueError(f"k={k} exceeds the last dimension of shape {tuple(values.shape)}")
    if k == 0 or values.numel() == 0:
        return torch.zeros(*values.shape[:-1], k, dtype=torch.long, device=values.device)
    keys = _ordered_bits(values)
    if allowed is not None:
        keys = keys.masked_fill(~allowed, torch.iinfo(torch.int32).min)
    kth = keys.topk(k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    above = keys > kth
    tied = keys == kth
    room = k - above.sum(dim=-1, keepdim=True)
    if bool((tied.sum(dim=-1, keepdim=True) > room).any()):  # more ties than room: the lowest indices
        if allowed is None:
            tied &= tied.cumsum(dim=-1) <= room
        else:  # allowed entries before the others
            first, rest = tied & allowed, tied & ~allowed
            first &= first.cumsum(dim=-1) <= room
            tied = first | (rest & (rest.cumsum(dim=-1) <= room - first.sum(dim=-1, keepdim=True)))
    picked = (above | tied).nonzero()[:, -1].view(*keys.shape[:-1], k)  # ascending index
    if allowed is not None:  # among equal keys, allowed entries first
        picked = picked.gather(-1, (~allowed.gather(-1, picked)).to(torch.uint8).sort(dim=-1, stable=True).indices)
    order = keys.gather(-1, picked).sort(dim=-1, descending=True, stable=True).indices
    return picked.gather(-1, order)


# --------------------------------------------------------------------------------------
# distributions
# --------------------------------------------------------------------------------------


def broadcast_temperature(
    temperature: Tensor | float, lead: torch.Size | tuple[int, ...], device: torch.device
) -> Tensor:
    """Temperature as a float32 tensor of shape ``lead`` (= ``logits.shape[:-1]``).

    Accepts a Python number, a 0-d tensor, or a tensor whose shape is a prefix of ``lead``
    (e.g. per-sequence ``[B]`` for ``[B, K, V]`` logits).
    """
    lead = tuple(lead)
    t = torch.as_tensor(temperature, dtype=torch.float32, device=device)
    if t.dim() > len(lead) or tuple(t.shape) != lead[: t.dim()]:
        raise ValueError(
            f"temperature shape {tuple(t.shape)} must be a prefix of logits.shape[:-1] = {lead}"
        )
    if bool((t < 0).any()) or bool(torch.isnan(t).any()):
        raise ValueError("temperature must be >= 0 (0 means greedy / one-hot argmax)")
    t = t.reshape(tuple(t.shape) + (1,) * (len(lead) - t.dim()))
    return t.expand(lead)


def probs_from_logits(logits: Tensor, temperature: Tensor | float) -> Tensor:
    """fp32 ``softmax(logits / T)`` over the last dim; rows with T == 0 are one-hot argmax.

    The one-hot row uses ``torch.argmax`` (ties resolve to the lowest index), so the T == 0
    distribution is the same degenerate law that greedy verification compares against.
    Exactness of sampling verification is relative to *this* fp32 p (and the q produced by
    the same function on the draft logits), so both sides must call it.

    Args:
        logits: Tensor[..., V] (any float dtype).
        temperature: float, 0-d tensor, or tensor whose shape is a prefix of
            ``logits.shape[:-1]``; every value must be >= 0.
    Returns:
        float32 Tensor[..., V] whose rows sum to 1.
    """
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have a non-empty last dim, got {tuple(logits.shape)}")
    t = broadcast_temperature(temperature, logits.shape[:-1], logits.device)
    greedy = t == 0
    x = logits.to(torch.float32)
    safe_t = torch.where(greedy, torch.ones_like(t), t)
    soft = torch.softmax(x / safe_t.unsqueeze(-1), dim=-1)
    one_hot = torch.zeros_like(soft).scatter_(-1, x.argmax(dim=-1, keepdim=True), 1.0)
    return torch.where(greedy.unsqueeze(-1), one_hot, soft)


def saguaro_rescale(probs: Tensor, fan_out: int, downweight: float) -> Tensor:
    """Saguaro (cache-aware) proposal q' ∝ C·q on the top-(F+1) tokens of q, q elsewhere.

    Why this stays exact: q' is an ordinary distribution with the same support as q
    (C > 0), the draft draws its tokens from q' and the verifier uses q' as the proposal,
    so the rejection lemma (:mod:`saguaro.speculative.verification`) applies unchanged. The
    effect is only on *which* tokens the residual max(0, p - q') favours (more mass on the
    forked top tokens → more hits).
    The selection is deterministic (value desc, ties lowest index, :func:`topk_indices`) so the
    draft and the verifier pick the same top set from the same q.

    Args:
        probs: Tensor[..., V], rows are probability vectors.
        fan_out: uniform fan-out F (>= 0); the top ``min(F + 1, V)`` tokens are downweighted.
        downweight: C in (0, 1]. C == 1 returns ``probs`` itself (bitwise unchanged).
    Returns:
        Tensor[..., V] of the same dtype, rows renormalised to sum to 1.
    """
    if not isinstance(fan_out, int) or isinstance(fan_out, bool) or fan_out < 0:
        raise ValueError(f"fan_out must be a non-negative int, got {fan_out!r}")
    if isinstance(downweight, bool) or not isinstance(downweight, Real):
        raise ValueError(f"downweight must be a real number in (0, 1], got {downweight!r}")
    c = float(downweight)
    if not math.isfinite(c) or not 0.0 < c <= 1.0:
        raise ValueError(f"downweight must be in (0, 1], got {downweight!r}")
    if probs.dim() < 1 or probs.shape[-1] < 1:
        raise ValueError(f"probs must have a non-empty last dim, got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be a floating tensor, got {probs.dtype}")
    if c == 1.0:
        return probs
    k = min(fan_out + 1, probs.shape[-1])
    top = topk_indices(probs, k)
    scaled = probs.clone()
    scaled.scatter_(-1, top, probs.gather(-1, top) * c)
    return scaled / scaled.sum(dim=-1, keepdim=True)


def proposal_probs(
    logits: Tensor,
    temperature: Tensor | float,
    *,
    fan_out: int = 0,
    downweight: float = 1.0,
) -> Tensor:
    """The proposal law q' = saguaro_rescale(probs_from_logits(logits, T), F, C).

    The single definition of "the distribution a draft token was drawn from": the draft
    samples from it and the verifier passes it as ``draft_probs``, so the two agree
    bit-for-bit given the same logits. ``downweight=1`` is plain sampling.
    """
    return saguaro_rescale(probs_from_logits(logits, temperature), fan_out, downweight)


def sample_inverse_cdf(probs: Tensor, uniforms: Tensor) -> Tensor:
    """Exact-in-law categorical draw from (possibly unnormalised) rows via inverse CDF.

    Returns the first index j with ``probs[j] > 0`` and ``cumsum[j] > u * total`` (float64),
    clamped to the last positive-mass index if rounding leaves none (e.g. u == 1). Token j
    thus owns [cumsum[j-1], cumsum[j]), an interval of length probs[j]: P(j) = probs[j] /
    total for u ~ U[0, 1), and zero-mass tokens (empty interval, also excluded explicitly)
    are never returned. Rows without any positive mass return index 0 (invalid input).

    Args:
        probs: Tensor[..., V], non-negative.
        uniforms: Tensor[...] in [0, 1), one per row.
    Returns:
        LongTensor[...].
    """
    if probs.dim() < 1 or probs.shape[-1] < 1:
        raise ValueError(f"probs must have a non-empty last dim, got {tuple(probs.shape)}")
    if tuple(uniforms.shape) != tuple(probs.shape[:-1]):
        raise ValueError(
            f"uniforms shape {tuple(uniforms.shape)} must equal probs.shape[:-1] "
            f"= {tuple(probs.shape[:-1])}"
        )
    v = probs.shape[-1]
    w = probs.to(torch.float64)
    cdf = w.cumsum(dim=-1)
    threshold = uniforms.to(device=w.device, dtype=torch.float64).unsqueeze(-1) * cdf[..., -1:]
    positive = w > 0
    index = torch.arange(v, device=w.device)
    first = torch.where((cdf > threshold) & positive, index, v).amin(dim=-1)
    last = torch.where(positive, index, -1).amax(dim=-1)
    return torch.where(first < v, first, last).clamp_min(0)
