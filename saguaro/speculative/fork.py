"""Fork selection: the branch tokens of every sequence, in one call (docs/speculation.md, "Fan-out").

:func:`fork_candidates` picks the implementation: the Triton kernel
(``saguaro.kernels.fork_triton``) on CUDA tensors, else :func:`fork_candidates_reference`,
which ranks with int32 keys over the whole [B, K+1, V] block, masks the exclusions and takes
a top-k with a tie fill. The kernel ranks in registers and writes each depth's picks straight
into their branch slots; both return bit-identical tokens and depths. The dispatcher lives
here, beside its reference, so that ``saguaro.kernels`` imports nothing above it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from saguaro.kernels.dispatch import Backend, use_triton
from saguaro.speculative.distributions import topk_indices
from saguaro.speculative.fanout import validate_fan_out


def fork_candidates(
    glue_logits: Tensor,
    draft_tokens: Tensor,
    fan_out: Sequence[int] | Tensor,
    *,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """``(fork_tokens, fork_depth)``, LongTensor[B, M] each, as the reference returns them.

    glue_logits [B, K+1, V]; draft_tokens [B, K]; fan_out: K+1 ints or LongTensor[B, K+1]
    with equal row sums M (hit and miss lists, see ``select_fan_out``).
    """
    if glue_logits.shape[0] == 0 or not use_triton(backend, glue_logits.device):
        return fork_candidates_reference(glue_logits, draft_tokens, fan_out)
    batch, k1, vocab = glue_logits.shape
    if tuple(draft_tokens.shape) != (batch, k1 - 1):
        raise ValueError(f"draft_tokens shape {tuple(draft_tokens.shape)} != (B, K) = {(batch, k1 - 1)}")
    table, branches, max_fan_out = _fan_out_table(fan_out, batch, k1, vocab, glue_logits.device)
    from saguaro.kernels.fork_triton import fork_triton

    return fork_triton(glue_logits, draft_tokens.to(glue_logits.device), table, branches, max_fan_out)


def _fan_out_table(
    fan_out: Sequence[int] | Tensor, batch: int, k1: int, vocab: int, device: torch.device
) -> tuple[Tensor, int, int]:
    """Per-row fan-out [B, K+1] on ``device``, M and max F_j, checked as the reference checks it.

    Reads the table on the host (M sizes the output, max F_j the kernel's candidate list),
    like the reference does.
    """
    if isinstance(fan_out, Tensor):
        host = fan_out.to(device="cpu", dtype=torch.long).expand(batch, k1)
    else:
        host = torch.tensor(validate_fan_out(fan_out, k1 - 1), dtype=torch.long).expand(batch, k1)
    limit = torch.full((k1,), vocab - 1)
    limit[-1] = vocab  # nothing is excluded at depth K
    sums = host.sum(dim=1)
    if bool((host < 0).any()) or bool((host > limit).any()):
        raise ValueError(f"fan_out entries must be in [0, V-1] (depth K: [0, V]), V={vocab}")
    if bool((sums != sums[0]).any()) or int(sums[0]) < 1:
        raise ValueError(f"fan_out rows must share one positive sum M, got {sums.tolist()}")
    return host.to(device), int(sums[0]), int(host.max())


def fork_candidates_reference(
    glue_logits: Tensor, draft_tokens: Tensor, fan_out: Sequence[int] | Tensor
) -> tuple[Tensor, Tensor]:
    """The torch reference of :func:`fork_candidates`, and its path on CPU tensors.

    Fork tokens of every sequence: top-F_j of glue row j, excluding s_{j+1} for j < K.

    Glue row j is the draft's distribution after r, s_1..s_j, i.e. where r' lands if the
    target accepts exactly j tokens. For j < K the draft's own s_{j+1} is excluded: if it is
    rejected the target cannot emit it (greedy: the argmax differs; sampling: the residual
    max(0, p - q) is 0 at a rejected token). Nothing is excluded at j = K (the bonus
    can be anything). Ranking is by logit (temperature-free), descending, ties to the
    lowest token id (:func:`~saguaro.speculative.distributions.topk_indices`), so tokens at one
    depth are distinct and keys (seq, j, token) unique.

    Branch order inside a row: depth 0's F_0 tokens (best first), then depth 1's, ...

    Args:
        glue_logits: Tensor[B, K+1, V].
        draft_tokens: LongTensor[B, K], the speculation actually sent this round.
        fan_out: list of K+1 ints, or LongTensor[B, K+1] (per-row lists, e.g. hit vs miss)
            whose rows all have the same sum M. Needs F_j <= V-1 for j < K, F_K <= V.
    Returns:
        ``(fork_tokens: LongTensor[B, M], fork_depth: LongTensor[B, M])``.
    """
    if glue_logits.dim() != 3 or glue_logits.shape[1] < 1:
        raise ValueError(f"glue_logits must be [B, K+1, V], got {tuple(glue_logits.shape)}")
    b, k1, v = glue_logits.shape
    k = k1 - 1
    if draft_tokens.dtype.is_floating_point or draft_tokens.dtype == torch.bool:
        raise ValueError(f"draft_tokens must be an integer tensor, got {draft_tokens.dtype}")
    if tuple(draft_tokens.shape) != (b, k):
        raise ValueError(f"draft_tokens shape {tuple(draft_tokens.shape)} != (B, K) = {(b, k)}")
    device = glue_logits.device

    if isinstance(fan_out, Tensor):
        f = fan_out.to(device=device, dtype=torch.long)
        if f.dim() == 1:
            f = f.unsqueeze(0).expand(b, -1)
        if tuple(f.shape) != (b, k1):
            raise ValueError(f"fan_out tensor shape {tuple(fan_out.shape)} != (B, K+1) = {(b, k1)}")
        host = f.cpu()
        if bool((host < 0).any()):
            raise ValueError("fan_out entries must be >= 0")
        sums = host.sum(dim=1)
        if b > 0 and bool((sums != sums[0]).any()):
            raise ValueError(f"all rows of fan_out must have the same sum M, got {sums.tolist()}")
        m = int(sums[0]) if b > 0 else 0
        if b > 0 and m <= 0:
            raise ValueError("fan_out must have a positive sum (total branch budget M >= 1)")
        per_depth_max = host.amax(dim=0).tolist() if b > 0 else [0] * k1
    else:
        lst = validate_fan_out(fan_out, k)
        m = sum(lst)
        per_depth_max = lst
        f = torch.tensor(lst, dtype=torch.long, device=device).unsqueeze(0).expand(b, -1)
    for j, fj in enumerate(per_depth_max):
        limit = v - 1 if j < k else v
        if fj > limit:
            raise ValueError(
                f"fan_out at depth {j} is {fj} but only {limit} candidate tokens exist "
                f"(V={v}{', minus the excluded draft token' if j < k else ''})"
            )
    f_max = max(per_depth_max) if per_depth_max else 0

    allowed = torch.ones(b, k1, v, dtype=torch.bool, device=device)
    if k > 0:
        excluded = draft_tokens.to(device=device, dtype=torch.long).unsqueeze(-1)
        allowed[:, :k].scatter_(-1, excluded, False)
    top = topk_indices(glue_logits, f_max, allowed)  # [B, K+1, Fmax]

    cum = f.cumsum(dim=1)  # [B, K+1], end offset of each depth's slots
    slots = torch.arange(m, device=device)
    fork_depth = (cum.unsqueeze(1) <= slots.view(1, -1, 1)).sum(dim=-1)  # [B, M]
    start = (cum - f).gather(1, fork_depth)
    rank = slots.unsqueeze(0) - start
    flat = fork_depth * f_max + rank
    fork_tokens = top.reshape(b, -1).gather(1, flat)
    return fork_tokens, fork_depth
