"""The public gRPC API (inference.proto) under fuzzing, at the gateway and at a target directly.

Field values out of range must get INVALID_ARGUMENT (or be served); random and damaged bytes sent
as the serialized message over a raw generic call must get INVALID_ARGUMENT "malformed <Message>"
when they do not decode (never gRPC's own INTERNAL or UNKNOWN) and be served or refused like any
request when they do; and the server must keep serving.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz.support import CONTEXT, FLOATS, INT32, LIVE, damaged, fuzz_settings, mostly
from saguaro.client import Client
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc

INFERENCE = "/saguaro.v1.Inference/"


@pytest.fixture(scope="module")
def target(model_dirs, module_targets):
    return module_targets(model_dirs["llama"], max_model_len=CONTEXT)


@pytest.fixture(scope="module")
def gateway(target, start_module_gateway):
    return start_module_gateway([target.address])


@pytest.fixture(scope="module", params=["gateway", "target"])
def server(request) -> str:
    """The gRPC address of the server under test: the gateway, or the target it routes to."""
    return request.getfixturevalue(request.param).address if request.param == "target" else \
        request.getfixturevalue("gateway").grpc_address


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server) as channel:
        yield channel


def still_serves(address: str) -> bool:
    with Client(address, timeout=30) as client:
        return client.generate([3, 4, 5], max_tokens=2).finish_reason == "length"


# -- field values --------------------------------------------------------------------------------
SAMPLING = st.builds(
    lambda max_tokens, temperature, top_p, top_k, seed, stops, ignore_eos, draft: pb.SamplingParams(
        **({} if max_tokens is None else {"max_tokens": max_tokens}), temperature=temperature, top_p=top_p,
        top_k=top_k, **({} if seed is None else {"seed": seed}), stop_token_ids=stops, ignore_eos=ignore_eos,
        **({} if draft is None else {"draft_temperature": draft})),
    mostly(st.none() | st.integers(1, 6), st.integers(0, 2**32 - 1)),
    mostly(st.sampled_from([0.0, 0.5, 1.5]), FLOATS),
    mostly(st.sampled_from([0.0, 0.5, 1.0]), FLOATS),
    mostly(st.integers(0, 40), st.integers(0, 2**32 - 1)),
    st.none() | st.integers(0, 2**64 - 1),
    st.lists(INT32, max_size=3),
    st.booleans(),
    mostly(st.none(), FLOATS))
PROMPT = mostly(st.text(min_size=1, max_size=60).map(lambda t: {"prompt_text": t})
                | st.lists(st.integers(3, 499), min_size=1, max_size=40).map(lambda ids: {"prompt_token_ids":
                                                                                          pb.TokenIds(ids=ids)}),
                st.none() | st.lists(INT32, max_size=80).map(lambda ids: {"prompt_token_ids": pb.TokenIds(ids=ids)}))


@fuzz_settings(LIVE)
@given(prompt=PROMPT, sampling=SAMPLING, decode_mode=mostly(st.sampled_from([0, 1]), st.integers(-3, 8)),
       individually=st.booleans(), request_id=mostly(st.just(""), st.text(max_size=300)),
       n=mostly(st.sampled_from([0, 1, 2]), st.integers(0, 2**32 - 1)))
def test_random_field_values_are_served_or_invalid_argument(channel, prompt, sampling, decode_mode, individually,
                                                            request_id, n):
    request = pb.GenerateRequest(sampling=sampling, decode_mode=decode_mode, stream_tokens_individually=individually,
                                 request_id=request_id, n=n, **(prompt or {}))
    try:
        messages = list(pb_grpc.InferenceStub(channel).Generate(request, timeout=60))
    except grpc.RpcError as error:
        event(error.code().name)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        return
    event("OK")
    assert messages[-1].WhichOneof("kind") == "final"
    assert messages[-1].final.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


# -- bytes ---------------------------------------------------------------------------------------
VALID = {
    "Generate": pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[3, 4, 5]),
                                   sampling=pb.SamplingParams(max_tokens=2)).SerializeToString(),
    "Abort": pb.AbortRequest(request_id="r-1").SerializeToString(),
    "ModelInfo": b"",
    "Health": b"",
}
REQUEST = {"Generate": pb.GenerateRequest, "Abort": pb.AbortRequest, "ModelInfo": pb.ModelInfoRequest,
           "Health": pb.HealthRequest}


def assert_clean(error: grpc.RpcError, method: str, payload: bytes) -> None:
    """INVALID_ARGUMENT: "malformed <Message>" for bytes that do not decode, else a field refused."""
    code, details = error.code(), error.details() or ""
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    try:
        REQUEST[method].FromString(payload)
    except DecodeError:
        event("malformed")
        assert f"malformed {REQUEST[method].DESCRIPTOR.name}" in details, details
    else:
        event("a field refused")


@fuzz_settings(LIVE)
@given(data=st.data(), method=st.sampled_from(sorted(VALID)))
def test_random_bytes_as_a_message_end_with_a_clean_status(channel, data, method):
    payload = data.draw(st.binary(max_size=200) | damaged(VALID[method]), label="bytes")
    streaming = method == "Generate"
    call = (channel.unary_stream if streaming else channel.unary_unary)(INFERENCE + method)  # bytes as they are
    try:
        replies = list(call(payload, timeout=60)) if streaming else [call(payload, timeout=60)]
    except grpc.RpcError as error:
        assert_clean(error, method, payload)
        return
    event(f"{method} served")
    if streaming:  # the bytes happened to be a valid request
        assert pb.GenerateResponse.FromString(replies[-1]).WhichOneof("kind") == "final"


def test_after_the_fuzzing_the_server_still_serves(server):
    assert still_serves(server)
