"""vLLM's logits processors are exact in every mode: greedy tokens equal transformers' greedy
decoding of the target with independent processors implementing vLLM's formulas.

Each processor alone and all together, in one mixed batch with requests that use none (AR, SD
and SSD, several K and batch sizes); with a draft equal to the target every proposal is still
accepted, which shows the draft applies the same processors (docs/speculation.md, "Logits
processors").
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import (LogitsProcessor, LogitsProcessorList, MinNewTokensLengthLogitsProcessor,
                          RepetitionPenaltyLogitsProcessor, SequenceBiasLogitsProcessor)

from saguaro import SamplingParams
from saguaro.config import EngineConfig
from saguaro.engine import LLMEngine
from saguaro.llm import LLM
from saguaro.services.target.local import speculative_engine
from saguaro.speculative.settings import DraftSettings
from saguaro.v1 import speculation_pb2 as pb
from tests_support import hf_greedy, hf_model, make_prompts

NEW_TOKENS = 14


class PresenceFrequencyPenalty(LogitsProcessor):
    """vLLM's presence and frequency penalties over the generated tokens, from the formula:
    logit -= frequency * count(token in output) + presence * (count > 0)."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        output = input_ids[:, self.prompt_len:]
        counts = torch.zeros_like(scores).scatter_add_(1, output, torch.ones_like(output, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def reference(model_dir: str, prompt: list[int], params: SamplingParams, eos: frozenset[int]) -> list[int]:
    """transformers' greedy decoding with vLLM's processors in vLLM's order (logit_bias and
    min_tokens, then the repetition, frequency and presence penalties)."""
    stops = sorted(eos | set(params.stop_token_ids))
    processors = []
    if params.logit_bias:
        processors.append(SequenceBiasLogitsProcessor({(t,): b for t, b in params.logit_bias.items()}))
    if params.min_tokens:
        processors.append(MinNewTokensLengthLogitsProcessor(len(prompt), params.min_tokens, stops))
    if params.repetition_penalty != 1:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.presence_penalty or params.frequency_penalty:
        processors.append(PresenceFrequencyPenalty(len(prompt), params.presence_penalty, params.frequency_penalty))
    if not processors:
        return hf_greedy(model_dir, prompt, params.max_tokens)
    with torch.inference_mode():
        out = hf_model(model_dir).generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=params.max_tokens, do_sample=False, pad_token_id=2, eos_token_id=stops,
            logits_processor=LogitsProcessorList(processors))
    return out[0, len(prompt):].tolist()


def request_params(prompt: list[int], plain: list[int]) -> dict[str, SamplingParams]:
    """Each processor alone and all combined, chosen to change this prompt's greedy output
    ``plain``: the bias favours a token greedy would not pick, min_tokens holds back a stop token
    greedy emits early."""
    base = SamplingParams(max_tokens=NEW_TOKENS)
    stop = plain[2]
    return {
        "none": base,
        "presence": replace(base, presence_penalty=1.5),
        "frequency": replace(base, frequency_penalty=0.9),
        "repetition": replace(base, repetition_penalty=1.4),
        "repetition_below_1": replace(base, repetition_penalty=0.6),
        "logit_bias": replace(base, logit_bias={(plain[0] + 7) % 200 + 3: 4.0, plain[1]: -100.0}),
        "min_tokens": replace(base, min_tokens=8, stop_token_ids=[stop]),
        "min_p": replace(base, min_p=0.3),  # greedy keeps its argmax: no change
        "combined": replace(base, presence_penalty=-0.5, frequency_penalty=0.7, repetition_penalty=1.2,
                            logit_bias={plain[3]: 2.5}, min_tokens=5, stop_token_ids=[stop], min_p=0.1),
    }


@pytest.fixture(scope="module")
def batch(model_dirs):
    """A mixed batch: every kind of request, on varied prompts, with its reference tokens."""
    model = model_dirs["llama"]
    eos = LLMEngine(config(model, 1)).requests.eos_ids
    prompts = make_prompts(9, 380, seed=5, min_len=4, max_len=24)
    plains = [hf_greedy(model, p, NEW_TOKENS) for p in prompts]
    kinds = list(request_params(prompts[0], plains[0]))
    params = [request_params(p, plain)[kind] for p, plain, kind in zip(prompts, plains, kinds)]
    expected = [reference(model, p, sp, eos) for p, sp in zip(prompts, params)]
    changed = [e != plain for e, plain, kind in zip(expected, plains, kinds) if kind not in ("none", "min_p")]
    assert all(changed), "every processor must change its request's greedy output, or the test proves nothing"
    return prompts, params, expected


def config(model: str, batch_size: int) -> EngineConfig:
    return EngineConfig(model=model, block_size=8, kv_cache_bytes=1 << 24, max_model_len=256, max_num_seqs=batch_size,
                        show_progress=False)


def engine(model_dirs, mode: str, draft: str, k: int, batch_size: int):
    target = config(model_dirs["llama"], batch_size)
    if mode == "ar":
        return LLMEngine(target)
    settings = DraftSettings(k=k, fan_out=2, backup_policy=pb.BACKUP_POLICY_JIT)
    return speculative_engine(target, mode, config(model_dirs[draft], batch_size), settings, draft_soft_deadline=False)


@pytest.mark.parametrize("mode,draft,k,batch_size", [
    ("ar", None, 0, 9),
    ("sd", "llama_draft_perturbed", 3, 9),
    ("sd", "llama_draft_random", 2, 4),
    ("ssd", "llama_draft_perturbed", 3, 9),
    ("ssd", "llama_draft_perturbed", 1, 4),
    ("ssd", "llama_draft_random", 4, 9),
])
def test_greedy_tokens_equal_transformers_with_processors(model_dirs, batch, mode, draft, k, batch_size):
    prompts, params, expected = batch
    eng = engine(model_dirs, mode, draft, k, batch_size)
    try:
        outputs = LLM.from_engine(eng, None).generate(prompts, params)
        assert [o.token_ids for o in outputs] == expected
        if mode != "ar":  # a failing draft would leave plain decoding, still exact
            assert all(o.stats["fallback_rounds"] == 0 for o in outputs)
        if mode == "ssd":  # the speculation cache was built under the processors
            assert sum(o.stats["cache_hits"] for o in outputs) > 0
    finally:
        if mode != "ar":
            eng.proposer.close()


@pytest.mark.parametrize("mode", ["sd", "ssd"])
def test_copy_draft_accepts_every_proposal_under_penalties(model_dirs, batch, mode):
    """The draft processes its logits as the target does, so a draft equal to the target
    proposes exactly the target's processed greedy tokens: every proposed token is accepted
    (each request's last round may propose past its end, which is not a rejection)."""
    prompts, params, expected = batch
    k = 3
    eng = engine(model_dirs, mode, "llama_draft_copy", k, len(prompts))
    try:
        outputs = LLM.from_engine(eng, None).generate(prompts, params)
        assert [o.token_ids for o in outputs] == expected
        for out in outputs:
            stats = out.stats
            rounds, accepted = stats["spec_rounds"], sum(stats["accepted_per_position"])
            assert rounds > 0
            # every round but the last accepts all K (the last may be cut by the request's end)
            assert accepted >= (rounds - 1) * k, stats
        if mode == "ssd":  # the processed tree was built and used (a build that raised leaves only misses)
            assert sum(out.stats["cache_hits"] for out in outputs) > 0
    finally:
        eng.proposer.close()
