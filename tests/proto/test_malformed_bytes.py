"""Bytes that are not a method's request message, sent to every method of every gRPC server we
run (target, draft, gateway) over real sockets: each gets INVALID_ARGUMENT with details naming
the message type, nothing is logged as an error, and the same method serves a valid request
right after (saguaro/rpc_services.py; random and damaged bytes: the property tests in tests/fuzz).
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import grpc
import pytest
from google.protobuf.message import Message

from saguaro.config import EngineConfig
from saguaro.net import free_port
from saguaro.rpc_services import add_service
from saguaro.speculative.handshake import PROTOCOL_VERSION
from saguaro.services.draft.server import serve as serve_draft
from saguaro.speculative.settings import DraftSettings
from saguaro.services.gateway import GatewayConfig, GatewayThread
from saguaro.services.target.local import speculative_engine
from saguaro.services.target.server import serve_target
from saguaro.tokenizer import load_tokenizer
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import routing_pb2 as rpb
from saguaro.v1 import speculation_pb2 as spb

SMALL = dict(kv_cache_bytes=16 << 20, max_num_seqs=8, show_progress=False)
MALFORMED = {
    "bad tag": b"\xff\xff\xff",  # field number 0 / an over-long varint tag
    "truncated varint": b"\x08\x80",  # field 1, a varint whose continuation byte never comes
    "truncated length": b"\x0a\x05ab",  # field 1, 5 bytes announced, 2 sent
}
GENERATE = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[3, 4, 5]), sampling=pb.SamplingParams(max_tokens=2))
# method path -> (request message, response message, a valid request)
INFERENCE = {
    "/saguaro.v1.Inference/Generate": (pb.GenerateRequest, pb.GenerateResponse, GENERATE),
    "/saguaro.v1.Inference/Abort": (pb.AbortRequest, pb.AbortResponse, pb.AbortRequest(request_id="r-1")),
    "/saguaro.v1.Inference/Health": (pb.HealthRequest, pb.HealthResponse, pb.HealthRequest()),
    "/saguaro.v1.Inference/ModelInfo": (pb.ModelInfoRequest, pb.ModelInfoResponse, pb.ModelInfoRequest()),
}
ROUTING = {
    "/saguaro.v1.TargetRouting/WatchKvEvents": (rpb.WatchKvEventsRequest, rpb.KvEventBatch,
                                               rpb.WatchKvEventsRequest()),
    "/saguaro.v1.TargetRouting/GetTokenizer": (rpb.GetTokenizerRequest, rpb.TokenizerFiles,
                                              rpb.GetTokenizerRequest()),
}
STREAMING = {"/saguaro.v1.Inference/Generate", "/saguaro.v1.TargetRouting/WatchKvEvents"}
HANDSHAKE, SESSION = "/saguaro.v1.Speculation/Handshake", "/saguaro.v1.Speculation/Session"


@pytest.fixture(scope="module")
def target(model_dirs):
    address = f"127.0.0.1:{free_port()}"
    server, loop = serve_target(speculative_engine(EngineConfig(model=model_dirs["llama"], **SMALL), "ar"),
                                load_tokenizer(model_dirs["llama"]), address)
    yield address
    server.stop(grace=None)
    loop.stop()


@pytest.fixture(scope="module")
def gateway(target):
    gateway = GatewayThread(GatewayConfig(targets=[target], host="127.0.0.1", port=0, http_port=None,
                                          health_interval_s=0.1)).start()
    gateway.wait_ready()
    yield gateway.grpc_address
    gateway.stop()


@pytest.fixture(scope="module")
def draft(model_dirs):
    address = f"127.0.0.1:{free_port()}"
    server = serve_draft(EngineConfig(model=model_dirs["llama_draft_perturbed"], **SMALL), address,
                         DraftSettings(k=3, fan_out=2))
    yield address
    server.stop(grace=None)


@pytest.fixture(scope="module")
def channels(target, gateway, draft):
    """server name -> an open channel to it."""
    with grpc.insecure_channel(target) as to_target, grpc.insecure_channel(gateway) as to_gateway, \
            grpc.insecure_channel(draft) as to_draft:
        yield {"target": to_target, "gateway": to_gateway, "draft": to_draft}


@pytest.fixture
def no_error_logged(caplog):
    """grpcio logs a traceback for each request it fails to deserialize; a refusal logs nothing."""
    with caplog.at_level(logging.WARNING):
        yield
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def assert_refused(error: grpc.RpcError, message_class: type[Message]) -> None:
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert f"malformed {message_class.DESCRIPTOR.name}" in error.details(), error.details()


def call_raw(channel: grpc.Channel, path: str, payload: bytes) -> list[bytes]:
    """The replies to ``payload`` sent as it is (no serializer); of WatchKvEvents, which never
    ends, the first."""
    if path not in STREAMING:
        return [channel.unary_unary(path)(payload, timeout=60)]
    replies = channel.unary_stream(path)(payload, timeout=60)
    try:
        return list(itertools.islice(replies, 1 if path.endswith("/WatchKvEvents") else None))
    finally:
        replies.cancel()


CASES = [("target", path) for path in [*INFERENCE, *ROUTING]] + [("gateway", path) for path in INFERENCE]


@pytest.mark.parametrize("server,path", CASES)
@pytest.mark.usefixtures("no_error_logged")
def test_malformed_bytes_are_invalid_argument_and_the_method_still_serves(channels, server, path):
    request_class, response_class, valid = {**INFERENCE, **ROUTING}[path]
    channel = channels[server]
    for payload in MALFORMED.values():
        with pytest.raises(grpc.RpcError) as error:
            call_raw(channel, path, payload)
        assert_refused(error.value, request_class)
    replies = [response_class.FromString(reply) for reply in call_raw(channel, path, valid.SerializeToString())]
    assert replies
    if path.endswith("/Generate"):
        assert replies[-1].final.finish_reason == pb.FINISH_REASON_LENGTH, replies[-1]


# -- draft -----------------------------------------------------------------------------------------
def handshake(channel: grpc.Channel) -> spb.HandshakeResponse:
    """A handshake the draft accepts (it answers its own facts even to an empty one, which it refuses)."""
    facts = spb.HandshakeResponse.FromString(channel.unary_unary(HANDSHAKE)(b"", timeout=60)).draft_model
    config = DraftSettings(k=3, fan_out=2).to_proto()
    config.max_model_len = 256
    request = spb.HandshakeRequest(protocol_version=PROTOCOL_VERSION, config=config, target_model=facts,
                                   transports_offered=[spb.TRANSPORT_GRPC])
    return spb.HandshakeResponse.FromString(channel.unary_unary(HANDSHAKE)(request.SerializeToString(), timeout=60))


def open_session(channel: grpc.Channel) -> tuple[tuple[str, str], ...]:
    response = handshake(channel)
    assert response.accepted, response.error_message
    return (("saguaro-session-id", response.session_id),)


def prefill(round_id: int) -> bytes:
    return spb.SpeculationRequest(round_id=round_id, prefill=spb.PrefillRequest(sequences=[
        spb.PrefillSequence(seq_id=round_id, prompt_token_ids=[5, 17, 42], reset=True, seed=1)])).SerializeToString()


def session(channel: grpc.Channel, messages: list[bytes], replies: list[spb.SpeculationResponse]) -> None:
    """Run a session of ``messages`` (sent as they are), collecting its replies in ``replies``."""
    for reply in channel.stream_stream(SESSION)(iter(messages), metadata=open_session(channel), timeout=60):
        replies.append(spb.SpeculationResponse.FromString(reply))


@pytest.mark.usefixtures("no_error_logged")
def test_a_malformed_handshake_is_invalid_argument_and_the_draft_still_accepts_one(channels):
    channel = channels["draft"]
    for payload in MALFORMED.values():
        with pytest.raises(grpc.RpcError) as error:
            channel.unary_unary(HANDSHAKE)(payload, timeout=60)
        assert_refused(error.value, spb.HandshakeRequest)
    open_session(channel)


@pytest.mark.parametrize("name", MALFORMED)
@pytest.mark.usefixtures("no_error_logged")
def test_a_malformed_message_ends_the_session_with_invalid_argument(channels, name):
    """The messages before it are answered; it has no readable round id, so it cannot be answered
    in-band like a decodable invalid request: the call ends. The next session is served."""
    channel, replies = channels["draft"], []
    with pytest.raises(grpc.RpcError) as error:
        session(channel, [prefill(1), MALFORMED[name], prefill(2)], replies)
    assert_refused(error.value, spb.SpeculationRequest)
    assert [r.round_id for r in replies] == [1] and replies[0].WhichOneof("kind") == "prefill"
    replies = []
    session(channel, [prefill(3)], replies)
    assert replies[0].prefill.rows[0].status == spb.ROW_STATUS_OK, replies


# -- an asyncio servicer with a request stream (no server of ours has one yet) ------------------------
class EchoSpeculation:
    """Answers each session request with its round id."""

    async def Handshake(self, request: spb.HandshakeRequest, context) -> spb.HandshakeResponse:
        return spb.HandshakeResponse(accepted=True)

    async def Session(self, requests, context):
        async for request in requests:
            yield spb.SpeculationResponse(round_id=request.round_id)


def test_an_asyncio_request_stream_ends_with_invalid_argument_at_a_malformed_message():
    async def run() -> None:
        server = grpc.aio.server()
        add_service(server, spb.DESCRIPTOR.services_by_name["Speculation"], EchoSpeculation())
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.stream_stream(SESSION)([prefill(1), MALFORMED["truncated varint"], prefill(2)],
                                                      timeout=30)
                replies = []
                with pytest.raises(grpc.RpcError) as error:
                    async for reply in call:
                        replies.append(spb.SpeculationResponse.FromString(reply).round_id)
                assert_refused(error.value, spb.SpeculationRequest)
                assert replies == [1]
                replies = [spb.SpeculationResponse.FromString(r).round_id
                           async for r in channel.stream_stream(SESSION)([prefill(3)], timeout=30)]
                assert replies == [3]
        finally:
            await server.stop(None)

    asyncio.run(run())
