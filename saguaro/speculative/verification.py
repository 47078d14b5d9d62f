"""Verification math for speculative (and speculative speculative) decoding.

Pure tensor functions, no model code and no hidden global RNG: every random draw is an
explicit input tensor (or comes from an explicitly passed :class:`torch.Generator`), so
callers own separate generators per role (draft sampling / acceptance / residual,
docs/speculation.md, "Why the output is exact") and tests can integrate over the randomness exactly.

Why the rules below are exact (docs/speculation.md, "Why the output is exact"):

* **Greedy** (target temperature 0): a draft token is committed only if it equals the
  target argmax at its row, and the extra token is the target argmax after the accepted
  prefix. By induction every committed token is the target's greedy choice given the
  committed prefix, whatever produced the proposal (JIT, cache, random junk). The draft
  only changes *how many* tokens a round commits, never *which*.
* **Sampling** (temperature > 0): for a token s drawn from q, accept with probability
  min(1, p(s)/q(s)); on rejection draw from R = norm(max(0, p - q)). Then
  P(emit x) = q(x) min(1, p(x)/q(x)) + (1 - sum_y min(p, q)(y)) R(x)
            = min(p, q)(x) + max(0, p - q)(x) = p(x).
  Each accepted token becomes the next row's context, so chaining the lemma over rows gives
  the exact target joint law. On full acceptance the bonus is drawn from p_K directly.
* The lemma needs q to be *exactly* the law the proposal was drawn from. Hence the Saguaro
  rescale must be applied identically on both sides: the draft samples from q' and
  the verifier uses the same q' (q' is a legitimate proposal, so the lemma still applies).
  Proposals that are not q-samples at all (fast-backup junk) must not go through
  the ratio test: those rows are forced to n = 0 and r' ~ p_0, which is trivially exact.
  (At T = 0 no forcing is needed: the greedy comparison is exact for any proposal.)
* Speculating on predicted outcomes keeps exactness because which cached branch is
  looked up depends only on the target's randomness, never on the proposal's values.

Semantics chosen here (documented once, relied upon by the tests):

* Acceptance uses the strict test ``u < p(s)/q(s)`` (computed as ``u*q < p`` in float64)
  with ``u`` uniform on [0, 1). For a continuous uniform this has the same law as the
  textbook ``u <= min(1, p/q)``; the strict form additionally guarantees that a token with
  p(s) = 0 is never accepted even when a float uniform is exactly 0.
* A token with q(s) = 0 is always rejected. Under a correct proposal the event has
  probability 0 (q could not have produced s), so exactness is unaffected; for an
  inconsistent proposal it means such a token can never be injected into the output.
* Every distribution (p, q', the residual draw) comes from
  :mod:`saguaro.speculative.distributions`, which documents its tie and inverse-CDF rules.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saguaro.speculative.distributions import broadcast_temperature, probs_from_logits, sample_inverse_cdf

__all__ = [
    "VerifyResult",
    "draw_verification_uniforms",
    "greedy_verify",
    "rejection_verify",
    "verify",
]


class VerifyResult(NamedTuple):
    """Outcome of one verification round per row (unpacks as ``(accepted, next_token)``)."""

    accepted: Tensor
    """LongTensor[B]: n, the number of accepted draft tokens (0..K)."""
    next_token: Tensor
    """LongTensor[B]: r', the correction (n < K) or bonus (n = K) token."""


def _check_int_tokens(draft_tokens: Tensor, b: int, k: int) -> None:
    if draft_tokens.dtype.is_floating_point or draft_tokens.dtype == torch.bool:
        raise ValueError(f"draft_tokens must be an integer tensor, got {draft_tokens.dtype}")
    if tuple(draft_tokens.shape) != (b, k):
        raise ValueError(f"draft_tokens shape {tuple(draft_tokens.shape)} != (B, K) = {(b, k)}")


def _check_target(target: Tensor, name: str) -> tuple[int, int, int]:
    if target.dim() != 3 or target.shape[1] < 1 or target.shape[2] < 1:
        raise ValueError(f"{name} must be [B, K+1, V] with K+1 >= 1, got {tuple(target.shape)}")
    b, k1, v = target.shape
    return b, k1 - 1, v


def greedy_verify(target_logits: Tensor, draft_tokens: Tensor) -> VerifyResult:
    """Greedy acceptance: n = longest prefix with s_{i+1} == argmax p_i; r' = argmax p_n.

    Exact for *any* proposal: only tokens equal to the target's greedy choice are
    ever committed, and r' is the greedy choice after them. Ties resolve to the lowest
    index (``torch.argmax``), identical to a greedy AR step on the same logits.

    Args:
        target_logits: Tensor[B, K+1, V] (logits or probabilities; argmax is the same).
        draft_tokens: LongTensor[B, K].
    """
    b, k, _ = _check_target(target_logits, "target_logits")
    _check_int_tokens(draft_tokens, b, k)
    best = target_logits.argmax(dim=-1)  # [B, K+1]
    match = draft_tokens.to(device=best.device, dtype=torch.long) == best[:, :k]
    accepted = match.long().cumprod(dim=-1).sum(dim=-1)
    next_token = best.gather(1, accepted.unsqueeze(1)).squeeze(1)
    return VerifyResult(accepted, next_token)


def _rejection_core(
    target_probs: Tensor,
    draft_probs: Tensor,
    draft_tokens: Tensor,
    uniforms: Tensor,
    residual_uniforms: Tensor,
    proposal_is_sample: Tensor | None,
) -> VerifyResult:
    """Vectorised rejection sampling; rows with ``proposal_is_sample == False`` see q ≡ 0.

    With q ≡ 0 the first token is rejected (q(s) = 0 rule) and the residual max(0, p_0 - 0)
    is p_0 itself, so such rows get exactly n = 0, r' ~ p_0 without a separate code path.
    """
    b, k, _ = target_probs.shape[0], target_probs.shape[1] - 1, target_probs.shape[2]
    device = target_probs.device
    rows = torch.arange(b, device=device)
    if k == 0:
        accepted = torch.zeros(b, dtype=torch.long, device=device)
        dist = target_probs[:, 0].to(torch.float64)
    else:
        tok = draft_tokens.to(device=device, dtype=torch.long).unsqueeze(-1)
        p_tok = target_probs[:, :k].gather(-1, tok).squeeze(-1).to(torch.float64)
        q_tok = draft_probs.gather(-1, tok).squeeze(-1).to(torch.float64)
        uses_q = torch.ones(b, dtype=torch.bool, device=device)
        if proposal_is_sample is not None:
            uses_q = proposal_is_sample.to(device=device, dtype=torch.bool)
            q_tok = torch.where(uses_q.unsqueeze(-1), q_tok, 0.0)
        u = uniforms.to(device=device, dtype=torch.float64)
        # accept iff u < p/q (q > 0 only): same law as u <= min(1, p/q) for continuous u.
        accept = (q_tok > 0) & (u * q_tok < p_tok)
        accepted = accept.long().cumprod(dim=-1).sum(dim=-1)
        p_n = target_probs[rows, accepted].to(torch.float64)
        q_n = draft_probs[rows, accepted.clamp(max=k - 1)].to(torch.float64)
        # n == K: bonus from p_K (q_n := 0); forced rows: residual is p_0 itself.
        q_n = torch.where((uses_q & (accepted < k)).unsqueeze(-1), q_n, 0.0)
        residual = (p_n - q_n).clamp_min(0.0)  # exact difference of fp32 values in fp64
        has_mass = residual.sum(dim=-1, keepdim=True) > 0
        dist = torch.where(has_mass, residual, p_n)
    next_token = sample_inverse_cdf(dist, residual_uniforms.to(device))
    return VerifyResult(accepted, next_token)


def rejection_verify(
    target_probs: Tensor,
    draft_probs: Tensor,
    draft_tokens: Tensor,
    uniforms: Tensor,
    residual_uniforms: Tensor,
) -> VerifyResult:
    """Standard speculative sampling (Leviathan et al. / Chen et al.).

    Accept s_{i+1} iff ``u_i < p_i(s)/q_i(s)`` (and q_i(s) > 0); the first rejection stops.
    At a rejection row n draw r' from norm(max(0, p_n - q_n)) (p_n if that sums to 0); on
    full acceptance draw the bonus from p_K. Exact because P(emit x) = min(p, q)(x) +
    max(0, p - q)(x) = p(x) at every row and accepted tokens become the next row's context.
    A token with q(s) = 0 is always rejected (it cannot have been drawn from q; probability-0
    event for a correct proposal). A rejected s has R(s) = 0 since rejection requires
    q(s) > p(s) — the reason forks exclude s_{j+1}.

    Args:
        target_probs: Tensor[B, K+1, V], p_0..p_K (e.g. from
            :func:`~saguaro.speculative.distributions.probs_from_logits`).
        draft_probs: Tensor[B, K, V], the exact law each draft token was drawn from.
        draft_tokens: LongTensor[B, K].
        uniforms: Tensor[B, K] in [0, 1), acceptance uniforms (one per position).
        residual_uniforms: Tensor[B] in [0, 1), drives the residual / bonus inverse-CDF draw.
    Returns:
        ``VerifyResult(accepted: LongTensor[B], next_token: LongTensor[B])``.
    """
    b, k, v = _check_target(target_probs, "target_probs")
    if tuple(draft_probs.shape) != (b, k, v):
        raise ValueError(f"draft_probs shape {tuple(draft_probs.shape)} != (B, K, V) = {(b, k, v)}")
    _check_int_tokens(draft_tokens, b, k)
    if tuple(uniforms.shape) != (b, k):
        raise ValueError(f"uniforms shape {tuple(uniforms.shape)} != (B, K) = {(b, k)}")
    if tuple(residual_uniforms.shape) != (b,):
        raise ValueError(
            f"residual_uniforms shape {tuple(residual_uniforms.shape)} != (B,) = {(b,)}"
        )
    return _rejection_core(
        target_probs, draft_probs, draft_tokens, uniforms, residual_uniforms, None
    )


def draw_verification_uniforms(
    batch: int,
    k: int,
    generator: torch.Generator,
    *,
    residual_generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Fresh verification randomness from explicit generators (never the global RNG).

    Returns ``(uniforms[B, K], residual_uniforms[B])``, U[0, 1) on the generator's device.
    The acceptance uniforms come from ``generator``; the residual/bonus uniforms come from
    ``residual_generator`` when given (separate streams per role), else from
    ``generator`` right after the acceptance uniforms. Independence of these draws from the
    draft's sampling noise is what speculating on predicted outcomes relies on. float64 by default so that tiny
    probabilities are resolved well beyond fp32 granularity.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 0:
        raise ValueError(f"batch must be a non-negative int, got {batch!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator must be an explicitly seeded torch.Generator")
    if residual_generator is not None and not isinstance(residual_generator, torch.Generator):
        raise ValueError("residual_generator must be a torch.Generator or None")
    uniforms = torch.rand(batch, k, generator=generator, device=generator.device, dtype=dtype)
    rgen = generator if residual_generator is None else residual_generator
    residual = torch.rand(batch, generator=rgen, device=rgen.device, dtype=dtype)
    return uniforms, residual


def verify(
    target_logits: Tensor,
    draft_tokens: Tensor,
    draft_probs: Tensor | None,
    target_temperature: Tensor | float,
    proposal_is_sample: Tensor | None = None,
    *,
    uniforms: Tensor | None = None,
    residual_uniforms: Tensor | None = None,
    generator: torch.Generator | None = None,
    residual_generator: torch.Generator | None = None,
) -> VerifyResult:
    """Verify a mixed batch: greedy rows, sampled rows and non-sample (junk) proposals.

    Per row b:

    * ``T_b == 0``: :func:`greedy_verify` on the logits, whatever ``draft_probs`` and
      ``proposal_is_sample`` say. Greedy comparison is exact for any proposal, so
      junk rows are *not* forced to n = 0 here: a junk token that equals the argmax is a
      correct token and committing it is free speed.
    * ``T_b > 0`` and ``proposal_is_sample[b]``: :func:`rejection_verify` with
      p = softmax(logits / T_b) (fp32) and q = ``draft_probs[b]`` (exactly the law the
      tokens were drawn from, Saguaro rescale included — see
      :func:`~saguaro.speculative.distributions.proposal_probs`).
    * ``T_b > 0`` and not ``proposal_is_sample[b]`` (fast-backup junk): forced
      n = 0 and r' ~ p_0 — trivially exact, and the ratio test would be meaningless for a
      token not drawn from q.

    Randomness: pass ``uniforms`` [B, K] and ``residual_uniforms`` [B] explicitly, or a
    ``generator`` (and optionally a separate ``residual_generator``) for
    :func:`draw_verification_uniforms`. Uniforms are consumed for every row (greedy rows
    ignore them) so the streams do not depend on row types. Randomness may be omitted only
    if every row is greedy; ``draft_probs`` may be ``None`` only if no row needs q (both
    checks read the temperatures on the host).

    Args:
        target_logits: Tensor[B, K+1, V].
        draft_tokens: LongTensor[B, K].
        draft_probs: Tensor[B, K, V] or None.
        target_temperature: float or Tensor[B] (>= 0).
        proposal_is_sample: BoolTensor[B]; None means every proposal was sampled from q.
    Returns:
        ``VerifyResult(accepted: LongTensor[B], next_token: LongTensor[B])``.
    """
    b, k, v = _check_target(target_logits, "target_logits")
    _check_int_tokens(draft_tokens, b, k)
    device = target_logits.device
    temps = broadcast_temperature(target_temperature, (b,), device)  # [B]
    greedy_rows = temps == 0
    if proposal_is_sample is None:
        is_sample = torch.ones(b, dtype=torch.bool, device=device)
    else:
        if tuple(proposal_is_sample.shape) != (b,):
            raise ValueError(
                f"proposal_is_sample shape {tuple(proposal_is_sample.shape)} != (B,) = {(b,)}"
            )
        is_sample = proposal_is_sample.to(device=device, dtype=torch.bool)
    if draft_probs is None:
        if bool((~greedy_rows & is_sample).any()):
            raise ValueError(
                "draft_probs is required: some rows have target temperature > 0 and a proposal "
                "sampled from q"
            )
        q = torch.zeros((), dtype=torch.float32, device=device).expand(b, k, v)
    else:
        if tuple(draft_probs.shape) != (b, k, v):
            raise ValueError(
                f"draft_probs shape {tuple(draft_probs.shape)} != (B, K, V) = {(b, k, v)}"
            )
        q = draft_probs.to(device)

    if (uniforms is None) != (residual_uniforms is None):
        raise ValueError("pass both uniforms and residual_uniforms, or neither")
    if uniforms is not None and (generator is not None or residual_generator is not None):
        raise ValueError("pass either explicit uniforms or generators, not both")
    if uniforms is None:
        if generator is not None:
            uniforms, residual_uniforms = draw_verification_uniforms(
                b, k, generator, residual_generator=residual_generator
            )
        elif bool((~greedy_rows).any()):
            raise ValueError(
                "rows with target temperature > 0 need randomness: pass uniforms and "
                "residual_uniforms, or an explicit torch.Generator"
            )
        else:
            uniforms = torch.zeros(b, k, dtype=torch.float64, device=device)
            residual_uniforms = torch.zeros(b, dtype=torch.float64, device=device)
    assert residual_uniforms is not None
    if tuple(uniforms.shape) != (b, k):
        raise ValueError(f"uniforms shape {tuple(uniforms.shape)} != (B, K) = {(b, k)}")
    if tuple(residual_uniforms.shape) != (b,):
        raise ValueError(
            f"residual_uniforms shape {tuple(residual_uniforms.shape)} != (B,) = {(b,)}"
        )

    p = probs_from_logits(target_logits, temps)
    sampled = _rejection_core(
        p, q, draft_tokens, uniforms.to(device), residual_uniforms.to(device), is_sample
    )
    greedy = greedy_verify(target_logits, draft_tokens)
    return VerifyResult(
        torch.where(greedy_rows, greedy.accepted, sampled.accepted),
        torch.where(greedy_rows, greedy.next_token, sampled.next_token),
    )
