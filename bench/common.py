"""Shared benchmark plumbing: thread pinning, prompt loading, result tables."""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "pystdlib-llama"


def add_pair_args(parser, new_tokens: int = 128, batch_sizes: tuple[int, ...] = (1, 4)) -> None:
    """The model pair, its prompts, and how much to decode (every speculative benchmark)."""
    parser.add_argument("--target", type=Path, default=DEFAULT_MODELS / "target")
    parser.add_argument("--draft", type=Path, default=DEFAULT_MODELS / "draft")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_MODELS / "prompts.jsonl")
    parser.add_argument("--new-tokens", type=int, default=new_tokens)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(batch_sizes))


def add_ssd_args(parser, regimes: tuple[str, ...] = ("raw", "emulated"), backup: str = "jit") -> None:
    """Regimes and the SSD configuration ``speculative.run_mode`` reads."""
    parser.add_argument("--regimes", nargs="+", choices=["raw", "emulated"], default=list(regimes))
    parser.add_argument("--profile", default="h100-70b-1b", help="emulation profile, PROFILE[:xS] (saguaro/emulation.py)")
    parser.add_argument("--ssd-k", type=int, default=5)
    parser.add_argument("--ssd-fan-out", type=int, default=3)
    parser.add_argument("--backup", choices=["jit", "fast", "adaptive"], default=backup)
    parser.add_argument("--transport", choices=["grpc", "unix", "torch.distributed"], default="unix")


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
