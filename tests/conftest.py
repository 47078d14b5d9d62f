"""Shared fixtures: tiny random checkpoints built once per test session.

Tests never read ../shared: a user's clone has no such folder. Every model here is written
by transformers into a temporary folder, with a tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from saguaro.tiny_models import build_tiny_model, perturbed_copy

torch.set_num_threads(1)

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

# name -> build_tiny_model options. Together they cover GQA, tied and untied heads, llama3
# rope scaling, a vocab that is not a power of two, Qwen3 with head_dim*heads != hidden, and
# both config layouts (current ``rope_parameters`` and legacy ``rope_theta``/``rope_scaling``).
TINY_MODELS = {
    "llama": dict(family="llama", rope_scaling=LLAMA3_ROPE),
    "llama_untied_legacy": dict(family="llama", tie_word_embeddings=False, legacy_config_layout=True,
                                rope_scaling=LLAMA3_ROPE, num_kv_heads=1, vocab_size=509, seed=3),
    "qwen3": dict(family="qwen3", head_dim=32, tie_word_embeddings=False, seed=1),
    "qwen3_legacy": dict(family="qwen3", head_dim=24, num_heads=4, num_kv_heads=4, tie_word_embeddings=True,
                         legacy_config_layout=True, vocab_size=384, seed=2),
}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    dirs = {name: str(build_tiny_model(root / name, **opts)) for name, opts in TINY_MODELS.items()}
    dirs["llama_draft_copy"] = str(perturbed_copy(dirs["llama"], root / "llama_draft_copy", noise=0.0))
    dirs["llama_draft_perturbed"] = str(perturbed_copy(dirs["llama"], root / "llama_draft_perturbed", noise=0.05))
    dirs["llama_draft_random"] = str(build_tiny_model(root / "llama_draft_random", family="llama", num_layers=1, seed=7))
    dirs["qwen3_draft_perturbed"] = str(perturbed_copy(dirs["qwen3"], root / "qwen3_draft_perturbed", noise=0.05))
    return dirs


# Whole folders that belong to one tier (docs/testing.md); marked here so that a test added to
# one of them joins its tier without a decorator.
TESTS = Path(__file__).resolve().parent
TIER_OF_FOLDER = {"chaos": "chaos", "soak": "slow", "parallel": "slow", "fuzz": "fuzz", "helm": "helm"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(TESTS):
            tier = TIER_OF_FOLDER.get(item.path.relative_to(TESTS).parts[0])
            if tier is not None:
                item.add_marker(tier)
