"""A request's ``draft_temperature`` reaches the draft and changes only what it proposes.

inference.proto: "Temperature the draft proposes with. Absent: equal to temperature. Affects
speed only". The draft samples its proposals, and the probabilities it ships for verification,
at the row's ``draft_temperature``; a greedy target accepts only its own argmax whatever was
proposed, so the output stays the target's greedy output.
"""

from __future__ import annotations

import math

import pytest

from saguaro import SamplingParams
from saguaro.config import EngineConfig
from saguaro.errors import InvalidRequestError
from saguaro.llm import LLM
from saguaro.services.draft.worker import DraftWorker
from saguaro.services.target.api import sampling_from_proto
from saguaro.services.target.local import speculative_engine
from saguaro.speculative.settings import DraftSettings
from saguaro.v1 import inference_pb2 as ipb
from tests_support import hf_greedy, make_prompts

NEW_TOKENS = 12


def test_the_target_reads_draft_temperature_and_the_default_max_tokens_from_the_wire():
    params = sampling_from_proto(ipb.SamplingParams(draft_temperature=0.5), ipb.DECODE_MODE_DEFAULT, "ssd")
    assert params.draft_temperature == pytest.approx(0.5) and params.proposal_temperature == pytest.approx(0.5)
    absent = sampling_from_proto(ipb.SamplingParams(temperature=0.7), ipb.DECODE_MODE_DEFAULT, "ssd")
    assert absent.draft_temperature is None and absent.proposal_temperature == pytest.approx(0.7)
    assert absent.max_tokens == 64  # inference.proto: an absent max_tokens is the server's default, 64
    with pytest.raises(InvalidRequestError, match="draft_temperature must be >= 0"):
        sampling_from_proto(ipb.SamplingParams(draft_temperature=math.nan), ipb.DECODE_MODE_DEFAULT, "ssd")


def test_draft_temperature_reaches_the_draft_and_greedy_output_stays_the_targets(model_dirs, monkeypatch):
    rows: list[tuple[float, float]] = []  # (draft_temperature, target_temperature) of every row the draft saw
    speculate = DraftWorker.speculate

    def recording(self, request):
        rows.extend((r.draft_temperature, r.target_temperature) for r in request.rows)
        return speculate(self, request)

    monkeypatch.setattr(DraftWorker, "speculate", recording)

    def config(name: str) -> EngineConfig:
        return EngineConfig(model=model_dirs[name], block_size=8, kv_cache_bytes=1 << 24, max_model_len=256,
                            show_progress=False)

    engine = speculative_engine(config("llama"), "ssd", config("llama_draft_perturbed"), DraftSettings(k=3, fan_out=2),
                                draft_soft_deadline=False)
    try:
        llm = LLM.from_engine(engine, None)
        prompts = make_prompts(2, 380, seed=5, min_len=4, max_len=20)
        outputs = llm.generate(prompts, SamplingParams(max_tokens=NEW_TOKENS, draft_temperature=0.9))
        assert [o.token_ids for o in outputs] == [hf_greedy(model_dirs["llama"], p, NEW_TOKENS) for p in prompts]
        assert rows and all(d == pytest.approx(0.9) and t == 0 for d, t in rows)

        rows.clear()  # without draft_temperature the draft proposes at the target's temperature
        llm.generate(prompts[:1], SamplingParams(max_tokens=4, temperature=0.7, seed=3))
        assert rows and all(d == pytest.approx(0.7) and t == pytest.approx(0.7) for d, t in rows)
    finally:
        engine.proposer.close()
