"""What the load sends and what it must get back: seeded prompts and their target-only greedy tokens."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Workload:
    prompts: list[list[int]]
    expected: list[list[int]]  # reference tokens per prompt
    max_tokens: int


def prompt_pool(count: int, vocab_size: int, seed: int, min_len: int = 4, max_len: int = 40) -> list[list[int]]:
    """Seeded prompts of token ids (3 .. vocab: no special ids) of varied lengths."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab_size) for _ in range(rng.randint(min_len, max_len))] for _ in range(count)]


def tiny_pair(root: Path) -> tuple[str, str]:
    """The test suite's tiny random Llama and a perturbed copy as its draft (partial acceptance),
    built in ``root``: benchmarks without model folders run on these."""
    from saguaro.tiny_models import build_tiny_model, perturbed_copy

    target = build_tiny_model(root / "target", family="llama")
    return str(target), str(perturbed_copy(target, root / "draft", noise=0.05))


def reference_outputs(model_dir: str, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    """Target-only greedy tokens (the in-process AR engine, no draft), computed once."""
    from saguaro import LLM, SamplingParams

    llm = LLM(model_dir, kv_cache_bytes=64 << 20, max_num_seqs=16, show_progress=False)
    return [o.token_ids for o in llm.generate([list(p) for p in prompts], SamplingParams(max_tokens=max_tokens))]
