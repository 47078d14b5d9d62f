"""The target's decoding of what a draft sends, and the draft's reading of a handshake, on their own.

A draft is a separate process the target does not control; whatever bytes it answers with, the
target must keep decoding exactly: a reply is turned into proposals it can verify (tokens in the
vocabulary, K of them, a finite probability law) or ignored, never an exception in the round loop.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz.support import FLOATS, SPECULATION_CONFIG, damaged, fuzz_settings, mostly
from saguaro.sampling import SamplingParams
from saguaro.sequence import Sequence
from saguaro.speculative.settings import MAX_BUDGET, MAX_LOOKAHEAD, DraftSettings
from saguaro.services.target.proposer import DraftProposer
from saguaro.speculative import proposal_codec
from saguaro.v1 import speculation_pb2 as pb

K, VOCAB = 3, 11
DTYPES = st.sampled_from(sorted(proposal_codec.WIRE_DTYPES)) | st.integers(-3, 2**31 - 1)


def probs_payload(dtype: int, rows: int, vocab: int) -> st.SearchStrategy[bytes]:
    """Payloads of the right length (valid laws or any floats), or any bytes."""
    torch_dtype = proposal_codec.WIRE_DTYPES.get(dtype, torch.float32)
    law = st.lists(st.floats(0, 1, width=32), min_size=rows * vocab, max_size=rows * vocab).map(
        lambda xs: proposal_codec.encode(torch.tensor(xs).view(rows, vocab) + 1e-3, dtype)
        if dtype in proposal_codec.WIRE_DTYPES else b"")
    junk = st.lists(FLOATS, min_size=rows * vocab, max_size=rows * vocab).map(
        lambda xs: torch.tensor(xs, dtype=torch.float32).to(torch_dtype).view(torch.uint8).numpy().tobytes())
    return mostly(law, junk | st.binary(max_size=4 * rows * vocab + 8))


def assert_a_law(probs: torch.Tensor, rows: int, vocab: int) -> None:
    assert probs.shape == (rows, vocab) and probs.dtype == torch.float32
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    assert torch.allclose(probs.sum(-1), torch.ones(rows), atol=1e-3)


@fuzz_settings()
@given(data=st.data(), dtype=DTYPES, rows=st.integers(1, 4), vocab=st.integers(1, 16))
def test_decoding_any_payload_gives_a_law_or_a_value_error(data, dtype, rows, vocab):
    payload = data.draw(probs_payload(dtype, rows, vocab), label="payload")
    try:
        probs = proposal_codec.decode(payload, dtype, rows, vocab)
    except ValueError as exc:
        event(f"refused: {str(exc).split(' ')[0:3]}")
        return
    event("decoded")
    assert_a_law(probs, rows, vocab)


# -- the reply as a whole ---------------------------------------------------------------------
def sequences(temperatures: list[float]) -> list[Sequence]:
    return [Sequence(i + 1, [3, 4, 5, 6], 3, SamplingParams(temperature=t), None) for i, t in enumerate(temperatures)]


@pytest.fixture(scope="module")
def proposer() -> DraftProposer:
    """A proposer that never connects: only its reply decoding is exercised."""
    def unreachable():
        raise ConnectionError("not used")

    return DraftProposer(unreachable, pb.HandshakeRequest(), DraftSettings(k=K), VOCAB)


def reply_rows(count: int, dtype: int) -> st.SearchStrategy[list[pb.SpeculateRowReply]]:
    row = st.builds(
        lambda seq_id, status, hit, backup, tokens, is_sample, probs: pb.SpeculateRowReply(
            seq_id=seq_id, status=status, hit=hit, backup=backup, tokens=tokens, proposal_is_sample=is_sample,
            probs=probs),
        mostly(st.integers(1, count), st.integers(0, 2**64 - 1)),
        mostly(st.just(pb.ROW_STATUS_OK), st.integers(0, 2**31 - 1)),
        st.booleans(),
        st.integers(-2**31, 2**31 - 1),
        mostly(st.lists(st.integers(0, VOCAB - 1), min_size=K, max_size=K),
               st.lists(st.integers(-2**31, 2**31 - 1), max_size=2 * K)),
        st.booleans(),
        st.just(b"") | probs_payload(dtype, K, VOCAB),
    )
    return st.lists(row, min_size=count, max_size=count)


@fuzz_settings()
@given(data=st.data(), temperatures=st.lists(st.sampled_from([0.0, 0.7]), min_size=1, max_size=3), dtype=DTYPES)
def test_any_speculate_reply_gives_verifiable_proposals(proposer, data, temperatures, dtype):
    seqs = sequences(temperatures)
    reply = pb.SpeculateReply(rows=data.draw(reply_rows(len(seqs), dtype), label="rows"), probs_dtype=dtype)
    check_proposals(proposer, seqs, reply)


@fuzz_settings()
@given(data=st.data(), temperatures=st.lists(st.sampled_from([0.0, 0.7]), min_size=1, max_size=3),
       dtype=st.sampled_from(sorted(proposal_codec.WIRE_DTYPES)))
def test_damaged_reply_bytes_give_verifiable_proposals(proposer, data, temperatures, dtype):
    seqs = sequences(temperatures)
    valid = pb.SpeculationResponse(speculate=pb.SpeculateReply(rows=[
        pb.SpeculateRowReply(seq_id=s.seq_id, tokens=[1] * K, proposal_is_sample=True,
                             probs=proposal_codec.encode(torch.full((K, VOCAB), 1 / VOCAB), dtype)) for s in seqs],
        probs_dtype=dtype))
    payload = data.draw(damaged(valid.SerializeToString()) | st.binary(max_size=400), label="payload")
    try:
        reply = pb.SpeculationResponse.FromString(payload).speculate
    except Exception:  # protobuf's DecodeError: the channel reports it as a broken stream
        event("not a message")
        return
    if len(reply.rows) != len(seqs):
        event("row count differs (the proposer drops the round)")
        return
    check_proposals(proposer, seqs, reply)


def check_proposals(proposer: DraftProposer, seqs: list[Sequence], reply: pb.SpeculateReply) -> None:
    proposals = proposer._proposals(seqs, reply)
    event(f"{len(proposals)} of {len(seqs)} rows usable")
    by_id = {s.seq_id: s for s in seqs}
    for seq_id, proposal in proposals.items():
        seq = by_id[seq_id]
        assert len(proposal.tokens) == K and all(0 <= t < VOCAB for t in proposal.tokens)
        if proposal.probs is not None:
            assert_a_law(proposal.probs, K, VOCAB)
        elif seq.params.temperature > 0:
            assert not proposal.is_sample  # a sample without its law cannot be verified exactly


# -- handshake settings ---------------------------------------------------------------------------
@fuzz_settings()
@given(config=SPECULATION_CONFIG)
def test_any_speculation_config_gives_bounded_settings_or_a_value_error(config):
    try:
        settings = DraftSettings.from_proto(config)
    except ValueError as exc:
        event(f"refused: {str(exc)[:30]}")
        return
    event("accepted")
    assert 1 <= settings.k <= MAX_LOOKAHEAD and 1 <= settings.budget <= MAX_BUDGET
    assert len(settings.fan_out_hit) == len(settings.fan_out_miss) == settings.k + 1
    assert 0 < settings.downweight <= 1 and not math.isnan(settings.downweight)
    assert settings.probs_dtype in proposal_codec.WIRE_DTYPES
    assert settings.backup_policy in pb.BackupPolicy.values() and settings.fan_out_policy in pb.FanOutPolicy.values()
    assert DraftSettings.from_proto(settings.to_proto()) == settings  # what we agree on survives the wire
