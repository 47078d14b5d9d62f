"""Batched rounds: one ``ssd.round`` span per round whatever the batch size, parented on the
oldest sampled request and linked to every other one, so each request's trace reaches all the
rounds it rode in; a round that raises still ends its span. Runs the real engine with its draft
worker on a thread of this process, spans into an in-memory exporter.
"""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from saguaro.config import EngineConfig
from saguaro.sampling import SamplingParams
from saguaro.speculative.settings import DraftSettings
from saguaro.services.target.local import speculative_engine
from saguaro.services.target.request_telemetry import RequestTelemetry
from saguaro.services.target.round_telemetry import RoundTelemetry
from saguaro.telemetry import attributes as A
from saguaro.telemetry import tracing
from saguaro.v1 import speculation_pb2 as pb

PROMPTS = [[7, 19, 23, 101, 5], [3, 44, 91, 17, 8, 250, 33], [120, 6, 77, 9]]
MAX_TOKENS = [24, 10, 17]
SMALL = dict(kv_cache_bytes=16 << 20, max_num_seqs=8, show_progress=False)


@pytest.fixture
def exporter():
    memory = InMemorySpanExporter()
    tracing.configure_tracing("saguaro-test", exporters=[memory], batch=False)
    yield memory
    tracing.shutdown_tracing()


@pytest.fixture
def engine(model_dirs):
    engine = speculative_engine(EngineConfig(model=model_dirs["llama"], **SMALL), "ssd",
                                EngineConfig(model=model_dirs["llama_draft_perturbed"], **SMALL), DraftSettings(k=3),
                                draft_soft_deadline=False)
    yield engine
    engine.proposer.close()


def run_batch(engine, rounds: RoundTelemetry) -> tuple[list, list]:
    """Admit every prompt at once (one batch), each under its own request span; decode to the end."""
    engine.telemetry = rounds
    requests = RequestTelemetry("llama")
    records, seqs = [], []
    for i, (prompt, n) in enumerate(zip(PROMPTS, MAX_TOKENS)):
        records.append(requests.start(f"req-{i}", [], time.perf_counter()))
        seqs.append(engine.add_request(prompt, SamplingParams(max_tokens=n, ignore_eos=True)))
        rounds.bind(seqs[-1].seq_id, records[-1].span_context)
    while engine.has_work():
        engine.step()
    # The draft answers in order and builds after each answer: once this empty release is
    # answered, the last round's build (and its ssd.speculate span) has ended.
    engine.proposer.channel.submit(pb.SpeculationRequest(release=pb.ReleaseRequest())).result(timeout=60)
    for record in records:
        record.span.end()
    return records, seqs


def test_round_spans_parent_on_the_oldest_request_and_link_the_rest(engine, exporter):
    records, seqs = run_batch(engine, RoundTelemetry())
    spans = exporter.get_finished_spans()
    request_of = {s.seq_id: r.span.get_span_context().span_id for s, r in zip(seqs, records)}
    rounds = [s for s in spans if s.name == A.ROUND_SPAN]
    assert len(rounds) == max(s.stats.rounds for s in seqs)  # one span per engine round, not per row
    assert max(r.attributes[A.SSD_BATCH_SIZE] for r in rounds) == len(PROMPTS)

    seen = {s.seq_id: 0 for s in seqs}
    accepted = {s.seq_id: 0 for s in seqs}
    for span in rounds:
        rows = list(span.attributes[A.SSD_ROWS_SEQ_ID])
        assert span.parent.span_id == request_of[rows[0]]  # the oldest row's request
        assert span.attributes[A.SSD_SEQ_ID] == rows[0]
        assert [link.context.span_id for link in span.links] == [request_of[sid] for sid in rows[1:]]
        assert [link.attributes[A.SSD_SEQ_ID] for link in span.links] == rows[1:]
        assert {link.context.trace_id for link in span.links} <= {r.span.get_span_context().trace_id for r in records}
        for sid, n in zip(rows, span.attributes[A.SSD_ROWS_ACCEPTED]):
            seen[sid] += 1
            accepted[sid] += n
        assert span.attributes[A.SSD_BATCH_ACCEPTED] == sum(span.attributes[A.SSD_ROWS_ACCEPTED])
    for s in seqs:  # every round a request rode in is reachable from its trace, with its outcome
        assert seen[s.seq_id] == s.stats.rounds
        assert accepted[s.seq_id] == sum(s.stats.accepted_per_position)

    # the draft worker (a thread here) parents its ssd.speculate on each round
    speculates = [s for s in spans if s.name == A.SPECULATE_SPAN]
    assert sorted(s.parent.span_id for s in speculates) == sorted(r.context.span_id for r in rounds)
    for s in speculates:
        parent = next(r for r in rounds if r.context.span_id == s.parent.span_id)
        assert s.context.trace_id == parent.context.trace_id
        assert s.attributes[A.SSD_BATCH_SIZE] == parent.attributes[A.SSD_BATCH_SIZE]
        assert s.attributes[A.SSD_CACHE_HITS] == parent.attributes[A.SSD_BATCH_HITS]


def test_round_sampling_ratio_traces_that_share_of_rounds(engine, exporter):
    rounds = RoundTelemetry(round_ratio=0.5)
    run_batch(engine, rounds)
    traced = [s for s in exporter.get_finished_spans() if s.name == A.ROUND_SPAN]
    assert len(traced) == rounds.rounds // 2
    assert len([s for s in exporter.get_finished_spans() if s.name == A.SPECULATE_SPAN]) == len(traced)


def test_a_round_that_raises_ends_its_span_with_error(engine, exporter, monkeypatch):
    """An engine step failing mid-round (here the verify forward: an injected out-of-memory) must
    not leave the ``ssd.round`` open: it ends with status ERROR under its request span."""
    rounds = engine.telemetry = RoundTelemetry()
    record = RequestTelemetry("llama").start("req-fail", [], time.perf_counter())
    seq = engine.add_request(PROMPTS[0], SamplingParams(max_tokens=8, ignore_eos=True))
    rounds.bind(seq.seq_id, record.span_context)
    engine.step()  # prefill: no round span
    assert not [s for s in exporter.get_finished_spans() if s.name == A.ROUND_SPAN]

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory (injected)")

    monkeypatch.setattr(engine.runner, "run_causal", out_of_memory)
    with pytest.raises(RuntimeError, match="injected"):
        engine.step()
    (failed,) = [s for s in exporter.get_finished_spans() if s.name == A.ROUND_SPAN]
    assert failed.parent.span_id == record.span.get_span_context().span_id
    assert failed.status.status_code.name == "ERROR" and "injected" in failed.status.description
    assert failed.attributes[A.ERROR_TYPE] == "RuntimeError"
    assert [event.name for event in failed.events] == ["exception"]
    record.span.end()
