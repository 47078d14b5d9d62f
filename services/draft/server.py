"""The draft service: ``Speculation`` over gRPC (TCP or Unix socket).

One worker, one session at a time: a target owns its draft (the pair is the schedulable
unit). A new handshake replaces the previous session and starts from a clean state, which is
also how a restarted target re-synchronises. Within a session the stream is served strictly in
order: answer a request, then build the speculation cache, then read the next request.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures

import grpc

from saguaro.config import EngineConfig
from saguaro.errors import ConfigError
from saguaro.rpc_services import add_service
from saguaro.speculative.handshake import answer_handshake, model_facts
from saguaro.speculative.settings import DraftSettings
from saguaro.services.draft.tree import tree_scratch_slots
from saguaro.services.draft.worker import DraftWorker, draft_runner
from saguaro.standard_services import ServerHealth, Serving
from saguaro.transport.socket_link import MessageLink, SocketListener
from saguaro.transport.torch_link import P2PLink
from saguaro.v1 import speculation_pb2 as pb
from saguaro.v1 import speculation_pb2_grpc as pb_grpc
from saguaro.net import free_port

log = logging.getLogger(__name__)

MAX_MESSAGE = 256 << 20


class SpeculationService(pb_grpc.SpeculationServicer):
    def __init__(self, config: EngineConfig, default_settings: DraftSettings, build_cache: bool = True):
        self.config = config
        self.build_cache = build_cache
        self.instance_id = uuid.uuid4().hex
        self.worker: DraftWorker | None = None
        self.session_id = ""
        self._lock = threading.Lock()
        self.runner = draft_runner(config, default_settings)
        self.facts = model_facts(self.runner)
        self.metrics = None  # saguaro.telemetry.metrics.DraftMetrics when metrics are served

    def Handshake(self, request: pb.HandshakeRequest, context) -> pb.HandshakeResponse:
        response, settings = answer_handshake(request, self.facts, self.instance_id)
        if not response.accepted:
            log.warning("refused target %s: %s", request.target_instance_id, response.error_message)
            return response
        with self._lock:  # waits for the previous session's current request to finish
            if tree_scratch_slots(0, settings.k, settings.budget) > self.runner.lookahead_slots:
                try:
                    runner = draft_runner(self.config, settings)  # the session needs more scratch room
                except ConfigError as exc:  # K x fan-out scratch beyond this draft's KV cache: refuse
                    response.accepted = False
                    response.ClearField("session_id")
                    response.ClearField("chosen_transport")
                    response.error_message = f"this draft cannot hold the session's speculation tree: {exc}"
                    log.warning("refused target %s: %s", request.target_instance_id, response.error_message)
                    return response
                self.worker, self.runner = None, runner
            self.runner.reset_cache()  # a new session starts with no sequences
            self.worker = DraftWorker(self.runner, settings, build_cache=self.build_cache)
            self.session_id = response.session_id
        if self.metrics is not None:
            self.metrics.sessions.inc()
        if response.chosen_transport == pb.TRANSPORT_UNIX_SOCKET:
            listener = SocketListener(response.session_id)  # bound before the target hears of it
            response.transport_params["address"] = listener.address
            self._serve_fast_path(response.session_id, listener.accept)
        elif response.chosen_transport == pb.TRANSPORT_TORCH_DISTRIBUTED:
            port = free_port()
            response.transport_params["host"] = "127.0.0.1"
            response.transport_params["port"] = str(port)
            self._serve_fast_path(response.session_id, lambda: P2PLink("127.0.0.1", port, rank=1))
        log.info("session %s: K=%d, fan-out %s, backup %s", response.session_id, settings.k, settings.fan_out_hit,
                 pb.BackupPolicy.Name(settings.backup_policy))
        return response

    def _serve_one(self, session: str, request: pb.SpeculationRequest) -> pb.SpeculationResponse | None:
        """Answer one request of ``session``; None once a newer handshake replaced it."""
        with self._lock:
            if session != self.session_id or self.worker is None:
                return None
            response = self.worker.handle(request)
            if self.metrics is not None:
                self.metrics.served(response)
            return response

    def _build(self, session: str) -> None:
        with self._lock:
            if session == self.session_id and self.worker is not None:
                started = time.perf_counter()
                self.worker.build()
                if self.metrics is not None:
                    self.metrics.built(time.perf_counter() - started, len(self.worker.cache))

    def _serve_fast_path(self, session: str, open_link: Callable[[], MessageLink]) -> None:
        """Serve ``session`` on a link of its own thread: the same strict order as the stream."""

        def serve() -> None:
            try:
                link = open_link()
                while True:
                    response = self._serve_one(session, pb.SpeculationRequest.FromString(link.recv()))
                    if response is None:
                        return
                    link.send(response.SerializeToString())
                    self._build(session)
            except Exception as exc:  # the target went away or the link broke: the session ends
                log.info("fast-path session %s ended: %s", session, exc)

        threading.Thread(target=serve, daemon=True, name="draft-fast-path").start()

    def Session(self, requests, context):
        session = dict(context.invocation_metadata()).get("saguaro-session-id", "")
        if not session or session != self.session_id:
            error = pb.SpeculationError(code=pb.ERROR_CODE_NO_SESSION, fatal=True,
                                        message="no handshake for this session id; call Handshake first")
            yield pb.SpeculationResponse(error=error)
            return
        for request in requests:
            response = self._serve_one(session, request)
            if response is None:
                return  # superseded by a newer handshake
            yield response
            self._build(session)


def serve(config: EngineConfig, address: str, settings: DraftSettings | None = None, build_cache: bool = True,
          telemetry=None, credentials: grpc.ServerCredentials | None = None) -> grpc.Server:
    """Start the draft service on ``address`` ("host:port" or "unix:/path"); returns the server.

    ``telemetry``: a ``saguaro.services.draft.telemetry.DraftTelemetry`` to feed (metrics);
    ``credentials``: TLS or mTLS (``saguaro.tls.server_credentials``), else plaintext. Next to
    ``Speculation`` it serves grpc.health.v1 and reflection; ``saguaro.standard_services.stop_serving``
    drains its health before stopping it.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)],
    )
    service = SpeculationService(config, settings or DraftSettings(), build_cache)
    if telemetry is not None:
        telemetry.attach(service)
    speculation = pb.DESCRIPTOR.services_by_name["Speculation"]
    add_service(server, speculation, service)
    # grpc.health.v1 and reflection (saguaro/standard_services.py): the model is loaded before the
    # port opens and a session failure ends only that session, so a draft serves until it drains
    ServerHealth(server, (speculation,), lambda: Serving(live=True, ready=True))
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server
