"""Our model code against transformers: prefill and every decode step's logits (fp32)."""

from __future__ import annotations

import pytest
import torch

from saguaro.cache import BlockTable
from saguaro.config import EngineConfig
from saguaro.model_runner import CausalChunk, ModelRunner
from tests_support import hf_logits


MODELS = ["llama", "llama_untied_legacy", "qwen3", "qwen3_legacy"]


def assert_close_relative(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-4) -> None:
    scale = theirs.abs().max().clamp_min(1e-6)
    err = (ours - theirs).abs().max() / scale
    assert err <= rel, f"max relative error {err:.2e} exceeds {rel:.0e}"


@pytest.mark.parametrize("name", MODELS)
def test_prefill_and_decode_logits_match_transformers(model_dirs, name):
    model_dir = model_dirs[name]
    runner = ModelRunner(EngineConfig(model=model_dir, block_size=4, kv_cache_bytes=1 << 22, show_progress=False))
    tokens = torch.randint(3, runner.vocab_size, (37,), generator=torch.Generator().manual_seed(5)).tolist()
    expected = hf_logits(model_dir, tokens)

    blocks = runner.blocks
    table = BlockTable()
    assert blocks.allocate_prompt(table, tokens) == 0
    prompt_len = 29
    prefill = runner.run_causal([CausalChunk(table.blocks, 0, tokens[:prompt_len])], all_logits=True)
    assert_close_relative(prefill, expected[:prompt_len])
    for pos in range(prompt_len, len(tokens)):
        step = runner.run_causal([CausalChunk(table.blocks, pos, [tokens[pos]])])
        assert_close_relative(step[0], expected[pos])


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_batched_verify_block_matches_transformers(model_dirs, name):
    """Several sequences with multi-token chunks on top of cached prefixes in one forward."""
    model_dir = model_dirs[name]
    runner = ModelRunner(EngineConfig(model=model_dir, block_size=4, kv_cache_bytes=1 << 22, show_progress=False))
    gen = torch.Generator().manual_seed(9)
    seqs = [torch.randint(3, runner.vocab_size, (n,), generator=gen).tolist() for n in (11, 23, 6)]
    tables = []
    for s in seqs:
        t = BlockTable()
        runner.blocks.allocate_prompt(t, s)
        tables.append(t)
    splits = [7, 20, 1]  # prefix lengths cached first; the rest runs as a multi-query chunk
    runner.run_causal([CausalChunk(t.blocks, 0, s[:k]) for t, s, k in zip(tables, seqs, splits)])
    out = runner.run_causal([CausalChunk(t.blocks, k, s[k:]) for t, s, k in zip(tables, seqs, splits)], all_logits=True)
    expected = torch.cat([hf_logits(model_dir, s)[k:] for s, k in zip(seqs, splits)])
    assert_close_relative(out, expected)
