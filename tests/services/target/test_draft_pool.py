"""Draft data parallelism: a pool of draft workers shares one target's batch.

Greedy exactness with pools (in process, gRPC, torch.distributed) is part of the matrix in
tests/speculative/test_exactness_greedy.py; here: how sequences are placed on workers, that
replies come back in the request's order, that one worker's death costs speculation only
(exact output, fallback, recovery with the whole pool), and that every worker must accept the
pairing at handshake.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from saguaro import SamplingParams
from saguaro.config import EngineConfig
from saguaro.errors import ConfigError
from saguaro.speculative.handshake import handshake_request
from saguaro.services.draft.server import serve
from saguaro.speculative.settings import DraftSettings
from saguaro.services.target.draft_pool import DraftPool
from saguaro.services.target.local import in_process_connector, speculative_engine
from saguaro.services.target.proposer import IncompatibleDraft
from saguaro.model_runner import ModelRunner
from saguaro.net import free_port
from saguaro.v1 import speculation_pb2 as pb
from tests_support import hf_greedy, start_draft_process

SETTINGS = DraftSettings(k=3, fan_out=2)
PROMPT = [7, 19, 23, 101, 5, 64]


def config(model: str) -> EngineConfig:
    return EngineConfig(model=model, block_size=8, kv_cache_bytes=1 << 24, show_progress=False)


@pytest.fixture
def pool(model_dirs):
    connect = in_process_connector(config(model_dirs["llama_draft_copy"]), SETTINGS, build_cache=True)
    pool = DraftPool([connect(), connect()])
    target = ModelRunner(config(model_dirs["llama"]))
    assert pool.handshake(handshake_request(target, SETTINGS, 8), timeout=5).accepted
    yield pool
    pool.close()


def prefill(seq_ids: list[int]) -> pb.SpeculationRequest:
    return pb.SpeculationRequest(prefill=pb.PrefillRequest(sequences=[
        pb.PrefillSequence(seq_id=i, prompt_token_ids=PROMPT, reset=True) for i in seq_ids]))


def test_sequences_go_to_the_least_loaded_worker_and_stay_there(pool):
    reply = pool.submit(prefill([10, 11, 12])).result(timeout=30)
    assert [row.seq_id for row in reply.prefill.rows] == [10, 11, 12]
    assert pool.owner == {10: 0, 11: 1, 12: 0} and pool.load == [2, 1]
    released = pool.submit(pb.SpeculationRequest(release=pb.ReleaseRequest(seq_ids=[10, 12]))).result(timeout=30)
    assert released.release.released == 2 and pool.load == [0, 1]
    pool.submit(prefill([13])).result(timeout=30)
    assert pool.owner[13] == 0  # the emptier worker


def test_a_round_is_split_and_its_replies_merged_in_request_order(pool):
    pool.submit(prefill([1, 2, 3, 4])).result(timeout=30)
    rows = [pb.SpeculateRow(seq_id=i, n_prev=-1, recovery_token=9, committed_len=len(PROMPT)) for i in (4, 1, 3, 2)]
    reply = pool.submit(pb.SpeculationRequest(speculate=pb.SpeculateRequest(rows=rows))).result(timeout=30)
    assert [row.seq_id for row in reply.speculate.rows] == [4, 1, 3, 2]
    assert all(row.status == pb.ROW_STATUS_OK and len(row.tokens) == SETTINGS.k for row in reply.speculate.rows)
    assert pool.rows_speculated == [2, 2]


def test_a_worker_error_fails_the_round_and_names_the_worker(pool):
    pool.submit(prefill([1, 2])).result(timeout=30)
    row = pb.SpeculateRow(seq_id=2, n_prev=-1, recovery_token=9, committed_len=len(PROMPT))
    empty = pb.PrefillRequest(sequences=[pb.PrefillSequence(seq_id=5, prompt_token_ids=[], reset=True)])
    reply = pool.submit(pb.SpeculationRequest(prefill=empty)).result(timeout=30)
    assert reply.WhichOneof("kind") == "error" and reply.error.message.startswith("draft worker ")
    ok = pool.submit(pb.SpeculationRequest(speculate=pb.SpeculateRequest(rows=[row]))).result(timeout=30)
    assert ok.speculate.rows[0].status == pb.ROW_STATUS_OK  # the pool keeps serving


@pytest.mark.slow
def test_one_dead_worker_costs_speculation_not_correctness_and_the_pool_recovers(model_dirs):
    expected = hf_greedy(model_dirs["llama"], PROMPT, 48)
    ports = [free_port(), free_port()]
    drafts = [start_draft_process(model_dirs["llama_draft_copy"], port, SETTINGS) for port in ports]
    engine = speculative_engine(config(model_dirs["llama"]), "ssd", settings=SETTINGS,
                                draft_address=[f"127.0.0.1:{p}" for p in ports], draft_timeout_s=2.0,
                                retry_interval_s=0.2)
    try:
        params = SamplingParams(max_tokens=48)
        first, second = engine.add_request(PROMPT, params), engine.add_request(PROMPT, params)
        while first.num_output_tokens < 12:
            engine.step()
        assert first.stats.spec_rounds > 0 and second.stats.spec_rounds > 0
        drafts[1].kill()
        drafts[1].wait()
        while not (first.finished and second.finished):
            engine.step()
        assert first.output_token_ids == expected and second.output_token_ids == expected
        assert first.stats.fallback_rounds + second.stats.fallback_rounds > 0
        drafts[1] = start_draft_process(model_dirs["llama_draft_copy"], ports[1], SETTINGS)
        time.sleep(0.3)  # past the retry interval: the next round reconnects the whole pool
        again = [engine.add_request(PROMPT, params) for _ in range(2)]
        while not all(s.finished for s in again):
            engine.step()
        assert all(s.output_token_ids == expected and s.stats.spec_rounds > 0 for s in again)
        assert all(rows > 0 for rows in engine.proposer.channel.rows_speculated)
    finally:
        engine.proposer.close()
        for draft in drafts:
            if draft.poll() is None:
                os.kill(draft.pid, signal.SIGKILL)
            draft.wait()


def test_every_worker_must_accept_the_pairing(model_dirs):
    good, bad = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    servers = [serve(config(model_dirs["llama_draft_copy"]), good, SETTINGS),
               serve(config(model_dirs["qwen3_legacy"]), bad, SETTINGS)]
    try:
        with pytest.raises(IncompatibleDraft, match="draft worker 1: .*vocabulary sizes differ"):
            speculative_engine(config(model_dirs["llama"]), "ssd", settings=SETTINGS, draft_address=[good, bad])
    finally:
        for server in servers:
            server.stop(None)


def test_draft_workers_must_be_positive(model_dirs):
    with pytest.raises(ConfigError, match="--draft-workers must be at least 1"):
        speculative_engine(config(model_dirs["llama"]), "ssd", config(model_dirs["llama_draft_copy"]), SETTINGS,
                           draft_workers=0)
