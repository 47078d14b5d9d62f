"""The target service: the engine loop, the public ``Inference`` API and the routing service on one gRPC server.

``loop.py`` owns the engine's thread, ``api.py`` the public API, ``kv_events.py`` what gateways
read from a target; this module wires them to a port.
"""

from __future__ import annotations

from concurrent import futures
from typing import TYPE_CHECKING

import grpc

from saguaro.errors import ConfigError
from saguaro.rpc_services import add_service
from saguaro.services.target.health import target_health
from saguaro.services.target.api import InferenceService
from saguaro.services.target.kv_events import KvEventHub, TargetRoutingService
from saguaro.services.target.loop import EngineLoop
from saguaro.standard_services import ServerHealth
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import routing_pb2 as rpb

if TYPE_CHECKING:
    from saguaro.services.target.engine import SpeculativeEngine
    from saguaro.services.target.telemetry import TargetTelemetry

CONTROL_THREADS = 16  # worker threads beyond the Generate streams: Health, Abort, facts, KV-event watches


def serve_target(engine: SpeculativeEngine, tokenizer, address: str, draft_model_name: str = "",
                 max_workers: int | None = None, telemetry: TargetTelemetry | None = None,
                 credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, EngineLoop]:
    """Start the engine loop and the Inference service on ``address`` ("host:port" or "unix:/path");
    TLS (or mTLS) with ``credentials`` (``saguaro.tls.server_credentials``), else plaintext.

    Next to ``Inference`` it serves ``TargetRouting`` (KV-cache events and the tokenizer) for
    gateways, and grpc.health.v1 and reflection (``saguaro.standard_services``; stop it with
    ``stop_serving`` to drain its health first). Every open Generate or WatchKvEvents stream holds a worker thread. Generate
    streams beyond ``max_workers`` (default: 4 × max_num_seqs, at least 32) are refused with
    RESOURCE_EXHAUSTED; ``CONTROL_THREADS`` more threads serve Health, Abort, the model's facts
    and the KV-event watches, so a loaded target still answers its health checks (a busy pod is
    not an unhealthy one).
    """
    streams = max_workers or max(32, 4 * engine.config.max_num_seqs)
    blocks = engine.runner.blocks
    hub = KvEventHub(blocks.block_size, initial=blocks.by_hash)
    blocks.listener = hub  # set before the loop thread starts: from then on only it changes blocks
    loop = EngineLoop(engine).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=streams + CONTROL_THREADS,
                                                    thread_name_prefix="inference"))
    if telemetry is not None:  # metrics and traces (services/target/telemetry.py), from the command line
        telemetry.attach(engine, loop)
    service = InferenceService(loop, tokenizer, draft_model_name, telemetry.requests if telemetry else None,
                               max_streams=streams)
    inference, routing = pb.DESCRIPTOR.services_by_name["Inference"], rpb.DESCRIPTOR.services_by_name["TargetRouting"]
    add_service(server, inference, service)
    add_service(server, routing, TargetRoutingService(hub, tokenizer, service._tokenizer_lock))
    # grpc.health.v1 and reflection (saguaro/standard_services.py), from the one health rule
    health = ServerHealth(server, (inference, routing), lambda: target_health(loop).serving())
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0 and not address.startswith("unix:"):
        loop.stop()
        raise ConfigError(f"cannot listen on {address}: the address is in use or invalid")
    if telemetry is not None:
        telemetry.requests.listening(address, port)
    server.start()
    health.follow(server)
    return server, loop
