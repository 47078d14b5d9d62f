"""The SD arm's lookahead: a cost model of round time and tokens per round, fed by measured
acceptance and step times (services/target/lookahead.py), and an SSD engine whose synchronous
rounds draft that many tokens and stay exact."""

from __future__ import annotations

import pytest

from saguaro import LLM, SamplingParams
from saguaro.config import EngineConfig
from saguaro.services.draft.settings import DraftSettings
from saguaro.services.target.governor import SpeculationGovernor
from saguaro.services.target.lookahead import LookaheadModel
from saguaro.services.target.local import speculative_engine
from tests_support import make_prompts


def measured(reach: list[float], verify_s: float, step_s: float, transport_s: float, batch: int = 1) -> LookaheadModel:
    """A model that has seen many rounds with exactly these statistics."""
    model = LookaheadModel(len(reach))
    rows = []  # 100 rows accepting n = i in the proportions reach implies
    for i in range(len(reach) + 1):
        rows += [i] * round(((reach[i - 1] if i else 1.0) - (reach[i] if i < len(reach) else 0.0)) * 100)
    for _ in range(200):
        model.observe_acceptance(rows, len(reach))
        model.observe_times(batch, verify_s, transport_s + step_s * 3, 0.0, step_s * 3, 3)
    return model


def test_the_best_lookahead_maximises_tokens_per_second():
    reach = [0.7, 0.5, 0.35, 0.25, 0.18]
    model = measured(reach, verify_s=0.006, step_s=0.0022, transport_s=0.0003)
    rates = {k: (1 + sum(reach[:k])) / (0.006 + k * 0.0022 + 0.0003) for k in range(1, 6)}
    assert model.best(1) == max(rates, key=rates.get) == 2
    assert model.rate(1, 2) == pytest.approx(rates[2], rel=0.02)
    # a cheap draft step (a GPU's 1 : 7.5) makes a longer lookahead pay
    gpu = {k: (1 + sum(reach[:k])) / (0.015 + k * 0.002 + 0.0001) for k in range(1, 6)}
    assert measured(reach, verify_s=0.015, step_s=0.002, transport_s=0.0001).best(1) == max(gpu, key=gpu.get) == 4


def test_a_verify_that_grows_with_the_lookahead_favours_a_shorter_one():
    """Measured at lookaheads 5 and 2, a CPU-like verify (1 ms a token) is read off a line:
    k = 1 then costs less than k = 2, and the best lookahead is shorter than with a flat verify."""
    reach = [0.9, 0.8, 0.7, 0.6, 0.5]
    flat = measured(reach, verify_s=0.006, step_s=0.001, transport_s=0.0)
    growing = measured(reach, verify_s=0.006, step_s=0.001, transport_s=0.0)
    for _ in range(200):
        growing.observe_times(1, 0.003 + 0.001 * 5, 0.005, 0.0, 0.005, 5)
        growing.observe_times(1, 0.003 + 0.001 * 2, 0.002, 0.0, 0.002, 2)
    times = growing.times[1]
    assert times.verify_s(1) == pytest.approx(0.004, rel=0.05) and times.verify_s(4) == pytest.approx(0.007, rel=0.05)
    assert growing.best(1) < flat.best(1)


def test_k_until_measured_and_times_per_batch_bucket():
    model = LookaheadModel(4)
    assert model.best(1) == 4  # nothing measured
    model.observe_acceptance([0, 1, 4], 4)
    assert model.best(1) == 4  # acceptance, but no times yet
    model.observe_times(1, 0.005, 0.030, 0.0, 0.028, 4)  # slow steps at batch 1
    assert model.best(1) < 4
    assert model.best(16) == 4  # batch 16 has its own times, none yet


def test_positions_a_round_did_not_propose_are_not_observed():
    model = LookaheadModel(4)
    model.observe_acceptance([2, 2], 2)
    assert model.reach == [1.0, 1.0, None, None]
    with pytest.raises(ValueError, match="at least 1"):
        LookaheadModel(0)


def _config(model_dir: str, pad_s: float | None) -> EngineConfig:
    return EngineConfig(model=model_dir, max_num_seqs=4, block_size=8, kv_cache_bytes=1 << 24, show_progress=False,
                        emulate_forward_s=pad_s)


def test_synchronous_rounds_draft_the_modelled_lookahead_and_stay_exact(model_dirs):
    """Draft steps padded to 10 ms against 3 ms target steps: a long lookahead does not pay, so
    after measuring, the SD arm's rounds draft fewer than K = 4 tokens; greedy output is the
    target's own."""
    prompts = make_prompts(2, 380, seed=13, min_len=4, max_len=12)
    params = SamplingParams(max_tokens=60, ignore_eos=True)
    governor = SpeculationGovernor(base_interval=2, max_interval=8, burst=2, arms=("ar", "sd"))
    engine = speculative_engine(_config(model_dirs["llama"], 0.003), "ssd",
                                _config(model_dirs["llama_draft_perturbed"], 0.01), DraftSettings(k=4, fan_out=1),
                                governor=governor, draft_soft_deadline=False)
    try:
        outputs = LLM.from_engine(engine, None).generate(prompts, params)
        chosen = engine.sd_lookahead.best(2)
    finally:
        engine.proposer.close()
    alone = LLM.from_engine(speculative_engine(_config(model_dirs["llama"], None), "ar"), None).generate(prompts, params)
    assert [o.token_ids for o in outputs] == [o.token_ids for o in alone]
    assert sum(o.stats["sync_rounds"] for o in outputs) > 0
    assert 1 <= chosen < 4
