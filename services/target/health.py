"""The target's health, decided once for both places that report it.

The ``Health`` RPC (``InferenceService``, what gateways route by) and the ``/healthz`` endpoint
of the metrics port (what Kubernetes probes) must never disagree, so both read
``target_health``; so do the target's grpc.health.v1 statuses (kubelet probes), through
``TargetHealth.serving``. A speculative target whose draft is not connected still serves: it decodes
without speculation, exactly, only slower. It is DEGRADED, not NOT_SERVING, so that routers
keep sending it work while operators see why it is slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from saguaro.standard_services import Serving
from saguaro.v1 import inference_pb2 as pb
from saguaro.wire import MODE_TO_PROTO

if TYPE_CHECKING:
    from saguaro.services.target.loop import EngineLoop

# /healthz words for each status (the probe reads the first word)
_HEALTHZ_WORDS = {pb.SERVING_STATUS_SERVING: "serving", pb.SERVING_STATUS_DEGRADED: "degraded",
                  pb.SERVING_STATUS_NOT_SERVING: "not serving"}


@dataclass(frozen=True)
class TargetHealth:
    status: int  # pb.ServingStatus
    mode: int  # pb.DecodeMode the target decodes with now (AR while degraded)
    draft_connected: bool
    message: str  # why DEGRADED / NOT_SERVING ("" when serving)

    @property
    def ready(self) -> bool:
        """Whether the target takes requests (a degraded target does)."""
        return self.status != pb.SERVING_STATUS_NOT_SERVING

    def healthz(self) -> tuple[bool, str]:
        """The ``/healthz`` answer: ready, and the status in words with the reason."""
        words = _HEALTHZ_WORDS[self.status]
        return self.ready, f"{words}: {self.message}" if self.message else words

    def serving(self) -> Serving:
        """The same answer for grpc.health.v1 (``saguaro.standard_services``): live and ready
        unless the engine loop died; degraded while decoding without the draft."""
        return Serving(live=self.ready, ready=self.ready, degraded=self.status == pb.SERVING_STATUS_DEGRADED)


def target_health(loop: EngineLoop) -> TargetHealth:
    """The health of the target ``loop`` serves."""
    engine = loop.engine
    proposer = engine.proposer
    connected = proposer is not None and proposer.channel is not None
    if not loop.alive:
        return TargetHealth(pb.SERVING_STATUS_NOT_SERVING, MODE_TO_PROTO[engine.mode], False,
                            "the engine loop is not running")
    if engine.mode != "ar" and not connected:
        return TargetHealth(pb.SERVING_STATUS_DEGRADED, pb.DECODE_MODE_AR, False,
                            "draft unavailable, decoding without speculation")
    return TargetHealth(pb.SERVING_STATUS_SERVING, MODE_TO_PROTO[engine.mode], connected, "")
