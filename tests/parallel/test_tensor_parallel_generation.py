"""Greedy AR, SD and SSD with a TP = 2 target: token-identical to TP = 1 and to transformers.

The draft always runs on one rank (in this process, or as a service over the torch.distributed
fast path, which then shares rank 0's process with the tensor-parallel group).
"""

from __future__ import annotations


import pytest

from saguaro import LLM, SamplingParams
from saguaro.services.draft.server import serve
from saguaro.speculative.settings import DraftSettings
from saguaro.services.target.local import speculative_engine
from saguaro.net import free_port
from tests_support import hf_greedy, make_prompts

NEW_TOKENS = 16


def prompts_for(vocab: int) -> list[list[int]]:
    return make_prompts(6, vocab, seed=31, min_len=4, max_len=30)


@pytest.mark.parametrize("name", ["llama_gqa3_vocab509", "qwen3_vocab383"])
def test_greedy_ar_identical_to_single_rank_and_transformers(tp_model_dirs, tp_config, name):
    prompts = prompts_for(380)
    params = SamplingParams(max_tokens=NEW_TOKENS)
    single = LLM.from_engine(speculative_engine(tp_config(name, block_size=8, max_num_seqs=4), "ar"), None)
    sharded = LLM.from_engine(speculative_engine(tp_config(name, tp=2, block_size=8, max_num_seqs=4), "ar"), None)
    try:
        tokens = [o.token_ids for o in sharded.generate(prompts, params)]
    finally:
        sharded.engine.runner.close()
    assert tokens == [o.token_ids for o in single.generate(prompts, params)]
    assert tokens == [hf_greedy(tp_model_dirs[name], p, NEW_TOKENS) for p in prompts]


def test_prefix_reuse_and_preemption_under_tensor_parallelism(tp_model_dirs, tp_config):
    """Block tables (shared prefix blocks, blocks freed and re-prefilled after preemption) are
    rank 0's decisions; the followers' caches must follow them exactly."""
    shared = list(range(3, 27))  # 3 full blocks of 8
    prompts = [shared + p for p in make_prompts(6, 380, seed=41, min_len=2, max_len=12)]
    # per rank: 1 KV head x 16 dims x (k, v) x 2 layers x 4 bytes = 256 bytes a token; 14 blocks of 8
    config = tp_config("llama", tp=2, block_size=8, max_num_seqs=4, max_model_len=64, kv_cache_bytes=256 * 8 * 14)
    engine = speculative_engine(config, "ar")
    try:
        outputs = LLM.from_engine(engine, None).generate(prompts, SamplingParams(max_tokens=NEW_TOKENS))
    finally:
        engine.runner.close()
    assert engine.scheduler.num_preemptions > 0 and engine.runner.blocks.stats.hit_tokens > 0
    assert [o.token_ids for o in outputs] == [hf_greedy(tp_model_dirs["llama"], p, NEW_TOKENS) for p in prompts]


@pytest.mark.parametrize("mode, target, draft, transport", [
    ("sd", "llama", "llama_draft_perturbed", "inprocess"),
    ("ssd", "qwen3", "qwen3_draft_perturbed", "inprocess"),
    ("ssd", "llama", "llama_draft_perturbed", "torch.distributed"),
])
def test_greedy_speculative_identical_to_transformers(tp_model_dirs, tp_config, mode, target, draft, transport):
    prompts = prompts_for(380)
    settings = DraftSettings(k=3, fan_out=2)
    draft_cfg = tp_config(draft, block_size=8, max_num_seqs=4, kv_cache_bytes=1 << 24)
    server = address = None
    if transport != "inprocess":
        address = f"127.0.0.1:{free_port()}"
        server = serve(draft_cfg, address, settings)
    engine = speculative_engine(tp_config(target, tp=2, block_size=8, max_num_seqs=4), mode, draft_cfg, settings,
                                draft_address=address, fast_path=None if transport == "grpc" else transport,
                                draft_soft_deadline=False)
    try:
        outputs = LLM.from_engine(engine, None).generate(prompts, SamplingParams(max_tokens=NEW_TOKENS))
    finally:
        engine.proposer.close()
        engine.runner.close()
        if server is not None:
            server.stop(None)
    assert [o.token_ids for o in outputs] == [hf_greedy(tp_model_dirs[target], p, NEW_TOKENS) for p in prompts]
    stats = [o.stats for o in outputs]
    assert all(s["mode"] == mode and s["transport"] == transport and s["fallback_rounds"] == 0 for s in stats)
    assert sum(sum(s["accepted_per_position"]) for s in stats) > 0
