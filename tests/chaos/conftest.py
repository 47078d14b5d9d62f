"""Chaos fixtures: a real local stack (redis-server, two draft + SSD target pairs, a gateway, all
child processes), a workload whose reference is transformers' greedy output, and the per-fault
report ($SAGUARO_CHAOS_REPORT)."""

from __future__ import annotations

import os

import pytest
from saguaro_loadtest.measure import write_report
from saguaro_loadtest.stack import Stack, StackSpec
from saguaro_loadtest.workload import Workload, prompt_pool
from tests_support import hf_greedy

MAX_TOKENS = 24
PROMPTS = 16
VOCAB = 500  # the tiny llama's (tests/conftest.py)


@pytest.fixture(scope="session")
def workload(model_dirs) -> Workload:
    """16 prompts and their target-only greedy tokens, from transformers (computed once)."""
    prompts = prompt_pool(PROMPTS, VOCAB, seed=9)
    expected = [hf_greedy(model_dirs["llama"], p, MAX_TOKENS) for p in prompts]
    return Workload(prompts, expected, MAX_TOKENS)


@pytest.fixture(scope="module")
def chaos_stack(model_dirs, tmp_path_factory):
    """Shared by a module's faults: each one leaves the stack serving (or says why it is not)."""
    stack = Stack(StackSpec(model_dirs["llama"], model_dirs["llama_draft_perturbed"],
                            tmp_path_factory.mktemp("chaos-logs"))).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def chaos_report():
    """Results by name; written (merged) to $SAGUARO_CHAOS_REPORT at the end of the session."""
    results: dict[str, dict] = {}
    yield results
    path = os.environ.get("SAGUARO_CHAOS_REPORT")
    if path:
        for name, value in results.items():
            write_report(path, name, value)
