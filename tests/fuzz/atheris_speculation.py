"""atheris (libFuzzer) harness: bytes as the draft's reply to a speculate request, decoded the
way the target decodes it (SpeculationResponse, then the proposer's rows and probabilities).

Whatever a draft sends, the target must get verifiable proposals or none: tokens in the
vocabulary, K of them, a finite probability law. Any exception, or a proposal breaking that, is
a crash.

    python tests/fuzz/atheris_speculation.py [libFuzzer flags, e.g. -runs=10000 CORPUS_DIR]
"""

from __future__ import annotations

import sys

import atheris
import torch
from google.protobuf.message import DecodeError

from atheris_seeds import seed_corpus
from saguaro.sampling import SamplingParams
from saguaro.sequence import Sequence
from saguaro.v1 import speculation_pb2 as pb

with atheris.instrument_imports(include=["saguaro.speculative.proposal_codec", "saguaro.services.target.proposer"]):
    from saguaro.speculative.settings import DraftSettings
    from saguaro.services.target.proposer import DraftProposer
    from saguaro.speculative import proposal_codec

K, VOCAB = 3, 5


def unreachable():
    raise ConnectionError("the harness never connects")


def seed_reply(dtype: int) -> bytes:
    law = proposal_codec.encode(torch.full((K, VOCAB), 1 / VOCAB), dtype)
    rows = [pb.SpeculateRowReply(seq_id=i + 1, tokens=[1, 2, 3], proposal_is_sample=True, probs=law) for i in range(2)]
    reply = pb.SpeculateReply(rows=rows, probs_dtype=dtype)
    return pb.SpeculationResponse(round_id=9, speculate=reply).SerializeToString()


def main() -> None:
    proposer = DraftProposer(unreachable, pb.HandshakeRequest(), DraftSettings(k=K), VOCAB)
    seqs = [Sequence(i + 1, [3, 4], 2, SamplingParams(temperature=t), None) for i, t in enumerate((0.7, 0.0))]

    def one_input(data: bytes) -> None:
        try:
            reply = pb.SpeculationResponse.FromString(data).speculate
        except DecodeError:  # the channel reports a broken stream; the proposer falls back
            return
        if len(reply.rows) != len(seqs):
            return  # the proposer drops such a round before decoding rows
        for proposal in proposer._proposals(seqs, reply).values():
            assert len(proposal.tokens) == K and all(0 <= t < VOCAB for t in proposal.tokens)
            if proposal.probs is not None:
                probs = proposal.probs
                assert probs.shape == (K, VOCAB) and bool(torch.isfinite(probs).all()) and bool((probs >= 0).all())

    seed_corpus(sys.argv[1:], [seed_reply(dtype) for dtype in proposal_codec.WIRE_DTYPES], one_input)
    atheris.Setup([sys.argv[0], *sys.argv[1:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
