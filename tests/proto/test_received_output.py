"""``saguaro.resume.ReceivedOutput``: the one record of a relayed stream that the client SDK,
the gateway's migration and the target's resume share (inference.proto, ``Resume``)."""

from __future__ import annotations

from saguaro.resume import ReceivedOutput
from saguaro.v1 import inference_pb2 as pb


def test_a_resumed_request_starts_from_its_resume_and_continues_at_its_offset():
    request = pb.GenerateRequest(resume=pb.Resume(token_ids=[7, 8], text="ab"))
    received = ReceivedOutput.of_request(request)
    assert received.token_ids == [7, 8] and received.text == "ab"
    assert not received.continues(pb.TokenDelta(token_ids=[9], offset=0))  # a target that ignored resume
    assert received.continues(pb.TokenDelta(token_ids=[9], offset=2))
    received.add(pb.TokenDelta(token_ids=[9, 10], text="c", offset=2))
    received.add(pb.TokenDelta(token_ids=[11], offset=4))  # no text yet: a character still incomplete
    assert received.resume() == pb.Resume(token_ids=[7, 8, 9, 10, 11], text="abc")


def test_a_fresh_request_has_received_nothing():
    received = ReceivedOutput.of_request(pb.GenerateRequest())
    assert received.token_ids == [] and received.text == "" and received.resume() == pb.Resume()
    assert received.continues(pb.TokenDelta(token_ids=[1], offset=0))
