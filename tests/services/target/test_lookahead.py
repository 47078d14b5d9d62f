"""The lookahead of speculative rounds (services/target/lookahead.py): SD's best lookahead and
SSD's depth, cost models of round time and tokens per round fed by measured acceptance and
times, and SSD engines whose synchronous and SSD rounds propose that many tokens and stay exact."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from saguaro import LLM, SamplingParams
from saguaro.config import EngineConfig
from saguaro.speculative.costs import FULL_WEIGHT, Line
from saguaro.speculative.settings import DraftSettings
from saguaro.services.target.governor import SpeculationGovernor
from saguaro.services.target.lookahead import DepthModel, LookaheadModel, SSDRound
from saguaro.services.target.local import speculative_engine
from tests_support import make_prompts


def measured(reach: list[float], verify_s: float, step_s: float, transport_s: float, batch: int = 1) -> LookaheadModel:
    """A model that has seen many rounds with exactly these statistics."""
    model = LookaheadModel(len(reach))
    rows = []  # 100 rows accepting n = i in the proportions reach implies
    for i in range(len(reach) + 1):
        rows += [i] * round(((reach[i - 1] if i else 1.0) - (reach[i] if i < len(reach) else 0.0)) * 100)
    for _ in range(200):
        model.acceptance.observe(rows, len(reach))
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
    assert times.verify.at(1) == pytest.approx(0.004, rel=0.05) and times.verify.at(4) == pytest.approx(0.007, rel=0.05)
    assert growing.best(1) < flat.best(1)


def test_k_until_measured_and_times_per_batch_bucket():
    model = LookaheadModel(4)
    assert model.best(1) == 4  # nothing measured
    for _ in range(20):
        model.acceptance.observe([0, 1, 4], 4)
    assert model.best(1) == 4  # acceptance, but no times yet
    model.observe_times(1, 0.005, 0.030, 0.0, 0.028, 4)  # slow steps at batch 1
    assert model.best(1) < 4
    assert model.best(16) == 4  # batch 16 has its own times, none yet


def test_positions_a_round_did_not_propose_are_not_observed():
    """...and a position counts as measured only after enough rows: four rounds that happened
    never to accept the fifth token do not make P(n >= 5) = 0."""
    few = LookaheadModel(5)
    few.acceptance.observe([2, 3, 4, 4], 5)
    assert few.reach == [None] * 5
    model = LookaheadModel(4)
    for _ in range(20):
        model.acceptance.observe([2, 2], 2)
    assert model.reach == [1.0, 1.0, None, None]
    with pytest.raises(ValueError, match="at least 1"):
        LookaheadModel(0)


def _config(model_dir: str, pad_s: float | None, knee: int | None = None) -> EngineConfig:
    return EngineConfig(model=model_dir, max_num_seqs=4, block_size=8, kv_cache_bytes=1 << 24, show_progress=False,
                        emulate_forward_s=pad_s, emulate_knee_tokens=knee)


def governed_run(model_dirs, target_pad_s: float, draft_pad_s: float, settings: DraftSettings, arms: tuple[str, ...],
                 seed: int, max_tokens: int, base_interval: int, draft_knee: int | None = None,
                 inspect: Callable[[object], None] | None = None):
    """Two prompts through an SSD engine whose governor may use ``arms``, with padded steps (a
    draft step of n tokens: ``draft_pad_s * max(1, n / draft_knee)``); the engine (closed) and
    whether its greedy output equals plain decoding's. ``inspect`` sees the engine before its
    draft link closes."""
    prompts = make_prompts(2, 380, seed=seed, min_len=4, max_len=12)
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    governor = SpeculationGovernor(base_interval=base_interval, max_interval=8, burst=2, arms=arms)
    engine = speculative_engine(_config(model_dirs["llama"], target_pad_s), "ssd",
                                _config(model_dirs["llama_draft_perturbed"], draft_pad_s, draft_knee), settings,
                                governor=governor, draft_soft_deadline=False)
    try:
        outputs = LLM.from_engine(engine, None).generate(prompts, params)
        if inspect is not None:
            inspect(engine)
    finally:
        engine.proposer.close()
    alone = LLM.from_engine(speculative_engine(_config(model_dirs["llama"], None), "ar"), None).generate(prompts, params)
    return engine, outputs, [o.token_ids for o in outputs] == [o.token_ids for o in alone]


def test_synchronous_rounds_draft_the_modelled_lookahead_and_stay_exact(model_dirs):
    """Draft steps padded to 10 ms against 3 ms target steps: a long lookahead does not pay, so
    after measuring, the SD arm's rounds draft fewer than K = 4 tokens; greedy output is the
    target's own."""
    engine, outputs, exact = governed_run(model_dirs, 0.003, 0.01, DraftSettings(k=4, fan_out=1), ("ar", "sd"),
                                          seed=13, max_tokens=60, base_interval=2)
    assert exact
    assert sum(o.stats["sync_rounds"] for o in outputs) > 0
    assert 1 <= engine.sizing.sd_lookahead.best(2) < 4


def ssd_measured(reach: list[float], verify: dict[int, float], build_step_s: float, host_s: float = 0.0005,
                 link_s: float = 0.0003, hit: float = 0.8, batch: int = 1) -> DepthModel:
    """A depth model that has seen many SSD rounds: acceptance ``reach``, verify times per
    depth measured, a build of (depth + 1) steps, hits at rate ``hit`` after every outcome,
    and JIT backups that cost nothing (a fast path with every row answered)."""
    model = DepthModel(len(reach))
    rows = []
    for i in range(len(reach) + 1):
        rows += [i] * round(((reach[i - 1] if i else 1.0) - (reach[i] if i < len(reach) else 0.0)) * 100)
    for _ in range(200):
        model.acceptance.observe(rows, len(reach))
        for depth, verify_s in verify.items():
            build_s = (depth + 1) * build_step_s
            gap = verify_s + host_s  # from the previous reply to this request
            wait = link_s + max(0.0, build_s - gap)
            model.observe_round(SSDRound(batch, depth, gap + wait, verify_s, wait, 0.0, 0, 0, build_s, gap))
            model.observe_build(batch, depth, build_s)
        for j in range(len(reach) + 1):
            model.observe_lookup(j, len(reach), hit=(j % 10) < hit * 10)
    return model


def test_ssd_keeps_its_full_depth_while_the_build_hides_in_the_verify():
    """GPU-like (a draft step 2 ms against a 15 ms verify): a K = 5 tree (12 ms) fits inside
    the verify, so the deepest round commits most per round at the same round time."""
    reach = [0.8, 0.65, 0.5, 0.4, 0.3]
    model = ssd_measured(reach, {5: 0.015}, build_step_s=0.002)
    assert model.best(1) == 5


def test_ssd_goes_shallower_when_the_build_outlasts_the_verify():
    """CPU-like (a draft step 2.2 ms against a 6-8 ms verify): a K = 5 build (13 ms) makes the
    target wait every round; the modelled best depth is where build and verify meet, and the
    rates are the formula of the module's docstring."""
    reach = [0.7, 0.5, 0.35, 0.25, 0.18]
    verify = {5: 0.0082, 2: 0.0065}
    model = ssd_measured(reach, verify, build_step_s=0.0022)

    def expected(k: int) -> float:
        verify_k = 0.0065 + (0.0082 - 0.0065) / 3 * (k - 2)
        round_s = max(verify_k + 0.0005 + 0.0003, (k + 1) * 0.0022 + 0.0003)
        return (1 + sum(reach[:k])) / round_s

    rates = {k: expected(k) for k in range(1, 6)}
    assert model.rate(1, 3) == pytest.approx(rates[3], rel=0.05)
    assert model.best(1) == max(rates, key=rates.get) == 2


def test_the_build_budget_is_the_targets_own_time_between_reply_and_request():
    """What the target sends the draft with each SSD round: its verify at that depth, its host
    work and the link; nothing until measured."""
    assert DepthModel(5).build_budget(1, 5) is None
    model = ssd_measured([0.7, 0.5, 0.35, 0.25, 0.18], {5: 0.0082, 2: 0.0065}, build_step_s=0.0022)
    assert model.build_budget(1, 5) == pytest.approx(0.0082 + 0.0005 + 0.0003, rel=0.02)
    assert model.build_budget(1, 2) == pytest.approx(0.0065 + 0.0005 + 0.0003, rel=0.02)
    assert model.build_budget(4, 5) is None  # another batch-size bucket


def test_a_steep_line_read_below_its_measurements_predicts_no_negative_time():
    """Verify times measured only at deep rounds, read at depth 1, extrapolate below zero: the
    line stops at 0, so the build budget the target sends (uint32 microseconds on the wire) is
    never negative. A chaos run once failed every request of a step on exactly this."""
    line = Line()
    for _ in range(FULL_WEIGHT):
        line.observe(4, 0.001)
        line.observe(5, 0.009)
    assert line.at(1) == 0.0 and line.at(5) == pytest.approx(0.009)
    model = DepthModel(5)
    for _ in range(FULL_WEIGHT):
        for depth, verify_s in ((4, 0.001), (5, 0.009)):
            model.observe_round(SSDRound(batch_size=1, depth=depth, round_s=verify_s, verify_s=verify_s,
                                         draft_wait_s=0.0, backup_s=0.0, misses=0, fast=0))
    assert model.build_budget(1, 1) == 0.0


def test_ssd_depth_waits_for_measurements_and_keeps_a_near_tie():
    model = DepthModel(4)
    assert model.best(1) == 4  # nothing measured
    for _ in range(20):
        model.acceptance.observe([0, 1, 4], 4)
    assert model.best(1) == 4  # no times yet
    reach = [0.7, 0.5, 0.35, 0.25]
    close = ssd_measured(reach, {4: 0.010}, build_step_s=0.0021)  # a 10.5 ms build against ~10.8 ms
    assert close.best(1) == 4
    assert close.best(16) == 4  # another bucket: its own times, none yet


def test_hit_rate_weighs_each_outcome_by_its_chance_at_the_depth():
    """h(k) = sum_j P(n = j | k) g_j: the 'all accepted' outcome (a bonus token, no exclusion)
    is looked up as its own class, whatever depth it followed."""
    model = DepthModel(3)
    for _ in range(10):
        model.acceptance.observe([0, 1, 2, 3], 3)  # P(n >= 1, 2, 3) = 3/4, 2/4, 1/4
    for _ in range(50):
        model.observe_lookup(0, 3, True)  # rejected at 1: always covered
        model.observe_lookup(1, 3, False)  # rejected at 2: never
        model.observe_lookup(3, 3, True)  # all accepted: always
    # depth 1: P(n=0) g_0 + P(n>=1) g_all = 1/4 + 3/4; depth 3: 1/4 + 1/4 * 0 + 1/4 * g_2 + 1/4,
    # g_2 never looked up: the pooled rate of all lookups (100 hits of 150)
    assert model.hit_rate(1) == pytest.approx(1.0)
    assert model.hit_rate(3) == pytest.approx(0.25 + 0.25 * 2 / 3 + 0.25)
    model.observe_lookup(1, 1, False)  # all of a depth-1 round accepted, not covered
    assert model.hit_rate(1) < 1.0


@pytest.mark.slow
def test_ssd_rounds_go_shallower_when_draft_steps_are_slow_and_stay_exact(model_dirs):
    """Draft steps padded to 5 ms against 20 ms target steps: SSD beats plain decoding, but its
    build of K = 4 (5 steps, 25 ms) outlasts the verify, so after measuring, SSD rounds propose
    fewer than K tokens; greedy output is the target's own."""
    engine, _, exact = governed_run(model_dirs, 0.020, 0.005, DraftSettings(k=4, fan_out=2), ("ar", "ssd"),
                                    seed=17, max_tokens=100, base_interval=4)
    assert exact
    assert 1 <= engine.sizing.ssd_depth.best(2) < 4


def test_the_draft_narrows_a_tree_past_its_knee_to_fit_the_verify_and_stays_exact(model_dirs):
    """Draft steps cost 2 ms up to 4 tokens and grow past them (a GPU's knee, scaled down): two
    rows of 10 branches make a tree step of 20 tokens, 10 ms, so a K = 4 build outlasts the
    20 ms verify. The target sends its measured time with each round, and the draft builds
    fewer branches; greedy output is the target's own."""
    seen = {}

    def widths(engine) -> None:
        seen.update(engine.proposer.channel.worker.tree_budget.costs[2].step.by_x)

    _, _, exact = governed_run(model_dirs, 0.020, 0.002, DraftSettings(k=4, fan_out=2), ("ar", "ssd"),
                               seed=19, max_tokens=80, base_interval=4, draft_knee=4, inspect=widths)
    assert exact
    assert max(seen) == 10 and min(seen) < 10, seen
