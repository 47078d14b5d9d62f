"""Log probabilities of the target: what a request asking for ``logprobs`` gets back.

Semantics are vLLM's default (``logprobs_mode="raw_logprobs"``): ``log_softmax`` of the target's
raw fp32 logits, before temperature, top-k and top-p. So a token's log probability is the same
whether the request is greedy or sampled, and whatever mode decoded it: under speculation the
target's verify forward has a row for every committed token (the accepted draft tokens and the
bonus or correction token), the same row plain decoding would have computed on that prefix
(docs/speculation.md, "Log probabilities").

Computed only for the rows of requests that ask; a request that does not pays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

@dataclass(frozen=True)
class TokenLogprob:
    """One position: the token there, its log probability, and the ``top`` most likely tokens
    with theirs (most likely first; the token itself may or may not be among them)."""

    token_id: int
    logprob: float
    top_ids: tuple[int, ...] = ()
    top_logprobs: tuple[float, ...] = ()


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int], top: int) -> list[TokenLogprob]:
    """``logits``: [N, V] raw target rows, row i scoring ``tokens[i]``; ``top`` alternatives each."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(-1, torch.tensor(list(tokens), dtype=torch.long, device=logits.device)[:, None])[:, 0]
    values, ids = logprobs.topk(top, dim=-1) if top else (logprobs[:, :0], logprobs[:, :0].long())
    chosen, values, ids = chosen.tolist(), values.tolist(), ids.tolist()
    return [TokenLogprob(int(t), chosen[i], tuple(ids[i]), tuple(values[i])) for i, t in enumerate(tokens)]
