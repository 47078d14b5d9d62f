"""Log probabilities are the target's, exactly, in every mode (saguaro/logprobs.py).

Each committed token's log probability and its top alternatives come from the target's verify
row that scored it (accepted draft tokens, bonus and correction tokens alike); they must equal
transformers' ``log_softmax`` of the target's logits on the same prefix, in AR, SD and SSD, at
several K and batch sizes, greedy and sampled (raw log probabilities: before temperature).
Prompt log probabilities must equal transformers' too, even when the prompt's blocks are in the
prefix cache (such a request recomputes its prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from saguaro import LLM, SamplingParams
from saguaro.config import EngineConfig
from saguaro.logprobs import TokenLogprob
from saguaro.services.target.local import speculative_engine
from saguaro.speculative.settings import DraftSettings
from tests_support import hf_logits, make_prompts

TOL = 1e-5
TOP = 5


@dataclass(frozen=True)
class Case:
    mode: str
    batch: int
    k: int = 0


CASES = [Case("ar", 3), Case("sd", 2, 1), Case("sd", 4, 3), Case("ssd", 1, 3), Case("ssd", 4, 6)]


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    """Varied prompts; the long one three times, so later copies find its blocks cached."""
    varied = make_prompts(4, 380, seed=5, min_len=3, max_len=12)
    long = make_prompts(1, 380, seed=6, min_len=20, max_len=20)[0]
    return [long, *varied[:2], long, *varied[2:], long]


def engine(model_dirs, case: Case):
    def config(name: str) -> EngineConfig:
        return EngineConfig(model=model_dirs[name], block_size=8, kv_cache_bytes=1 << 24, max_model_len=128,
                            max_num_seqs=case.batch, show_progress=False)

    if case.mode == "ar":
        return speculative_engine(config("llama"), "ar")
    return speculative_engine(config("llama"), case.mode, config("llama_draft_perturbed"),
                              DraftSettings(k=case.k, fan_out=2), draft_soft_deadline=False)


def reference(model_dir: str, token_ids: list[int]) -> torch.Tensor:
    """transformers' log probabilities: row j scores token j + 1."""
    return torch.log_softmax(hf_logits(model_dir, token_ids).double(), dim=-1)


def assert_matches(scored: TokenLogprob, row: torch.Tensor, top: int) -> None:
    assert abs(scored.logprob - row[scored.token_id].item()) <= TOL
    values, ids = row.topk(top)
    assert list(scored.top_ids) == ids.tolist()
    assert torch.allclose(torch.tensor(scored.top_logprobs, dtype=torch.float64), values, atol=TOL, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.mode}-b{c.batch}-k{c.k}")
def test_greedy_logprobs_equal_the_targets(model_dirs, prompts, case):
    params = SamplingParams(max_tokens=12, logprobs=TOP, prompt_logprobs=2)
    outputs = LLM.from_engine(engine(model_dirs, case), None).generate(prompts, params)
    for prompt, out in zip(prompts, outputs):
        ref = reference(model_dirs["llama"], prompt + out.token_ids)
        assert len(out.logprobs) == len(out.token_ids) and len(out.prompt_logprobs) == len(prompt) - 1
        for i, (token, scored) in enumerate(zip(out.token_ids, out.logprobs)):
            assert scored.token_id == token == scored.top_ids[0]  # greedy: the argmax
            assert_matches(scored, ref[len(prompt) - 1 + i], TOP)
        for j, scored in enumerate(out.prompt_logprobs):
            assert scored.token_id == prompt[j + 1]
            assert_matches(scored, ref[j], 2)


@pytest.mark.parametrize("case", [Case("ar", 2), Case("sd", 4, 3), Case("ssd", 3, 3)], ids=lambda c: f"{c.mode}-b{c.batch}-k{c.k}")
def test_sampled_logprobs_are_the_targets_raw_log_softmax(model_dirs, prompts, case):
    params = [SamplingParams(max_tokens=10, temperature=0.8, top_k=50, seed=i, logprobs=0) for i in range(len(prompts))]
    outputs = LLM.from_engine(engine(model_dirs, case), None).generate(prompts, params)
    for prompt, out in zip(prompts, outputs):
        ref = reference(model_dirs["llama"], prompt + out.token_ids)
        assert out.prompt_logprobs is None and len(out.logprobs) == len(out.token_ids)
        for i, (token, scored) in enumerate(zip(out.token_ids, out.logprobs)):
            assert scored.token_id == token and scored.top_ids == ()
            assert abs(scored.logprob - ref[len(prompt) - 1 + i][token].item()) <= TOL


def test_a_request_that_does_not_ask_gets_none(model_dirs, prompts):
    out = LLM.from_engine(engine(model_dirs, Case("ssd", 2, 3)), None).generate(prompts[:2], SamplingParams(max_tokens=4))
    assert all(o.logprobs is None and o.prompt_logprobs is None for o in out)


@pytest.mark.parametrize("field", ["logprobs", "prompt_logprobs"])
@pytest.mark.parametrize("value", [-1, 21, 1.5])
def test_out_of_range_counts_are_refused(field, value):
    from saguaro.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=field):
        SamplingParams(**{field: value}).validate()
