"""End-to-end generation through the LLM API against transformers."""

from __future__ import annotations

import pytest

from saguaro import LLM, SamplingParams
from tests_support import hf_greedy, make_prompts


NEW_TOKENS = 12


@pytest.fixture(scope="module")
def expected(model_dirs):
    """transformers batch-1 greedy outputs for 20 varied prompts on two families."""
    out = {}
    for name in ("llama", "qwen3"):
        prompts = make_prompts(20, 380, seed=11)
        out[name] = (prompts, [hf_greedy(model_dirs[name], p, NEW_TOKENS) for p in prompts])
    return out


@pytest.mark.parametrize("name", ["llama", "qwen3"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_greedy_matches_transformers(model_dirs, expected, name, batch_size):
    prompts, want = expected[name]
    llm = LLM(model_dirs[name], max_num_seqs=batch_size, block_size=8, show_progress=False)
    outputs = llm.generate(prompts, SamplingParams(max_tokens=NEW_TOKENS))
    assert [o.token_ids for o in outputs] == want
    for o, w in zip(outputs, want):
        assert o.finish_reason == ("length" if len(w) == NEW_TOKENS and 1 not in w else "stop")


def test_prefix_cache_reuses_shared_prefix(model_dirs, expected):
    prompts, _ = expected["llama"]
    shared = list(range(3, 3 + 40))  # 5 full blocks of 8
    batch = [shared + p for p in prompts[:6]]
    want = [hf_greedy(model_dirs["llama"], p, NEW_TOKENS) for p in batch]
    llm = LLM(model_dirs["llama"], max_num_seqs=2, block_size=8, show_progress=False)
    outputs = llm.generate(batch, SamplingParams(max_tokens=NEW_TOKENS))
    assert [o.token_ids for o in outputs] == want
    stats = llm.engine.runner.blocks.stats
    # the first pair computes the prefix; the later four reuse its 5 blocks
    assert stats.hit_tokens >= 4 * 40


def test_prefix_cache_off_gives_same_tokens_and_no_hits(model_dirs, expected):
    prompts, want = expected["llama"]
    llm = LLM(model_dirs["llama"], max_num_seqs=4, block_size=8, enable_prefix_caching=False, show_progress=False)
    outputs = llm.generate(prompts + prompts[:4], SamplingParams(max_tokens=NEW_TOKENS))
    assert [o.token_ids for o in outputs] == want + want[:4]
    assert llm.engine.runner.blocks.stats.hit_tokens == 0


def test_tiny_kv_budget_forces_preemption_with_identical_output(model_dirs, expected):
    prompts, want = expected["llama"]
    # llama tiny: 2 layers x 2 kv heads x 16 dims x 4 bytes x 2 (K,V) = 512 B per token.
    # 14 blocks of 8 tokens hold ~2 sequences of ~50 tokens: 8 running sequences must preempt.
    llm = LLM(model_dirs["llama"], max_num_seqs=8, block_size=8, kv_cache_bytes=512 * 8 * 14,
              max_model_len=64, show_progress=False)
    outputs = llm.generate(prompts, SamplingParams(max_tokens=NEW_TOKENS))
    assert [o.token_ids for o in outputs] == want
    assert llm.engine.scheduler.num_preemptions > 0
    assert sum(o.stats["num_preemptions"] for o in outputs) == llm.engine.scheduler.num_preemptions


def test_seeded_sampling_is_reproducible_and_batch_independent(model_dirs):
    llm = LLM(model_dirs["qwen3"], max_num_seqs=8, show_progress=False)
    prompts = make_prompts(6, 380, seed=3)
    seeded = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    alone = llm.generate(prompts[0], seeded)[0].token_ids
    again = llm.generate(prompts[0], seeded)[0].token_ids
    others = [SamplingParams(max_tokens=7, temperature=1.3) for _ in prompts[1:]]
    mixed = llm.generate(prompts[1:3] + [prompts[0]] + prompts[3:], others[:2] + [seeded] + others[2:])[2].token_ids
    assert alone == again == mixed
    different_seed = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, top_k=50, seed=99)
    assert llm.generate(prompts[0], different_seed)[0].token_ids != alone


def test_text_prompt_round_trip(model_dirs):
    llm = LLM(model_dirs["llama"], show_progress=False)
    out = llm.generate("def add(a, b):", SamplingParams(max_tokens=5))[0]
    assert out.prompt_token_ids == llm.tokenizer.encode("def add(a, b):", add_special_tokens=False)
    assert out.text == llm.tokenizer.decode(out.token_ids, skip_special_tokens=True)
    assert out.timings["total_s"] >= out.timings["time_to_first_token_s"] > 0
