"""Shared benchmark plumbing: thread pinning, prompt loading, result tables."""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "pystdlib-llama"


def pin_threads(threads: int = 1) -> None:
    """One thread per process: two processes with default threading on 2 cores thrash."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)


def load_prompts(path: Path, tokenizer, count: int) -> list[list[int]]:
    rows = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    if count > len(rows):
        raise SystemExit(f"{path} has {len(rows)} prompts, {count} requested")
    return [tokenizer.encode(text, add_special_tokens=False) for text in rows[:count]]


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
