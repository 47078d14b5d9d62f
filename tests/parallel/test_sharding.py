"""Shard layout and the command codec: pure functions, no processes."""

from __future__ import annotations

import multiprocessing as mp
import re

import pytest
import torch

from saguaro.attention import causal_metadata
from saguaro.config import ModelConfig
from saguaro.errors import ConfigError
from saguaro.model_runner import ModelRunner
from saguaro.parallel.commands import ForwardInputs, decode, encode, payload_size
from saguaro.parallel.sharding import shard_config, vocab_range


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("vocab", [500, 509, 383, 7])
def test_vocab_shards_cover_the_vocabulary_once(vocab, size):
    rows = -(-vocab // size)
    ranges = [vocab_range(vocab, rank, size) for rank in range(size)]
    assert [i for start, stop in ranges for i in range(start, stop)] == list(range(vocab))
    assert all(stop - start <= rows for start, stop in ranges)


def test_shard_config_splits_heads_and_pads_vocab(tp_model_dirs):
    cfg = ModelConfig.from_dir(tp_model_dirs["llama_gqa3_vocab509"])
    local = shard_config(cfg, 2)
    assert (local.num_heads, local.num_kv_heads, local.intermediate_size, local.vocab_size) == (3, 1, 96, 255)
    assert (local.hidden_size, local.head_dim) == (cfg.hidden_size, cfg.head_dim)
    assert shard_config(cfg, 1) is cfg


@pytest.mark.parametrize("name, size, dimension", [
    ("llama_untied_legacy", 2, "num_key_value_heads (1)"),
    ("llama_kv3", 2, "num_key_value_heads (3)"),
    ("llama_gqa3_vocab509", 4, "num_attention_heads (6)"),
    ("llama", 3, "num_attention_heads (4)"),
])
def test_unsplittable_shapes_are_refused_naming_the_dimension(tp_model_dirs, name, size, dimension):
    cfg = ModelConfig.from_dir(tp_model_dirs[name])
    with pytest.raises(ConfigError, match=re.escape(f"tensor_parallel_size {size} does not divide {dimension}")):
        shard_config(cfg, size)


def test_runner_refuses_before_starting_any_process(tp_config):
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        ModelRunner(tp_config("llama_untied_legacy", tp=2))
    assert mp.active_children() == []


@pytest.mark.parametrize("queries, logits", [([5, 1, 3], None), ([1, 1], [0, 1]), ([4], [3]), ([1, 1, 1], None)])
def test_command_payload_round_trips(queries, logits):
    contexts = [q + 6 for q in queries]
    tables = [[i * 4 + j for j in range(-(-c // 4))] for i, c in enumerate(contexts)]
    meta, positions = causal_metadata(tables, contexts, queries, 4)
    inputs = ForwardInputs(torch.arange(sum(queries)) + 3, positions, meta,
                           None if logits is None else torch.tensor(logits))
    header, payload = encode(inputs)
    assert payload.numel() == payload_size(header)
    out = decode(header, payload.clone())
    assert torch.equal(out.input_ids, inputs.input_ids) and torch.equal(out.positions, positions)
    for field in ("slot_mapping", "context_slots", "query_index", "query_valid", "mask"):
        ours, theirs = getattr(out.meta, field), getattr(meta, field)
        assert (ours is None and theirs is None) or torch.equal(ours, theirs), field
    assert out.meta.writes_all == meta.writes_all
    assert (out.logits_index is None) == (logits is None)
    if logits is not None:
        assert out.logits_index.tolist() == logits
