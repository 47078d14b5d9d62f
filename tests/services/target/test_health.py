"""``target_health``: the one rule behind the target's Health RPC and its ``/healthz``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from saguaro.services.target.health import target_health
from saguaro.v1 import inference_pb2 as pb


def loop(mode: str, alive: bool = True, draft: str = "connected") -> SimpleNamespace:
    """A stand-in EngineLoop: ``draft`` is "connected", "down" (no channel) or "none" (AR)."""
    proposer = None if draft == "none" else SimpleNamespace(channel=object() if draft == "connected" else None)
    return SimpleNamespace(alive=alive, engine=SimpleNamespace(mode=mode, proposer=proposer))


@pytest.mark.parametrize("served, status, mode, connected, healthz", [
    (loop("ssd"), pb.SERVING_STATUS_SERVING, pb.DECODE_MODE_SSD, True, (True, "serving")),
    (loop("ar", draft="none"), pb.SERVING_STATUS_SERVING, pb.DECODE_MODE_AR, False, (True, "serving")),
    (loop("ssd", draft="down"), pb.SERVING_STATUS_DEGRADED, pb.DECODE_MODE_AR, False,
     (True, "degraded: draft unavailable, decoding without speculation")),
    (loop("sd", alive=False), pb.SERVING_STATUS_NOT_SERVING, pb.DECODE_MODE_SD, False,
     (False, "not serving: the engine loop is not running")),
])
def test_health_rpc_and_healthz_say_the_same(served, status, mode, connected, healthz):
    health = target_health(served)
    assert (health.status, health.mode, health.draft_connected) == (status, mode, connected)
    assert health.healthz() == healthz
