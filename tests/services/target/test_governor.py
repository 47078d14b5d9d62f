"""The speculation governor: speculate only at batch sizes where it beats plain decoding.

The decision logic is driven with synthetic round costs (deterministic); one end-to-end test
gives a real engine a draft far slower than its target (emulated step times) and checks that
the engine stops speculating — with output still identical to the target alone (whose own
equality with transformers is tested in tests/engine) — and that
with a fast, accurate draft it keeps speculating.
"""

from __future__ import annotations

import pytest

from saguaro import LLM, SamplingParams
from saguaro.config import EngineConfig
from saguaro.speculative.settings import DraftSettings
from saguaro.services.target.governor import SpeculationGovernor
from saguaro.speculative.costs import bucket_of
from saguaro.services.target.local import speculative_engine
from tests_support import make_prompts


def two_armed(**settings) -> SpeculationGovernor:
    """A governor choosing between plain decoding and one speculative arm (SSD)."""
    return SpeculationGovernor(arms=("ar", "ssd"), **settings)


def speculates(governor: SpeculationGovernor, batch: int) -> bool:
    return governor.describe()[bucket_of(batch)]["choice"] != "ar"


def drive(governor: SpeculationGovernor, rounds: int, batch: int, spec_tps, plain_tps, warm_tps=None) -> list[bool]:
    """Run ``rounds`` rounds of a two-armed governor whose throughput is ``spec_tps(i)`` /
    ``plain_tps(i)`` tokens/s (``warm_tps(i)`` for a speculative round right after a plain
    one, when given); whether each speculated."""
    chosen = []
    for i in range(rounds):
        spec = governor.choose(batch) == "ssd"
        warm_up = spec and not (chosen[-1] if chosen else False)
        tps = (warm_tps if warm_up and warm_tps else spec_tps)(i) if spec else plain_tps(i)
        governor.record(batch, "ssd" if spec else "ar", batch * 3, batch * 3 / tps)
        chosen.append(spec)
    return chosen


def test_buckets_group_batch_sizes_by_powers_of_two():
    assert [bucket_of(b) for b in (1, 2, 3, 4, 5, 8, 9, 16, 17)] == [1, 2, 4, 4, 8, 8, 16, 16, 32]


def test_losing_speculation_is_switched_off_and_its_probes_get_rarer():
    governor = two_armed(base_interval=8, max_interval=256, burst=4)
    chosen = drive(governor, 2000, 4, spec_tps=lambda i: 50.0, plain_tps=lambda i: 100.0)
    # a cold bucket decodes plainly, then a burst measures speculation (its warm-up round apart)
    assert chosen[:12] == [False] * 8 + [True] * 4
    late = chosen[1000:]
    assert sum(late) <= 0.03 * len(late)  # only the rare probes speculate
    assert governor.buckets[4].interval == 256  # every probe confirmed the choice: interval doubled to the cap
    assert speculates(governor, 4) is False


def test_probes_of_a_badly_losing_mode_are_spaced_to_cost_one_percent():
    """Speculation at a third of plain throughput: a burst of 3 speculative rounds costs 6 plain
    rounds' worth of time, so bursts come at least 600 rounds apart (1 % budget)."""
    governor = two_armed(base_interval=16, max_interval=4096, burst=3, probe_budget=0.01)
    chosen = drive(governor, 3000, 16, spec_tps=lambda i: 100.0, plain_tps=lambda i: 300.0)
    assert governor.buckets[16].interval >= 600
    # the first measurement (a burst of 3), then at most a burst per 600 rounds
    assert sum(chosen) <= 3 + 3 * 5
    near_tie = two_armed(base_interval=16, max_interval=4096, burst=3, probe_budget=0.01)
    drive(near_tie, 100, 16, spec_tps=lambda i: 290.0, plain_tps=lambda i: 300.0)
    assert near_tie.buckets[16].interval <= 64  # a near-tie is worth re-checking often (doubling from 16)


def test_the_cost_of_switching_to_speculation_spaces_its_probes():
    """A near-tie in steady state, but the first speculative round after plain ones (a cache
    miss) runs at a tenth of plain throughput: each burst costs ~9 plain rounds, so at a 0.2 %
    budget bursts come ~4,500 rounds apart (4,096 at most), not every few dozen."""
    governor = two_armed(base_interval=16, max_interval=4096, burst=4)
    drive(governor, 400, 4, spec_tps=lambda i: 295.0, plain_tps=lambda i: 300.0, warm_tps=lambda i: 30.0)
    assert governor.buckets[4].interval >= 4000
    assert speculates(governor, 4) is False


def test_speculation_must_win_by_the_margin():
    """1.7 % faster in steady state is not worth switching for (margin 2 %); 5 % is."""
    for spec_tps, expected in ((305.0, False), (315.0, True)):
        governor = two_armed(base_interval=8, burst=4)
        drive(governor, 100, 2, spec_tps=lambda i: spec_tps, plain_tps=lambda i: 300.0)
        assert speculates(governor, 2) is expected


def test_a_burst_goes_on_while_the_modes_are_too_close_to_call():
    """Speculative rounds alternating between 200 and 500 tok/s against plain ones at 300: the
    estimates stay within two standard errors of each other, so the burst runs to ``max_burst``;
    speculation at half plain throughput is clear after the minimum burst."""
    noisy = two_armed(base_interval=8, burst=4, max_burst=20)
    chosen = drive(noisy, 60, 4, spec_tps=lambda i: 200.0 if i % 2 else 500.0, plain_tps=lambda i: 300.0)
    assert chosen[:8] == [False] * 8 and chosen[8:28] == [True] * 20 and not chosen[28]
    clear = two_armed(base_interval=8, burst=4, max_burst=20)
    chosen = drive(clear, 60, 4, spec_tps=lambda i: 150.0, plain_tps=lambda i: 300.0)
    assert chosen[8:12] == [True] * 4 and not any(chosen[12:])


def test_paying_speculation_stays_on():
    governor = two_armed(base_interval=8, max_interval=256, burst=4)
    chosen = drive(governor, 2000, 1, spec_tps=lambda i: 300.0, plain_tps=lambda i: 100.0)
    assert sum(chosen[1000:]) >= 0.97 * 1000
    assert speculates(governor, 1) is True


def test_choice_follows_a_change_in_the_economics():
    """Speculation loses for a while (say acceptance collapsed on a new kind of text), then pays
    again: a probe notices and the governor switches back."""
    governor = two_armed(base_interval=8, max_interval=64, burst=4)
    chosen = drive(governor, 1200, 2, spec_tps=lambda i: 50.0 if i < 600 else 300.0, plain_tps=lambda i: 100.0)
    assert sum(chosen[400:600]) <= 0.1 * 200
    assert sum(chosen[900:]) >= 0.9 * 300  # plain rounds left: the probes, at a doubling interval
    assert governor.buckets[2].interval <= 64


def test_batch_size_buckets_decide_independently():
    """Speculation pays at batch 1 and loses at batch 16 (the usual shape on real hardware)."""
    governor = two_armed(base_interval=8, max_interval=256, burst=4)
    small = large = 0
    for i in range(2000):  # the batch size changes every 50 rounds, as requests come and go
        batch, spec_tps, plain_tps = (1, 300.0, 100.0) if i // 50 % 2 == 0 else (16, 800.0, 1600.0)
        spec = governor.choose(batch) == "ssd"
        governor.record(batch, "ssd" if spec else "ar", 10, 10 / (spec_tps if spec else plain_tps))
        if i >= 1000:
            small += spec and batch == 1
            large += spec and batch == 16
    assert small >= 0.95 * 500 and large <= 0.05 * 500


def test_the_first_speculative_round_after_plain_ones_is_not_measured():
    """It is a guaranteed cache miss (the draft sat idle), not the steady state."""
    governor = two_armed(base_interval=2, burst=2, min_rounds=1)
    for _ in range(2):  # a cold bucket decodes plainly
        assert governor.choose(1) == "ar"
        governor.record(1, "ar", 1, 0.01)  # 100 tok/s
    assert governor.choose(1) == "ssd"  # a burst measures speculation
    governor.record(1, "ssd", 1, 1.0)  # the warm-up round after plain ones: 1 tok/s, measured apart
    assert governor.choose(1) == "ssd"
    governor.record(1, "ssd", 3, 0.01)  # 300 tok/s
    state = governor.describe()[1]
    assert state["tokens_per_s"] == {"ar": pytest.approx(100.0), "ssd": pytest.approx(300.0)}
    assert state["choice"] == "ssd"
    assert governor.buckets[1].warm["ssd"].per_second == pytest.approx(1.0)


def test_a_round_the_draft_left_unanswered_measures_nothing_and_makes_the_next_a_warm_up():
    governor = two_armed(base_interval=2, burst=2, min_rounds=1)
    drive(governor, 4, 1, spec_tps=lambda i: 300.0, plain_tps=lambda i: 100.0)  # plain, plain, warm-up, spec
    before = governor.describe()[1]
    assert governor.choose(1) == "ssd"
    governor.unanswered()  # the reply was late: the round ran plainly, slower than either mode
    assert governor.describe()[1] == before
    assert governor.choose(1) == "ssd"
    governor.record(1, "ssd", 1, 1.0)  # the miss that follows: not counted either
    assert governor.describe()[1] == before


@pytest.mark.parametrize("bad", [dict(base_interval=0), dict(base_interval=9, max_interval=8), dict(burst=1),
                                 dict(min_rounds=0), dict(probe_budget=1.0), dict(margin=1.0),
                                 dict(burst=8, max_burst=4)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="need"):
        SpeculationGovernor(**bad)


def _config(model_dir: str, pad_s: float | None = None) -> EngineConfig:
    return EngineConfig(model=model_dir, max_num_seqs=4, block_size=8, kv_cache_bytes=1 << 24, show_progress=False,
                        emulate_forward_s=pad_s)


def _generate(model_dirs, prompts, target_pad_s: float | None, draft_pad_s: float | None, governor):
    """SD outputs under ``governor``, and the target alone's (AR) outputs: 128 tokens each."""
    params = SamplingParams(max_tokens=128, ignore_eos=True)
    engine = speculative_engine(_config(model_dirs["llama"], target_pad_s), "sd",
                                _config(model_dirs["llama_draft_copy"], draft_pad_s), DraftSettings(k=3, fan_out=1),
                                governor=governor, draft_soft_deadline=False)
    outputs = LLM.from_engine(engine, None).generate(prompts, params)
    alone = LLM.from_engine(speculative_engine(_config(model_dirs["llama"]), "ar"), None).generate(prompts, params)
    return outputs, [o.token_ids for o in alone]


def test_a_slow_draft_is_switched_off_and_the_output_stays_exact(model_dirs):
    """Each draft step costs 20 ms, the target's forward ~1 ms: every SD round costs ~60 ms for
    at most 4 tokens, plain decoding ~1 ms per token. After measuring both, the engine decodes
    plainly except for rare probes."""
    prompts = make_prompts(4, 380, seed=5, min_len=4, max_len=20)
    governor = SpeculationGovernor(base_interval=4, max_interval=64, burst=2)
    outputs, alone = _generate(model_dirs, prompts, None, 0.02, governor)
    assert [o.token_ids for o in outputs] == alone
    stats = [o.stats for o in outputs]
    policy, spec = sum(s["policy_rounds"] for s in stats), sum(s["spec_rounds"] for s in stats)
    assert policy > 3 * spec
    assert all(s["fallback_rounds"] == 0 for s in stats)  # held by policy, not a draft failure
    assert speculates(governor, 4) is False


def test_a_fast_accurate_draft_keeps_speculating(model_dirs):
    """Target forwards padded to 20 ms, an exact copy as the draft: a round commits K+1 = 4
    tokens for about one target forward, so speculation wins and stays on."""
    governor = SpeculationGovernor(base_interval=4, max_interval=64, burst=2)
    outputs, alone = _generate(model_dirs, [[5, 6, 7]], 0.02, None, governor)
    assert outputs[0].token_ids == alone[0]
    stats = outputs[0].stats
    assert stats["spec_rounds"] > 3 * stats["policy_rounds"]
    assert speculates(governor, 1) is True


def test_a_cold_bucket_starts_plain_unless_speculation_wins_at_a_larger_batch():
    """A batch size seen for the first time decodes plainly (transient sizes never pay for
    measuring speculation) and probes speculation after ``base_interval`` rounds; once
    speculation won at batch 16, batch 4 starts speculating."""
    governor = two_armed(base_interval=8, max_interval=64, burst=3)
    assert drive(governor, 8, 8, spec_tps=lambda i: 500.0, plain_tps=lambda i: 100.0) == [False] * 8
    chosen = drive(governor, 200, 8, spec_tps=lambda i: 500.0, plain_tps=lambda i: 100.0)
    assert chosen[:3] == [True] * 3 and sum(chosen[100:]) >= 90  # the probe found speculation pays here
    winning = two_armed(base_interval=8, max_interval=64, burst=3)
    drive(winning, 40, 16, spec_tps=lambda i: 300.0, plain_tps=lambda i: 100.0)
    assert drive(winning, 8, 4, spec_tps=lambda i: 300.0, plain_tps=lambda i: 100.0) == [True] * 8


def test_while_plain_decoding_is_preferred_admitted_prompts_wait_for_their_first_speculative_round(model_dirs):
    """A prefill does not wait for the draft's when the batch will decode plainly; the draft gets
    the prompt with the sequence's first speculative round, and the output is unchanged."""
    prompts = make_prompts(2, 380, seed=9, min_len=4, max_len=12)
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    for governor, synced in ((SpeculationGovernor(base_interval=8, burst=4), False), (None, True)):
        engine = speculative_engine(_config(model_dirs["llama"]), "sd", _config(model_dirs["llama_draft_copy"]),
                                    DraftSettings(k=3, fan_out=1), governor=governor, draft_soft_deadline=False)
        try:
            seqs = [engine.add_request(p, params) for p in prompts]
            engine.step()  # the prefill (a cold bucket prefers plain decoding)
            assert all(s.num_output_tokens == 1 for s in seqs)
            assert all((s.seq_id in engine.proposer.views) is synced for s in seqs)
            while engine.has_work():
                engine.step()
            outputs = [s.output_token_ids for s in seqs]
            if governor is not None:  # the burst after 8 plain rounds speculated: the draft caught up
                assert sum(s.stats.spec_rounds for s in seqs) > 0
        finally:
            engine.proposer.close()
        alone = LLM.from_engine(speculative_engine(_config(model_dirs["llama"]), "ar"), None).generate(prompts, params)
        assert outputs == [o.token_ids for o in alone]


def drive_arms(governor: SpeculationGovernor, rounds: int, batch: int, tps: dict[str, float],
               warm_tps: float | None = None) -> list[str]:
    """Rounds at a fixed throughput per arm (``warm_tps`` for a speculative arm's first round
    after another arm's); the arm of each round."""
    chosen: list[str] = []
    for _ in range(rounds):
        arm = governor.choose(batch)
        warm = arm != "ar" and (chosen[-1] if chosen else "ar") != arm
        rate = warm_tps if warm and warm_tps else tps[arm]
        governor.record(batch, arm, batch * 3, batch * 3 / rate)
        chosen.append(arm)
    return chosen


def test_three_arms_the_fastest_wins_per_batch_size():
    """SSD wins at batch 1, synchronous SD at batch 16 (the draft's tree outgrows the verify),
    plain decoding at batch 64: each bucket settles on its own best arm and keeps probing the
    others in turn, rarely."""
    economics = {1: {"ar": 100.0, "sd": 200.0, "ssd": 300.0}, 16: {"ar": 1000.0, "sd": 1500.0, "ssd": 1200.0},
                 64: {"ar": 3000.0, "sd": 2000.0, "ssd": 1500.0}}
    for batch, tps in economics.items():
        governor = SpeculationGovernor(base_interval=8, max_interval=256, burst=4)
        governor.bind("ssd")
        chosen = drive_arms(governor, 3000, batch, tps)
        best = max(tps, key=tps.get)
        assert governor.describe()[bucket_of(batch)]["choice"] == best
        late = chosen[1500:]
        assert late.count(best) >= 0.95 * len(late)
        assert chosen[:8] == ["ar"] * 8 and set(chosen) == {"ar", "sd", "ssd"}  # cold: plain; every arm measured


def test_a_costlier_arm_must_beat_a_cheaper_one_by_the_margin():
    """SSD 1 % faster than SD is a tie (margin 2 %): the cheaper SD keeps the batch; 5 % wins."""
    for ssd_tps, expected in ((303.0, "sd"), (315.0, "ssd")):
        governor = SpeculationGovernor(base_interval=8, burst=4, arms=("ar", "sd", "ssd"))
        drive_arms(governor, 300, 2, {"ar": 100.0, "sd": 300.0, "ssd": ssd_tps})
        assert governor.describe()[2]["choice"] == expected


def test_every_arm_is_measured_before_probes_are_spaced_out():
    """SD clearly beats plain decoding at batch 4; however costly that makes a burst of plain
    rounds, SSD (never measured here yet) gets its first burst at the base interval."""
    governor = SpeculationGovernor(base_interval=8, max_interval=4096, burst=4)
    governor.bind("ssd")
    chosen = drive_arms(governor, 60, 4, {"ar": 100.0, "sd": 1000.0, "ssd": 300.0})
    assert "ssd" in chosen
    assert governor.describe()[4]["choice"] == "sd"


def test_a_forgotten_arm_is_re_measured_soon():
    """SSD lost at its old depth; after ``forget`` (a new depth), its estimate starts over and
    it is probed again within the base interval, where it now wins."""
    governor = SpeculationGovernor(base_interval=8, max_interval=4096, burst=4)
    governor.bind("ssd")
    drive_arms(governor, 2000, 4, {"ar": 100.0, "sd": 1000.0, "ssd": 300.0})
    assert governor.describe()[4]["interval"] > 100
    governor.forget(4, "ssd")
    assert governor.describe()[4]["tokens_per_s"]["ssd"] is None
    chosen = drive_arms(governor, 40, 4, {"ar": 100.0, "sd": 1000.0, "ssd": 1500.0})
    assert "ssd" in chosen[:20]
    drive_arms(governor, 200, 4, {"ar": 100.0, "sd": 1000.0, "ssd": 1500.0})
    assert governor.describe()[4]["choice"] == "ssd"


def test_arms_must_suit_the_mode():
    with pytest.raises(ValueError, match="cannot run the arms"):
        SpeculationGovernor(arms=("ar", "ssd")).bind("sd")
    with pytest.raises(ValueError, match="need arms"):
        SpeculationGovernor(arms=("sd", "ssd"))
    governor = SpeculationGovernor()
    governor.bind("sd")
    assert governor.arms == ("ar", "sd")


def test_an_ssd_engine_whose_governor_picks_sd_runs_synchronous_rounds_exactly(model_dirs):
    """SSD deployment, the SD arm only (besides plain decoding): the draft service's synchronous
    rounds (JIT drafting, no cache) commit the target's greedy tokens, count as ``sync_rounds``
    and count no cache lookups."""
    prompts = make_prompts(3, 380, seed=11, min_len=4, max_len=16)
    params = SamplingParams(max_tokens=48, ignore_eos=True)
    governor = SpeculationGovernor(base_interval=2, max_interval=8, burst=2, arms=("ar", "sd"))
    engine = speculative_engine(_config(model_dirs["llama"], 0.01), "ssd", _config(model_dirs["llama_draft_copy"]),
                                DraftSettings(k=3, fan_out=2), governor=governor, draft_soft_deadline=False)
    try:
        outputs = LLM.from_engine(engine, None).generate(prompts, params)
    finally:
        engine.proposer.close()
    alone = LLM.from_engine(speculative_engine(_config(model_dirs["llama"]), "ar"), None).generate(prompts, params)
    assert [o.token_ids for o in outputs] == [o.token_ids for o in alone]
    stats = [o.stats for o in outputs]
    assert sum(s["sync_rounds"] for s in stats) > 0
    assert all(s["cache_hits"] == s["cache_misses"] == 0 for s in stats)
    assert all(s["sync_rounds"] == s["spec_rounds"] for s in stats)
