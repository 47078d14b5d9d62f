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

    def fill(self, extra: Sequence[int], bitmask: numpy.ndarray) -> bool:
        """Write into ``bitmask`` (int32 [ceil(V/32)], contiguous; bit t of word t // 32) the
        tokens the grammar allows after the followed output plus ``extra``. False, writing
        nothing, for a row no one reaches: ``extra`` holds an EOS (which ends the output) or a
        token the grammar rejects."""
        matcher = self._matcher
        extra = list(extra)
        if self._eos.intersection(extra):
            return False
        if extra:
            if matcher.validate_tokens(extra) < len(extra):
                return False
            matcher.consume_tokens(extra)
        try:
            matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)
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


NEG_INF_BITS = numpy.uint32(0xFF800000)  # float32 -inf; 0 is +0.0


class Disallowed:
    """Rows' disallowed tokens, in the form that applies fastest where the logits live.

    On the CPU, an additive bias of -inf (disallowed) and 0 (allowed), built from the bitmask
    without a branch (bit * the bits of -inf, viewed as float32): adding it is branch-free,
    while ``masked_fill_`` on an irregular mask costs about ten times as much (measured:
    docs/benchmarks.md §7). x + 0 is x and x + -inf is -inf for every finite logit (and for
    -inf), so the masked rows hold the same values either way; only a +inf or NaN logit, which
    no working model gives, would come out NaN here where ``masked_fill_`` writes -inf.

    On an accelerator, the packed bitmask is copied (V / 8 bytes a row, not a byte per token)
    and unpacked there (``packed``: that way wherever the logits are; the tests run it on the
    CPU against the bias)."""

    def __init__(self, words: numpy.ndarray, vocab: int, device: torch.device, packed: bool | None = None):
        self.bias = self.mask = None
        if not (device.type != "cpu" if packed is None else packed):
            ruled_out = numpy.unpackbits(~words.view(numpy.uint8), axis=1, count=vocab, bitorder="little")
            self.bias = torch.from_numpy(numpy.multiply(ruled_out, NEG_INF_BITS, dtype=numpy.uint32).view(numpy.float32))
        else:
            on_device = torch.from_numpy(words).to(device)
            shifts = torch.arange(32, dtype=torch.int32, device=device)
            self.mask = (((on_device[:, :, None] >> shifts) & 1) == 0).reshape(len(words), -1)[:, :vocab]

    def apply_(self, logits: torch.Tensor, which: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """``logits`` (rows ``which`` of this mask's rows) with their disallowed tokens at -inf, in place."""
        if self.bias is not None:
            return logits.add_(self.bias[which].to(logits.dtype))
        return logits.masked_fill_(self.mask[which], float("-inf"))


def mask_rows(logits: torch.Tensor, rows: Sequence[int], matchers: Sequence[GrammarMatcher],
              outputs: Sequence[Sequence[int]], extra: Sequence[Sequence[int]] | None,
              unprocessed: torch.Tensor | None = None) -> torch.Tensor:
    """``logits`` [N, V] with row ``rows[i]`` masked to what ``matchers[i]`` allows after
    ``outputs[i]`` plus ``extra[i]`` (tokens < 0 are padding); in place, and returned.

    llguidance writes each row's bitmask (one bit per token) straight into one int32 array,
    applied to all rows at once (``Disallowed``): a handful of operations per call, since this
    runs on every masked row of every round (a tree step masks every branch). ``unprocessed``:
    the rows before the logits processors. Where the processors and the grammar together leave
    no token (``min_tokens`` holding back the EOS a whole output needs), the grammar wins: the
    row is the grammar's mask of its unprocessed logits."""
    vocab = logits.shape[-1]
    bitmask = numpy.zeros((len(rows), bitmask_words(vocab)), dtype=numpy.int32)
    filled = []
    for i, (matcher, output) in enumerate(zip(matchers, outputs)):
        if not matcher.follow(output):
            continue  # the committed tokens leave the grammar (a desynchronised draft): no mask
        if matcher.fill([t for t in extra[i] if t >= 0] if extra is not None else (), bitmask[i]):
            filled.append(i)
    if not filled:
        return logits
    words = bitmask[filled]
    if vocab % 32:
        words[:, -1] &= (1 << (vocab % 32)) - 1  # (no bit beyond the vocabulary counts)
    alive = words.any(axis=1)  # a grammar in error allows nothing: leave such a row alone
    if not alive.all():
        filled, words = [i for i, ok in zip(filled, alive) if ok], words[alive]
        if not filled:
            return logits
    disallowed = Disallowed(words, vocab, logits.device)
    if unprocessed is None and len(filled) == logits.shape[0] and list(rows) == list(range(len(rows))):
        return disallowed.apply_(logits)  # every row masked, in order (a tree step)
    index = torch.tensor([rows[i] for i in filled], dtype=torch.long, device=logits.device)
    result = disallowed.apply_(logits.index_select(0, index))
    if unprocessed is not None:
        dead = ~torch.isfinite(result).any(dim=-1)
        if bool(dead.any()):
            result[dead] = disallowed.apply_(unprocessed[index][dead].to(result.dtype), dead.cpu())
    return logits.index_copy_(0, index, result)
