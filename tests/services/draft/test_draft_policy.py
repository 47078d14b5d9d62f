"""Adaptive fan-out and backup choices of the draft."""

from __future__ import annotations

import random

import pytest

from saguaro.services.draft.policy import BUILD_MARGIN, FLAT_STEP, RoundEconomics, TreeBudget, expected_tokens, jit_pays


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


def test_tree_budget_builds_the_full_fan_out_until_it_has_a_time_and_a_cost():
    budget = TreeBudget(budget=12)
    assert budget.branches(batch=4, depth=5, budget_s=0.0) == 12  # the target has no estimate yet
    assert budget.branches(batch=4, depth=5, budget_s=0.010) == 12  # no build measured at this batch size
    budget.observe(batch=1, branches=12, depth=5, fixed_s=0.001, tree_s=0.050)
    assert budget.branches(batch=4, depth=5, budget_s=0.010) == 12  # batch 1's costs say nothing of batch 4


def test_tree_budget_tries_half_the_width_then_narrows_to_what_fits_along_the_measured_line():
    budget = TreeBudget(budget=12)
    # 12 branches: 1 ms of glue and fork, 5 steps of 4 ms = 21 ms against a 12 ms verify
    budget.observe(batch=4, branches=12, depth=5, fixed_s=0.001, tree_s=0.020)
    assert budget.branches(batch=4, depth=5, budget_s=0.030) == 12  # it fits a longer verify
    assert budget.branches(batch=4, depth=5, budget_s=0.012) == 6  # one width known: try half
    for _ in range(30):
        budget.observe(batch=4, branches=6, depth=5, fixed_s=0.001, tree_s=0.0125)  # 2.5 ms a step
    # the line through (6, 2.5 ms) and (12, 4 ms): step(m) = 1 + 0.25 m ms. What fits 0.9 * 12 ms:
    step = lambda m: 0.001 + 0.00025 * m
    room = 0.012 * (1 - BUILD_MARGIN) - 0.001
    assert budget.branches(batch=4, depth=5, budget_s=0.012) == max(m for m in range(1, 13) if 5 * step(m) <= room) == 3
    assert budget.branches(batch=4, depth=5, budget_s=1.0) == 12  # a long verify hides the whole tree
    # nothing fits: the widest tree whose step costs about what one branch's does
    flat = max(m for m in range(1, 13) if step(m) <= FLAT_STEP * step(1))
    assert budget.branches(batch=4, depth=5, budget_s=0.001) == flat == 2


def test_tree_budget_keeps_every_branch_where_a_narrower_step_would_cost_the_same():
    """On a GPU below its knee (or for a small model on a CPU, whose steps are overhead) a step
    costs about the same at any width: when the build cannot fit, narrowing the tree would lose
    hits and save nothing, so the depth model goes shallower instead."""
    budget = TreeBudget(budget=12)
    budget.observe(batch=1, branches=12, depth=5, fixed_s=0.001, tree_s=0.010)
    assert budget.branches(batch=1, depth=5, budget_s=0.005) == 6  # overran: half the width, once
    for _ in range(5):
        budget.observe(batch=1, branches=6, depth=5, fixed_s=0.001, tree_s=0.0095)
    assert budget.branches(batch=1, depth=5, budget_s=0.005) == 12
