"""A request's grammar applied to logits rows: a matcher per sequence, and the mask.

The spec and its validation are ``saguaro.structured_output``. How a row is masked follows the
logits processors (saguaro/logits_processors.py; docs/speculation.md, "Structured output"): a
row is a sequence's committed output plus ``extra`` tokens generated after it (the draft tokens
before a verify row, a tree branch's tokens on the draft). ``GrammarMatcher.follow`` brings the
sequence's matcher to its committed output (rolling back what is no longer there);
``GrammarMatcher.fill`` advances along the extra tokens, writes the mask and rolls back.
A row after an extra token the grammar rejects, or after an EOS, can never be reached (the
target rejects that token first, or the output ends there), so it gets no mask at all. When the grammar is accepting, EOS is allowed; once it
is complete, EOS is the only token allowed, so the request ends with finish_reason "stop".
Rows of requests without a grammar never reach this module.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence

import llguidance
import llguidance.hf
import numpy
import torch

from saguaro.errors import InvalidRequestError
from saguaro.structured_output import StructuredOutput, llguidance_grammar

COMPILED_CACHE = 64  # compiled grammars kept per tokenizer


class GrammarMatcher:
    """One sequence's grammar state, following the tokens it has committed.

    The state is the matcher after the tokens it followed last; ``follow`` moves it to another
    output by rolling back to the common prefix and consuming the rest, so the target (whose
    output only grows) and the draft (whose last token, the target's recovery token, changes
    every round) use one mechanism, preemption and resumed streams included."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, eos_ids: frozenset[int]):
        self._matcher = matcher
        self._vocab = vocab_size
        self._eos = eos_ids
        self._tokens: list[int] = []
        self._followed: object = None  # the output object followed last (rows of one sequence share it)

    def follow(self, output: Sequence[int]) -> bool:
        """Make the state the one after ``output``; False when the grammar rejects it (the state
        is then the one after its longest accepted prefix)."""
        if output is self._followed:
            return True
        n = len(self._tokens)
        common = n if len(output) >= n and list(output[:n]) == self._tokens else _common_prefix(self._tokens, output)
        if common < n:
            self._matcher.rollback(n - common)
            del self._tokens[common:]
        rest = [int(t) for t in output[common:]]
        accepted = self._matcher.validate_tokens(rest) if rest else 0
        if accepted:
            self._matcher.consume_tokens(rest[:accepted])
            self._tokens.extend(rest[:accepted])
        self._followed = output if accepted == len(rest) else None
        return accepted == len(rest)

    def fill(self, extra: Sequence[int], bitmask: torch.Tensor) -> bool:
        """Write into ``bitmask`` (int32 [ceil(V/32)], bit t of word t // 32) the tokens the
        grammar allows after the followed output plus ``extra``. False, writing nothing, for a
        row no one reaches: ``extra`` holds an EOS (which ends the output) or a token the
        grammar rejects."""
        matcher = self._matcher
        extra = list(extra)
        if self._eos.intersection(extra):
            return False
        if extra:
            if matcher.validate_tokens(extra) < len(extra):
                return False
            matcher.consume_tokens(extra)
        try:
            matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), bitmask.numel() * bitmask.element_size())
        finally:
            if extra:
                matcher.rollback(len(extra))
        return True


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class GrammarCompiler:
    """One model's tokenizer, wrapped for llguidance, and its compiled grammars (by spec).

    The target's engine owns one, each draft worker another; a lock guards the cache all the
    same, since it costs nothing next to a compile."""

    def __init__(self, hf_tokenizer, vocab_size: int, eos_ids: Collection[int]):
        if hf_tokenizer is None:
            raise InvalidRequestError("structured output needs the model's tokenizer, and this model folder has "
                                      "no tokenizer.json")
        self.eos_ids = frozenset(t for t in eos_ids if 0 <= t < vocab_size)
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size,
                                                      eos_token=sorted(self.eos_ids) or None)
        self.vocab_size = vocab_size
        self._compiled: OrderedDict[StructuredOutput, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, spec: StructuredOutput) -> GrammarMatcher:
        """A fresh matcher of ``spec`` at the start of the output (``InvalidRequestError``:
        the grammar does not compile for this tokenizer)."""
        spec.check()
        with self._lock:
            compiled = self._compiled.get(spec)
            if compiled is None:
                compiled = llguidance.LLMatcher(self.tokenizer, llguidance_grammar(spec), log_level=0)
                if compiled.is_error():
                    raise InvalidRequestError(f"structured_output.{spec.kind.value}: {compiled.get_error()}")
                self._compiled[spec] = compiled
                if len(self._compiled) > COMPILED_CACHE:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(spec)
            return GrammarMatcher(compiled.deep_copy(), self.vocab_size, self.eos_ids)


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def mask_rows(logits: torch.Tensor, rows: Sequence[int], matchers: Sequence[GrammarMatcher],
              outputs: Sequence[Sequence[int]], extra: Sequence[Sequence[int]] | None,
              unprocessed: torch.Tensor | None = None) -> torch.Tensor:
    """``logits`` [N, V] with row ``rows[i]`` masked to what ``matchers[i]`` allows after
    ``outputs[i]`` plus ``extra[i]`` (tokens < 0 are padding); in place, and returned.

    llguidance writes each row's bitmask (one bit per token) straight into one int32 array,
    unpacked for all rows at once by numpy (bit t of word t // 32 is bit t % 8 of little-endian
    byte t // 8): a handful of operations per call, since this runs on every masked row of
    every round and small torch operations cost tens of microseconds each. ``unprocessed``: the
    rows before the logits processors. Where the processors and the grammar together leave no
    token (``min_tokens`` holding back the EOS a whole output needs), the grammar wins: the row
    is the grammar's mask of its unprocessed logits."""
    vocab = logits.shape[-1]
    bitmask = torch.zeros(len(rows), bitmask_words(vocab), dtype=torch.int32)
    filled = []
    for i, (matcher, output) in enumerate(zip(matchers, outputs)):
        if not matcher.follow(output):
            continue  # the committed tokens leave the grammar (a desynchronised draft): no mask
        if matcher.fill([t for t in extra[i] if t >= 0] if extra is not None else (), bitmask[i]):
            filled.append(i)
    if not filled:
        return logits
    words = bitmask.numpy()[filled].view(numpy.uint8)
    allowed = numpy.unpackbits(words, axis=1, count=vocab, bitorder="little").view(numpy.bool_)
    alive = allowed.any(axis=1)  # a grammar in error allows nothing: leave such a row alone
    if not alive.all():
        filled = [i for i, ok in zip(filled, alive) if ok]
        allowed = allowed[alive]
        if not filled:
            return logits
    index = torch.tensor([rows[i] for i in filled], dtype=torch.long, device=logits.device)
    ruled_out = torch.from_numpy(~allowed).to(logits.device)
    result = logits.index_select(0, index).masked_fill_(ruled_out, float("-inf"))
    if unprocessed is not None:
        dead = ~torch.isfinite(result).any(dim=-1)
        if bool(dead.any()):
            result[dead] = unprocessed[index][dead].to(result.dtype).masked_fill(ruled_out[dead], float("-inf"))
    return logits.index_copy_(0, index, result)
