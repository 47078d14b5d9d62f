"""The embedded default: a tiny target/draft pair built locally, so a fresh clone can run
Saguaro end to end with no model hub and no GPU."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DEMO_DIR = Path(os.environ.get("SAGUARO_CACHE", Path.home() / ".cache" / "saguaro")) / "demo-models"


def demo_models(root: Path = DEFAULT_DEMO_DIR) -> tuple[Path, Path]:
    """(target, draft) folders, built on first use: a 4-layer target and a perturbed 4-layer
    copy as its draft (a random draft would never agree with a random target)."""
    from saguaro.tiny_models import build_tiny_model, perturbed_copy

    target, draft = root / "target", root / "draft"
    if not (target / "model.safetensors").is_file():
        build_tiny_model(target, family="llama", hidden_size=128, num_layers=4, intermediate_size=256,
                         vocab_size=512, init_range=0.3, seed=0)
    if not (draft / "model.safetensors").is_file():
        perturbed_copy(target, draft, noise=0.03)
    return target, draft
