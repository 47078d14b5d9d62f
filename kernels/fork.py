"""Fork selection: the branch tokens of every sequence, one launch (docs/speculation.md, "Fan-out").

The torch reference is :func:`saguaro.speculative.fanout.fork_candidates` (int32 rank keys
over the whole [B, K+1, V] block, a mask for the exclusions, a top-k and a tie fill); the Triton
kernel ranks in registers and writes each depth's picks straight into their branch slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from saguaro.kernels.dispatch import Backend, use_triton
from saguaro.speculative.fanout import fork_candidates as fork_candidates_reference
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
