"""Fused verification: n and r' for every row of a round in one launch (docs/speculation.md, "Why the output is exact").

:func:`fused_verify` picks the implementation: on CUDA tensors the Triton kernel
(``saguaro.kernels.verify_triton``), else the torch reference,
:func:`saguaro.speculative.verification.verify`. The Triton path computes the same p
(:func:`~saguaro.speculative.distributions.probs_from_logits`, shared so both sides see
identical fp32 probabilities) and hands everything after it — acceptance tests, residual,
inverse-CDF draw — to one kernel that reads only the rows it needs instead of materialising
float64 copies of the whole [B, K+1, V] block. The dispatcher lives here, beside its
reference, so that ``saguaro.kernels`` imports nothing above it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saguaro.kernels.dispatch import Backend, use_triton
from saguaro.speculative.distributions import probs_from_logits
from saguaro.speculative.verification import VerifyResult, verify


def fused_verify(
    target_logits: Tensor,
    draft_tokens: Tensor,
    draft_probs: Tensor | None,
    target_temperature: Tensor | float,
    uniforms: Tensor,
    residual_uniforms: Tensor,
    proposal_is_sample: Tensor | None = None,
    *,
    backend: Backend = "auto",
) -> VerifyResult:
    """:func:`~saguaro.speculative.verification.verify` with explicit uniforms, fused on CUDA.

    Same rows, same rules, same integer outputs: T = 0 rows greedy, sampled rows by the
    rejection rule with ``draft_probs`` as q, junk rows (``proposal_is_sample`` False)
    forced to n = 0 and r' ~ p_0. Draw ``uniforms`` [B, K] and ``residual_uniforms`` [B]
    with :func:`~saguaro.speculative.verification.draw_verification_uniforms`.
    The Triton path takes fp32/bf16/fp16 logits (greedy rows rely on the fp32 one-hot p
    having its 1 at the logits' argmax, which float64 logits could break by rounding).
    """
    if not use_triton(backend, target_logits.device):
        return verify(
            target_logits, draft_tokens, draft_probs, target_temperature, proposal_is_sample,
            uniforms=uniforms, residual_uniforms=residual_uniforms,
        )
    _check_shapes(target_logits, draft_tokens, draft_probs, uniforms, residual_uniforms)
    b = target_logits.shape[0]
    device = target_logits.device
    temps = torch.as_tensor(target_temperature, dtype=torch.float32, device=device).expand(b)
    greedy = temps == 0
    is_sample = (
        torch.ones(b, dtype=torch.bool, device=device)
        if proposal_is_sample is None
        else proposal_is_sample.to(device=device, dtype=torch.bool)
    )
    if draft_probs is None:
        if bool((is_sample & ~greedy).any()):
            raise ValueError("draft_probs is required: some rows have temperature > 0 and a sampled proposal")
        is_sample = torch.zeros_like(is_sample)  # q is then never read
    p = probs_from_logits(target_logits, temps)
    from saguaro.kernels.verify_triton import verify_triton

    accepted, next_token = verify_triton(
        p, p if draft_probs is None else draft_probs.to(device), draft_tokens.to(device),
        uniforms.to(device), residual_uniforms.to(device), greedy, is_sample,
    )
    return VerifyResult(accepted, next_token)


def _check_shapes(
    target_logits: Tensor, draft_tokens: Tensor, draft_probs: Tensor | None, uniforms: Tensor, residual: Tensor
) -> None:
    if target_logits.dim() != 3 or target_logits.shape[-1] < 1:
        raise ValueError(f"target_logits must be [B, K+1, V], got {tuple(target_logits.shape)}")
    if target_logits.dtype == torch.float64:
        raise ValueError("the Triton verify path takes fp32/bf16/fp16 logits, not float64")
    b, k1, v = target_logits.shape
    expected = {
        "draft_tokens": (draft_tokens, (b, k1 - 1)),
        "uniforms": (uniforms, (b, k1 - 1)),
        "residual_uniforms": (residual, (b,)),
    }
    if draft_probs is not None:
        expected["draft_probs"] = (draft_probs, (b, k1 - 1, v))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} shape {tuple(tensor.shape)} != {shape}")
