"""``saguaro.grammar.mask_rows`` row by row against llguidance's own answer: each masked row
allows exactly the tokens ``compute_logit_bias`` allows after the row's committed output plus
its extra tokens; unreachable rows (after a rejected token or an EOS) are left alone; a whole
output allows only EOS; where the processors left no token, the grammar's mask of the
unprocessed row wins. The exactness tests (tests/speculative) show the
same masks give AR's tokens in every mode; this shows the bit layout on its own, on a vocabulary
whose size is not a multiple of 32."""

from __future__ import annotations

import llguidance
import llguidance.hf
import numpy
import pytest
import torch
from transformers import AutoTokenizer

from saguaro.grammar import Disallowed, GrammarCompiler, bitmask_words, mask_rows
from saguaro.structured_output import StructuredOutput

EOS = 1  # the tiny tokenizer's <|eos|>
REGEX = r"(def|class) [a-z_]{1,8}\((a|b)?\):"


@pytest.fixture(scope="module")
def tokenizer(model_dirs):
    return AutoTokenizer.from_pretrained(model_dirs["llama"])


@pytest.fixture(scope="module")
def vocab(tokenizer) -> int:
    return len(tokenizer) + 5  # (the model's rows beyond the tokenizer's ids: never allowed)


def allowed_by_llguidance(tokenizer, vocab: int, tokens: list[int]) -> torch.Tensor:
    """The tokens llguidance itself allows after ``tokens``, as a bool row."""
    matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=EOS),
                                   llguidance.LLMatcher.grammar_from_regex(REGEX), log_level=0)
    assert matcher.consume_tokens(tokens), matcher.get_error()
    return torch.tensor(list(matcher.compute_logit_bias()))[:vocab] > 0


def test_each_row_allows_what_llguidance_allows(tokenizer, vocab):
    assert vocab % 32, "the vocabulary must leave a partial bitmask word"
    compiler = GrammarCompiler(tokenizer, vocab, [EOS])
    matcher = compiler.matcher(StructuredOutput.regex(REGEX))
    text = tokenizer.encode("def ab(a):", add_special_tokens=False)
    output = text[:1]
    extras = [[], text[1:2], text[1:3], [-1, -1]]  # (-1: padding, as a batch's ragged rows have)
    logits = torch.randn(6, vocab)
    before = logits.clone()
    rows = [1, 2, 3, 5]
    mask_rows(logits, rows, [matcher] * 4, [output] * 4, extras)
    for row, extra in zip(rows, extras):
        allowed = allowed_by_llguidance(tokenizer, vocab, output + [t for t in extra if t >= 0])
        assert torch.equal(torch.isfinite(logits[row]), allowed)
        assert torch.equal(logits[row][allowed], before[row][allowed])
    assert torch.equal(logits[[0, 4]], before[[0, 4]])  # rows not asked for are untouched
    every = before[[1, 2, 3, 5]].clone()  # every row of the logits, in order: masked in place
    mask_rows(every, range(4), [matcher] * 4, [output] * 4, extras)
    assert torch.equal(every, logits[[1, 2, 3, 5]])


def test_unreachable_rows_and_a_whole_output(tokenizer, vocab):
    compiler = GrammarCompiler(tokenizer, vocab, [EOS])
    matcher = compiler.matcher(StructuredOutput.regex(REGEX))
    whole = tokenizer.encode("class x():", add_special_tokens=False)
    rejected = tokenizer.encode("zzz", add_special_tokens=False)[:1]
    logits = torch.randn(3, vocab)
    before = logits.clone()
    mask_rows(logits, [0, 1, 2], [matcher] * 3, [whole[:1]] * 2 + [whole], [rejected, [EOS], []])
    assert torch.equal(logits[:2], before[:2])  # after a rejected token or an EOS: no one reaches them
    assert torch.isfinite(logits[2]).nonzero().flatten().tolist() == [EOS]  # whole: only EOS


def test_where_the_processors_left_nothing_the_grammar_wins(tokenizer, vocab):
    compiler = GrammarCompiler(tokenizer, vocab, [EOS])
    whole = tokenizer.encode("class x():", add_special_tokens=False)
    unprocessed = torch.randn(1, vocab)
    logits = unprocessed.clone()
    logits[0, EOS] = float("-inf")  # min_tokens holding back the EOS the whole output needs
    mask_rows(logits, [0], [compiler.matcher(StructuredOutput.regex(REGEX))], [whole], None, unprocessed)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [EOS]
    assert logits[0, EOS] == unprocessed[0, EOS]


def test_the_cpu_bias_and_the_accelerator_mask_agree():
    """Both forms of ``Disallowed`` (a -inf/0 bias on the CPU, the packed bitmask unpacked where
    the logits live) give the same rows, on the CPU here: random bitmasks, a partial last word."""
    generator = numpy.random.default_rng(5)
    vocab = 100
    words = generator.integers(-2**31, 2**31, size=(3, bitmask_words(vocab)), dtype=numpy.int64).astype(numpy.int32)
    logits = torch.randn(3, vocab)
    biased = Disallowed(words, vocab, logits.device).apply_(logits.clone())
    masked = Disallowed(words, vocab, logits.device, packed=True).apply_(logits.clone())
    assert torch.equal(biased, masked)
    bits = numpy.unpackbits(words.view(numpy.uint8), axis=1, count=vocab, bitorder="little").astype(bool)
    assert torch.equal(torch.isfinite(biased), torch.from_numpy(bits))  # bit t of word t // 32: token t allowed
    assert torch.equal(biased[torch.from_numpy(bits)], logits[torch.from_numpy(bits)])  # allowed logits unchanged
