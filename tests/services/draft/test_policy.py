"""Adaptive fan-out and backup choices of the draft."""

from __future__ import annotations

import random

import pytest

from saguaro.services.draft.policy import RoundEconomics, expected_tokens, jit_pays


def test_expected_tokens_matches_the_geometric_series():
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(1.0, 5) == 6.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def test_jit_pays_at_small_batch_and_not_at_large_batch():
    # hit rate 0.7, JIT as long as half a cycle: one row gains far more than it waits ...
    assert jit_pays(batch=1, k=5, alpha=0.8, hit_rate=0.7, cycle_s=0.015, jit_s=0.0075)
    # ... but with 32 rows some row almost always misses, and every round would pay the JIT
    assert not jit_pays(batch=32, k=5, alpha=0.8, hit_rate=0.7, cycle_s=0.015, jit_s=0.0075)
    # a useless draft never pays for JIT
    assert not jit_pays(batch=1, k=5, alpha=0.0, hit_rate=0.5, cycle_s=0.015, jit_s=0.01)


def test_acceptance_estimate_recovers_alpha_from_truncated_outcomes():
    rng = random.Random(0)
    econ = RoundEconomics(k=4, budget=10)
    for _ in range(4000):
        n = 0
        while n < 4 and rng.random() < 0.7:
            n += 1
        econ.observe_outcome(n, 4)
    assert econ.acceptance == pytest.approx(0.7, abs=0.02)


def test_backup_uses_the_batch_threshold_until_timings_are_measured():
    econ = RoundEconomics(k=3, budget=8)
    assert econ.use_jit(batch=2, threshold=4, depth=3) and not econ.use_jit(batch=8, threshold=4, depth=3)
    econ.observe_outcome(3, 3)
    econ.observe_outcome(1, 3)
    econ.observe_lookup(True)
    econ.observe_cycle(0.015)
    econ.observe_jit(0.0003)  # one step
    assert econ.use_jit(batch=8, threshold=4, depth=3)  # measured: JIT is nearly free, so it pays even at 8 rows


def test_acceptance_counts_a_full_shorter_round_as_no_rejection():
    econ = RoundEconomics(k=5, budget=10)
    econ.observe_outcome(2, 2)  # all of a depth-2 proposal accepted
    econ.observe_outcome(1, 5)
    assert econ.acceptance == pytest.approx(3 / 4)


def test_jit_is_priced_per_step_at_the_round_depth():
    econ = RoundEconomics(k=6, budget=12)
    for _ in range(20):
        econ.observe_outcome(1, 6)  # alpha = 0.5
    econ.observe_lookup(False)
    econ.observe_cycle(0.010)
    econ.observe_jit(0.004)  # a step costs 40 % of a cycle
    # deep backups cost too much at 4 rows; a depth-1 backup is cheap enough to pay
    assert not econ.use_jit(batch=4, threshold=8, depth=6)
    assert econ.use_jit(batch=4, threshold=0, depth=1)


def test_geometric_lists_keep_the_budget_and_move_with_acceptance():
    econ = RoundEconomics(k=3, budget=12)
    current = [3, 3, 3, 3]
    assert econ.geometric_lists(current) == current  # nothing observed yet
    for _ in range(50):
        econ.observe_outcome(3, 3)  # full acceptance every round
    lists = econ.geometric_lists(current)
    assert sum(lists) == 12 and lists[-1] == max(lists)
    econ.observe_outcome(2, 3)
    assert econ.geometric_lists(lists) == lists  # a small move keeps the allocation
    for _ in range(200):
        econ.observe_outcome(0, 3)
    low = econ.geometric_lists(lists)
    assert sum(low) == 12 and low[0] == max(low)
