"""Greedy AR, SD and SSD with stop strings stop exactly where AR decoding does.

The stop strings are taken from the text the model generates without them, so they match, and
they straddle tokens in the middle of the output: with a copy draft an SD/SSD round commits up
to K+1 tokens at once, so the token that completes a stop string usually sits mid-round. The
reference is transformers' greedy output, cut at the first token whose text (decoded as a
stream shows it: never ending in half a character) contains the stop string.
"""

from __future__ import annotations

import pytest

from saguaro import SamplingParams
from saguaro.config import EngineConfig
from saguaro.llm import LLM
from saguaro.services.target.local import speculative_engine
from saguaro.speculative.settings import DraftSettings
from saguaro.tokenizer import decode, load_tokenizer
from tests_support import hf_greedy, make_prompts

NEW_TOKENS = 24
REPLACEMENT = "\ufffd"


def config(model: str) -> EngineConfig:
    return EngineConfig(model=model, block_size=8, kv_cache_bytes=1 << 24, max_model_len=256, max_num_seqs=4,
                        show_progress=False)


def pick_stop(tokenizer, out: list[int], position: int) -> str | None:
    """A 4-character piece of the text starting at the last character of token ``position``."""
    text = decode(tokenizer, out)
    start = len(decode(tokenizer, out[: position + 1])) - 1
    stop = text[start:start + 4]
    return stop if len(stop) == 4 and REPLACEMENT not in stop and not stop.isspace() else None


def reference(tokenizer, out: list[int], stops: list[str], include: bool) -> tuple[list[int], str, str | None]:
    """``out`` cut at the first token whose text contains a stop string; its text cut at the match."""
    for j in range(len(out)):
        text = decode(tokenizer, out[: j + 1])
        if text.endswith(REPLACEMENT):
            continue  # a stream holds half a character back
        found = sorted((text.find(s), len(s), s) for s in stops if s in text)
        if found:
            index, length, stop = found[0]
            return out[: j + 1], text[: index + length if include else index], stop
    return out, decode(tokenizer, out), None


@pytest.fixture(scope="module")
def cases(model_dirs):
    """(prompt, stop strings, include_stop_str_in_output, expected tokens, text, matched string)."""
    model = model_dirs["llama"]
    tokenizer = load_tokenizer(model)
    found = []
    for i, prompt in enumerate(make_prompts(12, 380, seed=5, min_len=4, max_len=20)):
        out = hf_greedy(model, prompt, NEW_TOKENS)
        position = 5 + i % 9
        stop = pick_stop(tokenizer, out, position) if len(out) > position + 4 else None
        if stop is None:
            continue
        stops = [stop, "zzzz-never"] if i % 2 else [stop[1:], stop]  # two that match at once: the earliest wins
        include = i % 3 == 0
        found.append((prompt, stops, include, *reference(tokenizer, out, stops, include)))
    assert len(found) >= 4
    assert all(len(expected) < NEW_TOKENS and stop is not None for _, _, _, expected, _, stop in found)
    return found


def run(llm: LLM, cases) -> list:
    params = [SamplingParams(max_tokens=NEW_TOKENS, stop=stops, include_stop_str_in_output=include)
              for _, stops, include, *_ in cases]
    return llm.generate([prompt for prompt, *_ in cases], params)


def check(outputs, cases) -> None:
    for out, (_, stops, _, tokens, text, stop) in zip(outputs, cases):
        assert out.token_ids == tokens, stops
        assert out.text == text, stops
        assert out.finish_reason == "stop" and out.stop_string == stop


def test_ar_stops_at_the_token_that_completes_a_stop_string(model_dirs, cases):
    check(run(LLM(model_dirs["llama"], block_size=8, kv_cache_bytes=1 << 24, max_model_len=256, max_num_seqs=4,
                  show_progress=False), cases), cases)


@pytest.mark.parametrize("mode,draft,k,f", [("sd", "llama_draft_copy", 3, 1), ("ssd", "llama_draft_copy", 6, 2),
                                            ("ssd", "llama_draft_perturbed", 3, 2)])
def test_speculative_modes_stop_where_ar_does(model_dirs, cases, mode, draft, k, f):
    engine = speculative_engine(config(model_dirs["llama"]), mode, config(model_dirs[draft]),
                                DraftSettings(k=k, fan_out=f), fast_path=None, draft_soft_deadline=False)
    try:
        outputs = run(LLM.from_engine(engine, load_tokenizer(model_dirs["llama"])), cases)
        check(outputs, cases)
        assert all(o.stats["mode"] == mode for o in outputs)
        if draft.endswith("copy"):  # several tokens per round: the stop strings ended rounds midway
            assert sum(o.stats["tokens_per_round"] for o in outputs) / len(outputs) > 2
    finally:
        engine.proposer.close()
