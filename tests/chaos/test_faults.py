"""Faults under load: SIGKILL and SIGSTOP/SIGCONT of the draft, a target, the gateway and Redis
at a seeded random moment while 4 clients stream greedy requests through the gateway.

Acceptance per fault: every request either completes with exactly the target-only greedy tokens
or fails with a retryable error before its first token (``failed_retryable``); nothing is
corrupted and nothing fails otherwise; afterwards the stack serves a request exactly without
anything else being restarted. A killed gateway or Redis is started again (a pod restart); a
killed draft or target stays down. The faults run in ``FAULT_PLAN`` order on one stack; each
also holds on its own (``-k``) on a fresh stack.
"""

from __future__ import annotations

import pytest

from saguaro_loadtest.faults import FAULT_PLAN, fault_name, run_fault

SEED = 20260


@pytest.mark.parametrize("service,fault", FAULT_PLAN, ids=[fault_name(*f) for f in FAULT_PLAN])
def test_fault_under_load_loses_and_corrupts_nothing(chaos_stack, workload, chaos_report, service, fault):
    result = run_fault(chaos_stack, workload, service, fault, seed=SEED + FAULT_PLAN.index((service, fault)))
    chaos_report[fault_name(service, fault)] = result.as_dict()
    assert result.inflight_at_fault > 0, "the fault must hit requests in flight"
    assert result.counts["corrupted"] == 0, result
    assert result.counts["failed"] == 0, result
    assert result.counts["completed"] > 0, result
    assert result.recovered, result
