"""Triton kernel: fused verification of a batch of rows (acceptance + residual/bonus draw).

One program per row. It reproduces ``saguaro.speculative.verification`` operation by
operation, so integer outputs are bit-identical to the torch reference:

* acceptance: ``accept_i = (q_i(s) > 0) & (u_i * q_i(s) < p_i(s))`` in float64 on the
  fp32 probabilities, n = first rejected position (K if none);
* the draw at row n: ``w = max(p_n - q_n, 0)`` in float64 (``p_n`` itself when that has no
  mass, and ``q_n = 0`` on full acceptance or for junk proposals), then inverse CDF: the
  first index with ``w > 0`` and ``cumsum(w) > u * total``, else the last positive index.

The cumulative sum is what makes exactness delicate: torch's CPU ``cumsum`` adds left to
right, so each block's running total is folded into the block's *first element* before the
in-block scan, ``(carry + w_0) + w_1 + ...`` — the same association as the sequential scan.
Under the interpreter the in-block scan is sequential too (numpy), hence bit-exact; on a GPU
``tl.cumsum`` is a parallel scan whose float64 rounding may differ in the last ulp, which
can only move a draw whose threshold lies within ~1e-16 of a CDF step (torch's own CUDA
cumsum is not sequential either). Block totals are read as the scan's last element, never
as a ``tl.sum`` of the block (a tree reduction rounds differently).

Greedy rows (target temperature 0) need no argmax: their p is exactly one-hot at the target
argmax (``probs_from_logits``), so ``s`` is accepted iff ``p(s) > 0`` (u := 0, q(s) := 1),
and a rejected ``s`` has ``p_n(s) = 0``, so the residual is ``p_n`` itself, whose only
positive entry — the argmax — is what the inverse CDF returns for any uniform. That is the
reference's ``greedy_verify`` at a fraction of the memory traffic (K scalar loads instead of
K+1 full argmax passes).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from saguaro.kernels.dispatch import record_launch

# Proposal kind per row. JUNK: not a q-sample (fast-backup fill), verified with q ≡ 0.
GREEDY = tl.constexpr(0)
SAMPLE = tl.constexpr(1)
JUNK = tl.constexpr(2)


@triton.jit
def _load_row(p_row, q_row, stride_pv, stride_qv, idx, V, use_q):
    """A block of p_n and q_n as float64; q_n = 0 (and is not read) unless ``use_q``.

    Scalar conditions enter masks as a bound (``idx < q_len``), not as ``mask & flag``:
    Triton 3.9's interpreter mistypes a block mask and-ed with a splatted scalar flag.
    """
    p = tl.load(p_row + idx * stride_pv, mask=idx < V, other=0.0).to(tl.float64)
    q_len = tl.where(use_q, V, 0)
    q = tl.load(q_row + idx * stride_qv, mask=idx < q_len, other=0.0).to(tl.float64)
    return p, q


@triton.jit
def _scan(w, carry, offs, BLOCK: tl.constexpr):
    """Running CDF of a block continuing ``carry``, and its new carry (the last element)."""
    cdf = tl.cumsum(tl.where(offs == 0, w + carry, w), 0)
    return cdf, tl.sum(tl.where(offs == BLOCK - 1, cdf, 0.0), 0)


@triton.jit
def _verify_kernel(
    p_ptr, q_ptr, tok_ptr, u_ptr, ru_ptr, kind_ptr, n_ptr, r_ptr,
    stride_pb, stride_pk, stride_pv,
    stride_qb, stride_qk, stride_qv,
    stride_tb, stride_tk, stride_ub, stride_uk,
    V,
    K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    kind = tl.load(kind_ptr + row)
    greedy = kind == GREEDY
    sample = kind == SAMPLE

    # Acceptance: all K positions at once, n = first rejection.
    pos = tl.arange(0, BLOCK_K)
    in_k = pos < K
    tok = tl.load(tok_ptr + row * stride_tb + pos * stride_tk, mask=in_k, other=0)
    p_tok = tl.load(p_ptr + row * stride_pb + pos * stride_pk + tok * stride_pv, mask=in_k, other=0.0)
    q_len = tl.where(sample, K, 0)  # a bound, not a flag: see _load_row
    q_tok = tl.load(q_ptr + row * stride_qb + pos * stride_qk + tok * stride_qv, mask=pos < q_len, other=0.0)
    u = tl.load(u_ptr + row * stride_ub + pos * stride_uk, mask=in_k, other=0.0).to(tl.float64)
    q_tok = tl.where(greedy, 1.0, q_tok.to(tl.float64))
    u = tl.where(greedy, 0.0, u)
    accept = (q_tok > 0) & (u * q_tok < p_tok.to(tl.float64))
    n = tl.min(tl.where(in_k & ~accept, pos, K), 0)

    # Row-n totals: of the residual max(p_n - q_n, 0) and of p_n (used if the residual is 0).
    p_row = p_ptr + row * stride_pb + n * stride_pk
    q_row = q_ptr + row * stride_qb + n * stride_qk
    use_q = sample & (n < K)
    offs = tl.arange(0, BLOCK_V)
    total_res = tl.zeros((), tl.float64)
    total_p = tl.zeros((), tl.float64)
    for start in range(0, V, BLOCK_V):
        idx = start + offs
        p, q = _load_row(p_row, q_row, stride_pv, stride_qv, idx, V, use_q)
        _, total_res = _scan(tl.maximum(p - q, 0.0), total_res, offs, BLOCK_V)
        _, total_p = _scan(p, total_p, offs, BLOCK_V)
    use_residual = total_res > 0
    threshold = tl.load(ru_ptr + row).to(tl.float64) * tl.where(use_residual, total_res, total_p)

    # Inverse CDF, stopping after the block that contains the draw.
    carry = tl.zeros((), tl.float64)
    first = tl.zeros((), tl.int32) + V
    last = tl.full((), -1, tl.int32)
    start = tl.zeros((), tl.int32)
    while (start < V) & (first == V):
        idx = start + offs
        p, q = _load_row(p_row, q_row, stride_pv, stride_qv, idx, V, use_q)
        w = tl.where(use_residual, tl.maximum(p - q, 0.0), p)
        cdf, carry = _scan(w, carry, offs, BLOCK_V)
        positive = w > 0  # lanes past V load 0
        first = tl.minimum(first, tl.min(tl.where(positive & (cdf > threshold), idx, V), 0))
        last = tl.maximum(last, tl.max(tl.where(positive, idx, -1), 0))
        start += BLOCK_V
    token = tl.maximum(tl.where(first < V, first, last), 0)
    tl.store(n_ptr + row, n.to(tl.int64))
    tl.store(r_ptr + row, token.to(tl.int64))


def verify_triton(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    draft_tokens: torch.Tensor,
    uniforms: torch.Tensor,
    residual_uniforms: torch.Tensor,
    greedy: torch.Tensor,
    is_sample: torch.Tensor,
    block_v: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch on validated inputs; returns ``(accepted, next_token)``, LongTensor[B] each.

    target_probs [B, K+1, V] (greedy rows one-hot), draft_probs [B, K, V] (read only on
    sampled rows), draft_tokens [B, K], uniforms [B, K], residual_uniforms [B]; greedy and
    is_sample: BoolTensor[B]. ``block_v`` is the vocabulary tile (tests shrink it to cross
    tile boundaries at small V).
    """
    batch, k1, vocab = target_probs.shape
    accepted = torch.empty(batch, dtype=torch.long, device=target_probs.device)
    next_token = torch.empty_like(accepted)
    if batch == 0:
        return accepted, next_token
    kind = torch.where(greedy, GREEDY.value, torch.where(is_sample, SAMPLE.value, JUNK.value)).to(torch.int8)
    record_launch("verify")
    _verify_kernel[(batch,)](
        target_probs, draft_probs, draft_tokens, uniforms, residual_uniforms, kind, accepted, next_token,
        *target_probs.stride(), *draft_probs.stride(), *draft_tokens.stride(), *uniforms.stride(),
        vocab,
        K=k1 - 1, BLOCK_K=triton.next_power_of_2(max(k1 - 1, 1)), BLOCK_V=min(block_v, triton.next_power_of_2(vocab)),
    )
    return accepted, next_token
