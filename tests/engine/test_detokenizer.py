"""The incremental detokenizer: the same text as a full decode, from short windows only."""

from __future__ import annotations

import random
import threading

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from saguaro.detokenizer import IncrementalDetokenizer
from saguaro.errors import InvalidRequestError
from saguaro.tiny_models import build_tokenizer

CORPUS = ["héllo wörld, ça va? 日本語のテキスト 🙂🚀 naïve café", "def f(x):\n    return x * 2  # ünïcode"] * 8


def _metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-style tokenizer: Metaspace (▁ for spaces, dropped at the start of a decode) and
    byte fallback, the two behaviours that make a token's text depend on its neighbours."""
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    bytes_alphabet = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *bytes_alphabet],
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module", params=["byte-level", "metaspace"])
def tokenizer(request, tmp_path_factory):
    if request.param == "metaspace":
        return _metaspace_tokenizer()
    folder = tmp_path_factory.mktemp("tok")
    build_tokenizer(folder, 300)
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def _ids(tokenizer) -> list[int]:
    text = "ça va? 日本語 🙂 naïve café, héllo wörld  x = 2"
    return tokenizer.encode(text, add_special_tokens=False)


def _stream(tokenizer, ids: list[int], sizes: list[int], resumed: tuple[list[int], str] = ([], "")) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, threading.Lock(), *resumed)
    pieces, i = [], 0
    for n in sizes:
        chunk = ids[i:i + n]
        i += n
        pieces.append(detok.push(chunk, flush=i >= len(ids)))
    return pieces


def _split(total: int, rng: random.Random) -> list[int]:
    sizes = []
    while total > 0:
        sizes.append(min(total, rng.randint(1, 4)))
        total -= sizes[-1]
    return sizes


def test_pieces_join_to_the_full_decode_and_never_end_inside_a_character(tokenizer):
    ids = _ids(tokenizer)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    assert any(ch.encode() != ch.encode("latin-1", "ignore") for ch in full)  # multi-byte characters present
    rng = random.Random(0)
    for _ in range(20):
        sizes = _split(len(ids), rng)
        pieces = _stream(tokenizer, ids, sizes)
        assert "".join(pieces) == full
        sent = ""
        for piece in pieces[:-1]:
            sent += piece
            assert "\ufffd" not in sent and full.startswith(sent)


def test_a_resumed_stream_continues_exactly_where_the_broken_one_stopped(tokenizer):
    ids = _ids(tokenizer)
    whole = _stream(tokenizer, ids, [1] * len(ids))
    for k in range(1, len(ids)):
        rest = _stream(tokenizer, ids[k:], [1] * (len(ids) - k), (ids[:k], "".join(whole[:k])))
        assert rest == whole[k:], f"break after {k} tokens"


def test_each_push_decodes_a_short_window_not_the_whole_completion(tokenizer):
    calls: list[int] = []

    class Counting:
        def decode(self, ids, **kwargs):
            calls.append(len(ids))
            return tokenizer.decode(ids, **kwargs)

    ids = _ids(tokenizer) * 6
    detok = IncrementalDetokenizer(Counting(), threading.Lock())
    for i, token in enumerate(ids):
        detok.push([token], flush=i == len(ids) - 1)
    assert len(ids) > 60 and max(calls) <= 8  # a window: tokens since the last text boundary, not the stream


def test_resumed_text_that_is_not_the_tokens_text_is_refused(tokenizer):
    ids = _ids(tokenizer)
    with pytest.raises(InvalidRequestError, match="resume.text"):
        IncrementalDetokenizer(tokenizer, threading.Lock(), ids[:5], "not this text")
