"""Fixed-shape steps for CUDA graphs (saguaro/step_graphs.py), on a CPU.

Nothing is captured on a CPU, but the bucketing, the padding onto a dense grid, the scratch slot
and the static buffers are the code a GPU replays. A padded step must give the eager step's
logits and write the same KV, and engines on padded steps must give transformers' tokens.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from saguaro import LLM, SamplingParams
from saguaro.config import EngineConfig
from saguaro.attention import causal_metadata
from saguaro.cache import BlockTable
from saguaro.model_runner import CausalChunk, ModelRunner
from saguaro.speculative.settings import DraftSettings
from saguaro.services.target.local import speculative_engine
from saguaro.step_graphs import MIN_CONTEXT, StepShape, batch_buckets, bucket_up, context_bucket, pad_step
from tests_support import hf_greedy, make_prompts

REPO = Path(__file__).resolve().parents[2]


def test_buckets_cover_every_batch_up_to_the_maximum():
    assert batch_buckets(1) == [1]
    assert batch_buckets(16) == [1, 2, 4, 8, 16]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    with pytest.raises(ValueError, match="at least 1"):
        batch_buckets(0)
    assert [bucket_up(n, [1, 2, 4, 8, 12]) for n in (1, 3, 5, 9, 12, 13)] == [1, 4, 8, 12, 12, None]
    assert context_bucket(1, 4096) == MIN_CONTEXT
    assert context_bucket(MIN_CONTEXT + 1, 4096) == 2 * MIN_CONTEXT
    assert context_bucket(3000, 3500) == 3500  # capped at the longest context
    assert context_bucket(3501, 3500) is None


def runner(model_dir: str, graphs: bool) -> ModelRunner:
    return ModelRunner(EngineConfig(model=model_dir, block_size=8, kv_cache_bytes=1 << 22, max_num_seqs=8,
                                    show_progress=False, step_graphs=graphs))


def _gpu_check():
    """scripts/gpu-check as a module: its graph trace is the workload both check."""
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(REPO / "scripts" / "gpu-check"))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    module = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_padded_steps_give_the_eager_logits_and_write_the_same_kv(model_dirs, name):
    eager, padded = runner(model_dirs[name], False), runner(model_dirs[name], True)
    assert eager.graphs is None and padded.graphs is not None and not padded.graphs.capture
    trace = _gpu_check().graph_trace
    want, got = trace(eager, eager.vocab_size), trace(padded, padded.vocab_size)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # every step fit a bucket: a prefill of 24, six decodes at batch 1, then three sequences
    # (bucket 4) with 5 queries each and a ragged step of up to 18; none ran eagerly
    assert padded.graphs.replays == 1 + 6 + 2
    assert set(padded.graphs.graphs) == {StepShape(1, 24, 256), StepShape(1, 1, 256), StepShape(4, 5, 256),
                                         StepShape(4, 18, 256)}
    # the same KV everywhere a sequence owns; padding wrote only the scratch block
    scratch = padded.graphs.scratch_slot
    assert scratch == (padded.kv.num_blocks - 1) * 8 and len(padded.blocks.blocks) == padded.kv.num_blocks - 1
    for (k_eager, v_eager), (k_padded, v_padded) in zip(eager.kv.layers, padded.kv.layers):
        torch.testing.assert_close(k_padded[:scratch], k_eager[:scratch], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v_padded[:scratch], v_eager[:scratch], rtol=1e-5, atol=1e-5)


def test_steps_outside_the_buckets_run_eagerly(model_dirs):
    padded = runner(model_dirs["llama"], True)
    padded.graphs.max_graph_tokens = 16
    table = BlockTable()
    tokens = list(range(3, 40))
    padded.blocks.allocate_prompt(table, tokens)
    eager = runner(model_dirs["llama"], False)
    eager_table = BlockTable()
    eager.blocks.allocate_prompt(eager_table, tokens)
    got = padded.run_causal([CausalChunk(table.blocks, 0, tokens)], all_logits=True)  # 37 tokens > 16
    assert padded.graphs.replays == 0 and not padded.graphs.graphs
    torch.testing.assert_close(got, eager.run_causal([CausalChunk(eager_table.blocks, 0, tokens)], all_logits=True))


def test_pad_step_lays_real_tokens_on_the_grid_and_padding_on_the_scratch_slot():
    meta, positions = causal_metadata([[0, 1], [2]], [10, 5], [2, 1], block_size=8)
    ids = torch.tensor([7, 8, 9])
    step = pad_step(ids, positions, meta, StepShape(batch=4, queries=2, context=16), scratch_slot=99)
    assert step.rows.tolist() == [0, 1, 2]  # sequence 0's two queries, then sequence 1's first
    assert step.input_ids.tolist() == [7, 8, 9, 0, 0, 0, 0, 0]
    assert step.positions[:3].tolist() == positions.tolist()
    assert step.meta.slot_mapping.tolist() == [8, 9, 20] + [99] * 5
    assert step.meta.dense and step.meta.context_slots.shape == (4, 16) and step.meta.mask.shape == (4, 2, 16)
    assert (step.meta.context_slots[2:] == 99).all() and (step.meta.context_slots[0, 10:] == 99).all()
    # every query sees at least one entry (no empty softmax row); padded sequences see entry 0 only
    assert step.meta.mask.any(-1).all()
    assert step.meta.mask[2:, :, 0].all() and not step.meta.mask[2:, :, 1:].any()
    # real queries keep their causal view: sequence 0's second query sees positions 0..9
    assert step.meta.mask[0, 1].tolist() == [True] * 10 + [False] * 6


@pytest.fixture(scope="module")
def expected(model_dirs):
    prompts = make_prompts(5, 380, seed=21)
    return {name: (prompts, [hf_greedy(model_dirs[name], p, 10) for p in prompts]) for name in ("llama", "qwen3")}


@pytest.mark.parametrize("name", ["llama", "qwen3"])
@pytest.mark.parametrize("mode", ["ar", "sd", "ssd"])
def test_engines_on_padded_steps_give_transformers_greedy_tokens(model_dirs, expected, name, mode):
    """Target and draft both on padded steps (the draft's glue and tree steps too)."""
    prompts, want = expected[name]
    options = dict(block_size=8, kv_cache_bytes=1 << 24, max_num_seqs=3, show_progress=False, step_graphs=True)
    if mode == "ar":
        llm = LLM(model_dirs[name], **options)
    else:
        draft = model_dirs["llama_draft_perturbed" if name == "llama" else "qwen3"]
        engine = speculative_engine(EngineConfig(model=model_dirs[name], **options), mode,
                                    EngineConfig(model=draft, **options), DraftSettings(k=3, fan_out=2))
        llm = LLM.from_engine(engine, None)
    try:
        outputs = llm.generate(prompts, SamplingParams(max_tokens=10))
        if mode == "ssd":  # the draft worker's glue and tree steps were padded too
            assert llm.engine.proposer.channel.worker.runner.graphs.replays > 0
    finally:
        if mode != "ar":
            llm.engine.proposer.close()
    assert [o.token_ids for o in outputs] == want
    assert llm.engine.runner.graphs.replays > 0
