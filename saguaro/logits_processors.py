"""vLLM's logits processors, applied exactly under speculation: one home for all of them.

What a request's ``presence_penalty``, ``frequency_penalty``, ``repetition_penalty``,
``logit_bias`` and ``min_tokens`` do to a row of logits, as vLLM does it
(docs/speculation.md, "Logits processors"):

* ``logit_bias`` is added to the logits of its token ids;
* ``min_tokens``: EOS and the request's stop token ids get -inf while fewer than ``min_tokens``
  tokens have been generated;
* ``repetition_penalty`` divides the positive logits (multiplies the negative ones) of every
  token seen in the prompt or the output;
* ``frequency_penalty`` subtracts the token's count in the output, times the penalty;
  ``presence_penalty`` subtracts the penalty once from every token the output holds.

They depend on the tokens generated so far, so they are position dependent: under speculation
the verify row j of a proposal conditions on the proposal's first j tokens (which were all
accepted if row j is reached), so its counts include them. Every caller describes each row as
a ``History`` (the request's committed prompt and output) plus ``extra`` tokens generated after
it (the draft tokens before that row): the target's AR rows and verify rows, and the draft's
proposals, all call :func:`process_logits`, so a row is processed the same way wherever it is.
``min_p`` is a filter after temperature (``saguaro.sampling.filter_logits``), not here.
A request's grammar (structured output, ``saguaro.structured_output``) is applied last, the
same way: its mask of a row follows the committed output plus the row's ``extra`` tokens.
Rows of requests that use none of them cost nothing; neither does a batch without any.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from saguaro.grammar import GrammarMatcher, mask_rows

NO_TOKEN = -1  # padding in ``extra``


@dataclass(frozen=True)
class LogitsProcessing:
    """A request's processor parameters, resolved (``min_tokens_stop_ids``: the EOS ids and the
    request's stop token ids, which ``min_tokens`` holds back)."""

    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    min_tokens_stop_ids: tuple[int, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1
                    or self.logit_bias or (self.min_tokens and self.min_tokens_stop_ids))


def resolve(presence_penalty: float, frequency_penalty: float, repetition_penalty: float,
            logit_bias: dict[int, float], min_tokens: int, stop_ids: Collection[int]) -> LogitsProcessing | None:
    """The processing a request asks for, or None when it asks for none (the common case)."""
    processing = LogitsProcessing(
        float(presence_penalty), float(frequency_penalty), float(repetition_penalty),
        tuple(sorted((int(t), float(b)) for t, b in logit_bias.items())), int(min_tokens),
        tuple(sorted(set(stop_ids))) if min_tokens else ())
    return processing if processing.active else None


@dataclass(frozen=True)
class History:
    """One request's committed tokens, split as the penalties and the grammar need them
    (``processing`` None: no processor; ``grammar`` None: no structured output)."""

    processing: LogitsProcessing | None
    prompt: Sequence[int]
    output: Sequence[int]
    grammar: GrammarMatcher | None = None


def _padded(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([list(r) + [NO_TOKEN] * (width - len(r)) for r in rows], dtype=torch.long).view(len(rows), width)


def _counts(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """[N, L] token ids (``NO_TOKEN`` padding) -> [N, V] occurrence counts."""
    index = torch.where(tokens >= 0, tokens, vocab)
    counts = torch.zeros(tokens.shape[0], vocab + 1, dtype=torch.float32)
    return counts.scatter_add_(1, index, torch.ones(index.shape, dtype=torch.float32))[:, :vocab]


def process_logits(logits: torch.Tensor, histories: Sequence[History | None],
                   extra: torch.Tensor | None = None) -> torch.Tensor:
    """``logits`` [N, V] with each row's processors applied (a new tensor; rows whose history is
    None, and a batch with no history at all, come back as they are).

    ``histories``: per row, the request's history (None: it uses no processor). ``extra``
    [N, L]: tokens generated after that history for the row (``NO_TOKEN`` padding), e.g. the
    draft tokens before a verify row (:func:`block_extra`). The grammar's mask comes last."""
    processed = _penalise(logits, histories, extra)
    grammars = [i for i, h in enumerate(histories) if h is not None and h.grammar is not None]
    if not grammars:
        return processed
    unprocessed = None if processed is logits else logits
    if processed is logits:
        processed = logits.float().clone()
    rows_extra = extra[grammars].tolist() if extra is not None else None
    return mask_rows(processed, grammars, [histories[i].grammar for i in grammars],
                     [histories[i].output for i in grammars], rows_extra, unprocessed)


def _penalise(logits: torch.Tensor, histories: Sequence[History | None], extra: torch.Tensor | None) -> torch.Tensor:
    """The penalties, ``logit_bias`` and ``min_tokens`` of :func:`process_logits` (``logits``
    itself when no row has any)."""
    rows = [i for i, h in enumerate(histories) if h is not None and h.processing is not None]
    if not rows:
        return logits
    vocab = logits.shape[-1]
    device = logits.device
    hs = [histories[i] for i in rows]
    output = _padded([h.output for h in hs])
    if extra is not None:
        output = torch.cat([output, extra[rows].cpu().long()], dim=1)
    out_counts = _counts(output, vocab)
    generated = (output >= 0).sum(dim=1)
    seen = (out_counts + _counts(_padded([h.prompt for h in hs]), vocab)) > 0

    x = logits[rows].float()
    param = lambda name: torch.tensor([getattr(h.processing, name) for h in hs], dtype=torch.float32)[:, None]  # noqa: E731
    bias = torch.zeros(len(hs), vocab)
    hold = torch.zeros(len(hs), vocab, dtype=torch.bool)
    for j, h in enumerate(hs):
        p = h.processing
        for token, value in p.logit_bias:
            bias[j, token] = value
        if int(generated[j]) < p.min_tokens:
            hold[j, list(p.min_tokens_stop_ids)] = True
    x = x + bias.to(device)
    x = x.masked_fill(hold.to(device), float("-inf"))
    repetition = torch.where(seen, param("repetition_penalty"), 1.0).to(device)
    x = torch.where(x > 0, x / repetition, x * repetition)
    x = x - (param("frequency_penalty") * out_counts + param("presence_penalty") * (out_counts > 0)).to(device)
    processed = logits.float().clone()
    processed[rows] = x
    return processed


def block_extra(drafted: torch.Tensor) -> torch.Tensor:
    """[B, K] draft tokens -> [B*(K+1), K]: row j of each block gets the first j of them (the
    tokens a verify or glue row j conditions on), ``NO_TOKEN`` after."""
    b, k = drafted.shape
    before = torch.arange(k)[None, :] < torch.arange(k + 1)[:, None]  # [K+1, K]
    return torch.where(before[None], drafted.cpu().long()[:, None, :], NO_TOKEN).reshape(b * (k + 1), k)


def process_block(block: torch.Tensor, histories: Sequence[History | None], drafted: torch.Tensor) -> torch.Tensor:
    """[B, K+1, V] rows scoring ``[r, s_1..s_K]`` (``drafted`` = s, [B, K]; the histories end
    with r) processed as plain decoding would have at each position."""
    b, rows, vocab = block.shape
    if all(h is None for h in histories):
        return block
    per_row = [h for h in histories for _ in range(rows)]
    return process_logits(block.reshape(b * rows, vocab), per_row, block_extra(drafted)).view(b, rows, vocab)
