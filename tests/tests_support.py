"""Helpers importable from any test module (``from tests_support import ...``).

transformers is the reference: greedy generation and per-step logits come from it.
"""

from __future__ import annotations

import functools

import torch


def make_prompts(count: int, vocab: int, seed: int = 0, min_len: int = 3, max_len: int = 40) -> list[list[int]]:
    """Varied-length prompts of token ids (avoiding the special ids 0-2)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (count,), generator=gen).tolist()
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]

@functools.lru_cache(maxsize=8)
def hf_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_greedy(model_dir: str, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Batch-1 greedy generation, stopping at EOS like the engine does."""
    model = hf_model(model_dir)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=2,
        )
    return out[0, len(prompt):].tolist()


def hf_logits(model_dir: str, token_ids: list[int]) -> torch.Tensor:
    """Logits at every position of ``token_ids`` ([T, V], fp32)."""
    with torch.inference_mode():
        return hf_model(model_dir)(torch.tensor([token_ids])).logits[0].float()


def flapping_governor():
    """A speculation governor that switches between speculative and plain rounds every couple
    of rounds whatever the timings: both kinds of round, and every switch between them,
    happen within a few tokens (exactness tests)."""
    from saguaro.services.target.governor import SpeculationGovernor

    return SpeculationGovernor(base_interval=1, max_interval=1, burst=2, min_rounds=1)
