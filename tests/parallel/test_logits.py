"""TP = 2 (and 3) logits against TP = 1 and transformers, with real follower processes (gloo)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from saguaro.cache import BlockTable
from saguaro.model_runner import CausalChunk, ModelRunner
from tests_support import hf_logits


def assert_close_relative(ours: torch.Tensor, theirs: torch.Tensor, rel: float) -> None:
    err = (ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-6)
    assert err <= rel, f"max relative error {err:.2e} exceeds {rel:.0e}"


def trace(runner: ModelRunner) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """A prefill, single-token decode steps, then a batched verify-shaped forward (several
    sequences, multi-token chunks on cached prefixes): every row's logits, in order."""
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(3, runner.vocab_size, (30,), generator=gen).tolist()
    table = BlockTable()
    runner.blocks.allocate_prompt(table, tokens)
    rows = [runner.run_causal([CausalChunk(table.blocks, 0, tokens[:24])], all_logits=True)]
    rows += [runner.run_causal([CausalChunk(table.blocks, p, [tokens[p]])]) for p in range(24, 30)]
    seqs = [torch.randint(3, runner.vocab_size, (n,), generator=gen).tolist() for n in (11, 23, 6)]
    tables = []
    for s in seqs:
        tables.append(BlockTable())
        runner.blocks.allocate_prompt(tables[-1], s)
    splits = [7, 20, 1]
    runner.run_causal([CausalChunk(t.blocks, 0, s[:k]) for t, s, k in zip(tables, seqs, splits)])
    verify = runner.run_causal([CausalChunk(t.blocks, k, s[k:]) for t, s, k in zip(tables, seqs, splits)],
                               all_logits=True)
    return tokens, torch.cat(rows), verify


def replicated_bytes(model_dir: str) -> int:
    """Bytes of the tensors every rank reads whole (the norms)."""
    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as handle:
        return sum(handle.get_tensor(n).nbytes for n in handle.keys() if "norm" in n)


@pytest.mark.parametrize("name, tp", [
    ("llama", 2), ("qwen3", 2), ("llama_gqa3_vocab509", 2), ("qwen3_vocab383", 2), ("llama_kv3", 3),
])
def test_tensor_parallel_logits_match_single_rank(tp_model_dirs, tp_config, name, tp):
    single = ModelRunner(tp_config(name))
    sharded = ModelRunner(tp_config(name, tp=tp))
    try:
        tokens, rows, verify = trace(sharded)
        _, rows_single, verify_single = trace(single)
        loads = sharded.rank.loads
    finally:
        sharded.close()
    assert_close_relative(rows, rows_single, 1e-5)
    assert_close_relative(verify, verify_single, 1e-5)
    assert_close_relative(rows, hf_logits(tp_model_dirs[name], tokens), 1e-4)
    # each rank read only its shard: together the whole checkpoint once, plus the norms again
    whole = single.rank.loads[0].bytes_read
    assert len(loads) == tp
    assert sum(r.bytes_read for r in loads) == whole + (tp - 1) * replicated_bytes(tp_model_dirs[name])
    assert all(r.bytes_read < whole / tp * 1.1 for r in loads)
    assert all(r.peak_rss_bytes > 0 for r in loads)
