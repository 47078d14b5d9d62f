"""The draft service: ``Speculation`` over gRPC (TCP or Unix socket).

One worker, one session at a time: a target owns its draft (the pair is the schedulable
unit). A new handshake replaces the previous session and starts from a clean state, which is
also how a restarted target re-synchronises. Within a session the stream is served strictly in
order: answer a request, then build the speculation cache, then read the next request.
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent import futures

import grpc

from saguaro.config import EngineConfig
from saguaro.services.draft.handshake import answer_handshake, model_facts
from saguaro.services.draft.settings import DraftSettings
from saguaro.services.draft.tree import tree_scratch_slots
from saguaro.services.draft.worker import DraftWorker, draft_runner
from saguaro.v1 import speculation_pb2 as pb
from saguaro.v1 import speculation_pb2_grpc as pb_grpc

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

    def Handshake(self, request: pb.HandshakeRequest, context) -> pb.HandshakeResponse:
        response, settings = answer_handshake(request, self.facts, self.instance_id)
        if not response.accepted:
            log.warning("refused target %s: %s", request.target_instance_id, response.error_message)
            return response
        with self._lock:
            self.worker = None
            if tree_scratch_slots(0, settings.k, settings.budget) > self.runner.lookahead_slots:
                self.runner = draft_runner(self.config, settings)  # the session needs more scratch room
            self.runner.reset_cache()  # a new session starts with no sequences
            self.worker = DraftWorker(self.runner, settings, build_cache=self.build_cache)
            self.session_id = response.session_id
        log.info("session %s: K=%d, fan-out %s, backup %s", response.session_id, settings.k, settings.fan_out_hit,
                 pb.BackupPolicy.Name(settings.backup_policy))
        return response

    def Session(self, requests, context):
        session = dict(context.invocation_metadata()).get("saguaro-session-id", "")
        worker = self.worker
        if worker is None or session != self.session_id:
            error = pb.SpeculationError(code=pb.ERROR_CODE_NO_SESSION, fatal=True,
                                        message="no handshake for this session id; call Handshake first")
            yield pb.SpeculationResponse(error=error)
            return
        for request in requests:
            if session != self.session_id:
                return  # superseded by a newer handshake
            yield worker.handle(request)
            worker.build()


def serve(config: EngineConfig, address: str, settings: DraftSettings | None = None, build_cache: bool = True) -> grpc.Server:
    """Start the draft service on ``address`` ("host:port" or "unix:/path"); returns the server."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)],
    )
    pb_grpc.add_SpeculationServicer_to_server(SpeculationService(config, settings or DraftSettings(), build_cache), server)
    if server.add_insecure_port(address) == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server
