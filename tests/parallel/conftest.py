"""Tensor-parallel fixtures: tiny checkpoints whose shapes split across ranks awkwardly.

Beside the shared models (``llama``: 4 heads / 2 KV heads, vocab 500; ``qwen3``: head_dim 32 with
heads * head_dim != hidden), these add odd vocabularies (padded vocab shards), three query heads
per KV head, and a shape that only splits three ways.
"""

from __future__ import annotations

import pytest

from saguaro.config import EngineConfig
from saguaro.tiny_models import build_tiny_model

TP_MODELS = {
    # TP 2: 3 query heads + 1 KV head per rank; vocab 509 = 255 + 254 (+1 padding row)
    "llama_gqa3_vocab509": dict(family="llama", hidden_size=96, num_heads=6, num_kv_heads=2, head_dim=16,
                                intermediate_size=192, vocab_size=509, tie_word_embeddings=False, seed=4),
    # explicit head_dim 24 (4 * 24 != 64); tied odd vocab 383 = 192 + 191
    "qwen3_vocab383": dict(family="qwen3", num_heads=4, num_kv_heads=2, head_dim=24, vocab_size=383,
                           tie_word_embeddings=True, seed=5),
    # 3 KV heads: splits across 3 ranks (vocab 509 = 170 + 170 + 169), not across 2
    "llama_kv3": dict(family="llama", hidden_size=96, num_heads=6, num_kv_heads=3, head_dim=16,
                      intermediate_size=192, vocab_size=509, tie_word_embeddings=True, seed=6),
}


@pytest.fixture(scope="session")
def tp_model_dirs(tmp_path_factory, model_dirs) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tp_models")
    return {**model_dirs, **{name: str(build_tiny_model(root / name, **opts)) for name, opts in TP_MODELS.items()}}


@pytest.fixture(scope="session")
def tp_config(tp_model_dirs):
    """``tp_config(name, tp, **options)``: a small engine config for one of the models."""

    def make(name: str, tp: int = 1, **options) -> EngineConfig:
        options = {"block_size": 4, "kv_cache_bytes": 1 << 22, **options}
        return EngineConfig(model=tp_model_dirs[name], show_progress=False, tensor_parallel_size=tp, **options)

    return make
