"""Both sides of the speculation handshake: the target's request and the draft's answer.

They live together (and beside the session settings they carry) because the target and the
draft must agree on every field: keeping both sides in one module keeps them in step.

Pairing checks: a draft serves a target only if their token spaces agree. Speculation is exact
for any proposal, but a draft with another vocabulary or tokenizer would propose meaningless ids
(and sampled verification would index the wrong rows), so such a pair is refused at handshake
with a message that names the mismatch (docs/speculation.md).
"""

from __future__ import annotations

import os
import socket
import uuid

from saguaro.model_runner import ModelRunner
from saguaro.speculative.settings import DraftSettings
from saguaro.tokenizer import tokenizer_fingerprint
from saguaro.v1 import speculation_pb2 as pb
from saguaro.wire import DTYPE_TO_PROTO

PROTOCOL_VERSION = pb.PROTOCOL_VERSION_1


def model_facts(runner: ModelRunner) -> pb.ModelFacts:
    """What a peer must know about a loaded model to decide whether to pair with it."""
    cfg = runner.model_config
    fingerprint = tokenizer_fingerprint(runner.model_dir)
    return pb.ModelFacts(
        model_name=runner.model_dir.name,
        architecture=cfg.architecture,
        vocab_size=cfg.vocab_size,
        tokenizer_fingerprint=f"sha256:{fingerprint}" if fingerprint else "",
        dtype=DTYPE_TO_PROTO[str(runner.dtype)],
        max_model_len=runner.max_model_len,
        eos_token_ids=list(cfg.eos_token_ids),
    )


def host_identity() -> pb.HostIdentity:
    boot_id = ""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
    except OSError:
        pass
    ipc = ""
    try:
        ipc = os.readlink("/proc/self/ns/ipc")
    except OSError:
        pass
    return pb.HostIdentity(hostname=socket.gethostname(), boot_id=boot_id, ipc_namespace=ipc)


def pairing_problems(request: pb.HandshakeRequest, draft: pb.ModelFacts) -> list[str]:
    target = request.target_model
    problems = []
    if request.protocol_version != PROTOCOL_VERSION:
        problems.append(f"protocol version {request.protocol_version} is not supported (this draft speaks {PROTOCOL_VERSION})")
    if target.vocab_size != draft.vocab_size:
        problems.append(f"vocabulary sizes differ: target {target.vocab_size}, draft {draft.vocab_size}")
    if target.tokenizer_fingerprint and draft.tokenizer_fingerprint and target.tokenizer_fingerprint != draft.tokenizer_fingerprint:
        problems.append("tokenizers differ (tokenizer.json fingerprints do not match)")
    if request.config.max_model_len > draft.max_model_len:
        problems.append(f"target max_model_len {request.config.max_model_len} exceeds the draft's {draft.max_model_len}")
    return problems


FAST_PATHS = (pb.TRANSPORT_UNIX_SOCKET, pb.TRANSPORT_TORCH_DISTRIBUTED)  # what this draft serves besides gRPC


def choose_transport(request: pb.HandshakeRequest, ours: pb.HostIdentity) -> int:
    """The target's first offered fast path when it runs in this very pod, else gRPC.

    Both fast paths live in the network namespace (an abstract Unix socket, or a rendezvous on
    loopback), so the peers must share one. Same boot id alone is not enough: two pods on one
    node share it but not their network namespaces. Containers of one pod share the IPC
    namespace (as they share the network one), so both must match.
    """
    theirs = request.host
    same_pod = bool(ours.boot_id and ours.ipc_namespace) and (theirs.boot_id, theirs.ipc_namespace) == (
        ours.boot_id, ours.ipc_namespace)
    if same_pod:
        for transport in request.transports_offered:
            if transport in FAST_PATHS:
                return transport
    return pb.TRANSPORT_GRPC


def answer_handshake(request: pb.HandshakeRequest, facts: pb.ModelFacts, instance_id: str) -> tuple[pb.HandshakeResponse, DraftSettings | None]:
    """Check the pair and the session settings; on success return the settings to use."""
    response = pb.HandshakeResponse(draft_model=facts, protocol_version=PROTOCOL_VERSION, host=host_identity(),
                                    draft_instance_id=instance_id)
    problems = pairing_problems(request, facts)
    settings = None
    if not problems:
        try:
            settings = DraftSettings.from_proto(request.config)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        response.accepted = False
        response.error_message = "; ".join(problems)
        return response, None
    response.accepted = True
    response.chosen_transport = choose_transport(request, response.host)
    response.session_id = uuid.uuid4().hex
    return response, settings


def handshake_request(target_runner: ModelRunner, settings: DraftSettings, max_batch_size: int) -> pb.HandshakeRequest:
    config = settings.to_proto()
    config.max_batch_size = max_batch_size
    config.max_model_len = target_runner.max_model_len
    return pb.HandshakeRequest(
        protocol_version=PROTOCOL_VERSION,
        target_model=model_facts(target_runner),
        config=config,
        transports_offered=[pb.TRANSPORT_GRPC],
        host=host_identity(),
        target_instance_id=uuid.uuid4().hex,
    )
