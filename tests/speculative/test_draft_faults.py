"""Draft failures cost speculation, never correctness or availability.

The draft runs as a real ``saguaro draft`` process. Killing it (SIGKILL) or freezing it
(SIGSTOP) mid-generation makes the target fall back to plain decoding within its deadline;
the greedy output stays identical to the target alone, the fallback is reported, and SSD
resumes once a draft is back. Incompatible pairs are refused at handshake; malformed messages
in either direction are answered or ignored while serving continues.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import grpc
import pytest

from saguaro import SamplingParams
from saguaro.config import EngineConfig
from saguaro.llm import LLM
from saguaro.services.draft.server import serve
from saguaro.speculative.settings import DraftSettings
from saguaro.services.draft.worker import DraftWorker
from saguaro.services.target.channels import InProcessChannel
from saguaro.services.target.engine import SpeculativeEngine
from saguaro.services.target.local import speculative_engine
from saguaro.services.target.proposer import IncompatibleDraft
from saguaro.v1 import speculation_pb2 as pb
from saguaro.v1 import speculation_pb2_grpc as pb_grpc
from saguaro.net import free_port
from tests_support import hf_greedy, start_draft_process

pytestmark = pytest.mark.slow  # kills and stalls draft services mid-generation

SETTINGS = DraftSettings(k=3, fan_out=2)
PROMPT = [7, 19, 23, 101, 5, 64]
NEW_TOKENS = 48


def start_draft(model: str, port: int) -> subprocess.Popen:
    return start_draft_process(model, port, SETTINGS)


def target_config(model: str) -> EngineConfig:
    return EngineConfig(model=model, block_size=8, kv_cache_bytes=1 << 24, show_progress=False)


def run_until(engine: SpeculativeEngine, seq, condition) -> None:
    while not seq.finished and not condition():
        engine.step()


@pytest.fixture(scope="module")
def expected(model_dirs):
    return hf_greedy(model_dirs["llama"], PROMPT, NEW_TOKENS)


@pytest.mark.parametrize("fault", ["kill", "stall"])
@pytest.mark.parametrize("fast_path", [None, "unix", "torch.distributed"], ids=["grpc", "unix", "torch.distributed"])
def test_draft_failure_mid_generation_falls_back_and_resumes(model_dirs, expected, fault, fast_path):
    port = free_port()
    draft = start_draft(model_dirs["llama_draft_copy"], port)
    engine = speculative_engine(target_config(model_dirs["llama"]), "ssd", settings=SETTINGS,
                                draft_address=f"127.0.0.1:{port}", fast_path=fast_path,
                                draft_timeout_s=2.0, retry_interval_s=0.2)
    try:
        params = SamplingParams(max_tokens=NEW_TOKENS)
        seq = engine.add_request(PROMPT, params)
        # (a busy machine may have let a reply be late already: the stall must meet none outstanding,
        # or its round would set no soft deadline of its own)
        run_until(engine, seq, lambda: seq.num_output_tokens >= 12 and not engine.proposer.reply_overdue)
        assert seq.stats.spec_rounds > 0
        late_before = engine.proposer.late_replies
        os.kill(draft.pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        run_until(engine, seq, lambda: False)
        stats = engine.request_stats(seq)
        assert seq.output_token_ids == expected
        assert stats["fallback_rounds"] > 0
        if fault == "stall":
            # one soft deadline, then plain rounds while the reply is overdue: the request ends
            # long before the 2 s hard timeout would declare the draft down
            assert engine.proposer.late_replies - late_before == 1 and engine.proposer.failures == 0
            os.kill(draft.pid, signal.SIGCONT)  # the late reply is dropped; the same session goes on
        else:  # a closed stream fails at once; a dead gloo peer only past the hard timeout
            assert engine.proposer.failures + engine.proposer.late_replies >= 1
            draft.wait()
            draft = start_draft(model_dirs["llama_draft_copy"], port)
        deadline = time.monotonic() + 60  # a bound, not a measurement: the hard timeout is 2 s
        while True:  # SSD resumes once the draft is back (after the hard timeout, for a dead peer)
            again = engine.add_request(PROMPT, params)
            run_until(engine, again, lambda: False)
            resumed = engine.request_stats(again)
            assert again.output_token_ids == expected
            if resumed["spec_rounds"] > 0:
                break
            assert time.monotonic() < deadline, "speculation did not resume"
        assert resumed["transport"] == (fast_path or "grpc")
    finally:
        engine.proposer.close()
        draft.kill()
        draft.wait()


def test_target_starts_without_a_draft_and_picks_it_up_later(model_dirs, expected):
    port = free_port()
    engine = speculative_engine(target_config(model_dirs["llama"]), "ssd", settings=SETTINGS,
                                draft_address=f"127.0.0.1:{port}", draft_timeout_s=2.0, retry_interval_s=0.2)
    draft = None
    try:
        first = LLM.from_engine(engine, None).generate(PROMPT, SamplingParams(max_tokens=NEW_TOKENS))[0]
        assert first.token_ids == expected and first.stats["spec_rounds"] == 0 and first.stats["fallback_rounds"] > 0
        draft = start_draft(model_dirs["llama_draft_copy"], port)
        time.sleep(0.3)  # let the retry interval pass so the next round reconnects
        second = LLM.from_engine(engine, None).generate(PROMPT, SamplingParams(max_tokens=NEW_TOKENS))[0]
        assert second.token_ids == expected and second.stats["spec_rounds"] > 0
    finally:
        engine.proposer.close()
        if draft is not None:
            draft.kill()
            draft.wait()


def test_incompatible_pair_is_refused_with_a_clear_error(model_dirs):
    address = f"127.0.0.1:{free_port()}"
    server = serve(target_config(model_dirs["qwen3_legacy"]), address, SETTINGS)
    try:
        with pytest.raises(IncompatibleDraft, match="vocabulary sizes differ: target 500, draft 384"):
            speculative_engine(target_config(model_dirs["llama"]), "ssd", settings=SETTINGS, draft_address=address)
    finally:
        server.stop(None)


def test_malformed_requests_get_errors_on_a_live_stream(model_dirs):
    address = f"127.0.0.1:{free_port()}"
    server = serve(target_config(model_dirs["llama_draft_copy"]), address, SETTINGS)
    try:
        from saguaro.model_runner import ModelRunner
        from saguaro.speculative.handshake import handshake_request

        stub = pb_grpc.SpeculationStub(grpc.insecure_channel(address))
        hello = handshake_request(ModelRunner(target_config(model_dirs["llama"])), SETTINGS, 4)
        response = stub.Handshake(hello, timeout=10)
        assert response.accepted and response.chosen_transport == pb.TRANSPORT_GRPC
        requests = [
            pb.SpeculationRequest(round_id=1),  # no kind at all
            pb.SpeculationRequest(round_id=2, prefill=pb.PrefillRequest(sequences=[
                pb.PrefillSequence(seq_id=1, prompt_token_ids=[5, 99_999])])),  # out-of-vocabulary id
            pb.SpeculationRequest(round_id=3, prefill=pb.PrefillRequest(sequences=[
                pb.PrefillSequence(seq_id=1, prompt_token_ids=PROMPT)])),  # a good one
        ]
        replies = list(stub.Session(iter(requests), metadata=(("saguaro-session-id", response.session_id),), timeout=30))
        assert [r.round_id for r in replies] == [1, 2, 3]
        assert replies[0].error.code == pb.ERROR_CODE_INVALID_REQUEST
        assert "outside [0, 500)" in replies[1].error.message
        assert replies[2].prefill.rows[0].status == pb.ROW_STATUS_OK
        no_session = list(stub.Session(iter(requests[2:]), metadata=(("saguaro-session-id", "bogus"),), timeout=30))
        assert no_session[0].error.code == pb.ERROR_CODE_NO_SESSION
    finally:
        server.stop(None)


class CorruptingWorker(DraftWorker):
    """A faulty draft: every other reply has out-of-range tokens, a short proposal or bad probs."""

    rounds = 0

    def speculate(self, request):
        reply = super().speculate(request)
        self.rounds += 1
        for row in reply.rows:
            if self.rounds % 3 == 1:
                row.tokens[0] = 10_000
            elif self.rounds % 3 == 2:
                del row.tokens[-1]
            elif row.probs:
                row.probs = row.probs[:-4]
        return reply


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_malformed_replies_are_ignored_and_serving_continues(model_dirs, expected, temperature):
    from saguaro.services.draft.worker import draft_runner

    def connect():
        runner = draft_runner(target_config(model_dirs["llama_draft_copy"]), SETTINGS)
        return InProcessChannel(CorruptingWorker(runner, SETTINGS))

    engine = SpeculativeEngine(target_config(model_dirs["llama"]), "ssd", SETTINGS, connect)
    try:
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=temperature, seed=3)
        out = LLM.from_engine(engine, None).generate(PROMPT, params)[0]
        assert len(out.token_ids) == NEW_TOKENS or out.finish_reason == "stop"
        if temperature == 0:
            assert out.token_ids == expected
        assert out.stats["fallback_rounds"] > 0  # the corrupted rounds ran without a proposal
    finally:
        engine.proposer.close()


def _slow_draft_engine(model_dirs, **options) -> SpeculativeEngine:
    """SD whose draft replies take 3 x 60 ms, while the target's rounds take 10 ms."""
    draft = EngineConfig(model=model_dirs["llama_draft_copy"], block_size=8, kv_cache_bytes=1 << 24,
                         show_progress=False, emulate_forward_s=0.06)
    target = EngineConfig(model=model_dirs["llama"], block_size=8, kv_cache_bytes=1 << 24, show_progress=False,
                          emulate_forward_s=0.01)  # a late reply arrives while plain rounds go on
    engine = speculative_engine(target, "sd", draft, SETTINGS, **options)
    engine.proposer.reply_s = 0.001  # as if every reply so far had been an instant cache hit
    return engine


def test_slow_but_steady_replies_raise_the_soft_deadline(model_dirs, expected):
    """The deadline learnt from fast replies (cache hits) must not keep rejecting replies that
    are slow by nature (every SD round drafts K tokens): after one late reply the deadline fits
    them and rounds speculate again."""
    engine = _slow_draft_engine(model_dirs)
    try:
        out = LLM.from_engine(engine, None).generate(PROMPT, SamplingParams(max_tokens=NEW_TOKENS))[0]
        assert out.token_ids == expected
        assert engine.proposer.late_replies == 1 and engine.proposer.failures == 0
        assert out.stats["spec_rounds"] > 1 and engine.proposer.reply_s >= 0.18
    finally:
        engine.proposer.close()


def test_without_a_soft_deadline_every_round_waits_for_its_reply(model_dirs, expected):
    """``--no-draft-soft-deadline``: the same slow replies are all waited for (up to the hard
    timeout), so every round speculates."""
    engine = _slow_draft_engine(model_dirs, draft_soft_deadline=False)
    try:
        out = LLM.from_engine(engine, None).generate(PROMPT, SamplingParams(max_tokens=NEW_TOKENS))[0]
        assert out.token_ids == expected
        assert engine.proposer.late_replies == 0 and engine.proposer.failures == 0
        assert out.stats["fallback_rounds"] == 0 and out.stats["spec_rounds"] == out.stats["rounds"]
    finally:
        engine.proposer.close()
