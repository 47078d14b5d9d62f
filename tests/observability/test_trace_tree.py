"""One request through real processes: client span -> target request span -> ``ssd.round`` spans
(target) -> ``ssd.speculate`` spans (draft) with their phase children, one trace id throughout,
attributes consistent with the statistics the request returned; and the JSON log line that
names the same trace.

The gateway is not in the path yet (client -> target -> draft); the target honours the same
``traceparent`` metadata a gateway forwards.
"""

from __future__ import annotations

import json
from collections import Counter

from saguaro.telemetry import attributes as A

PROMPT = [7, 19, 23, 101, 5, 64, 12, 88]
MAX_TOKENS = 32
SERVER, INTERNAL = 2, 1  # OTLP SpanKind values


def _trace_complete(trace_id: str, rounds: int, speculated: int):
    def done(spans) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        names = Counter(s.name for s in mine)
        return (names[A.ROUND_SPAN] >= rounds and names[A.SPECULATE_SPAN] >= speculated
                and names[A.TREE_SPAN] >= speculated and any(s.kind == SERVER for s in mine))
    return done


def test_one_trace_from_client_to_draft(stack, client_tracer):
    with client_tracer.tracer.start_as_current_span("client.generate") as client_span:
        final = stack.generate(PROMPT, MAX_TOKENS, metadata=client_tracer.metadata(client_span))
    spec = final.speculation
    client = client_tracer.exporter.get_finished_spans()[0]
    trace_id = format(client.context.trace_id, "032x")
    speculated = spec.draft_tokens // spec.lookahead_k
    assert spec.rounds > 0 and speculated == spec.rounds  # a live draft: every decode round speculated

    spans = [s for s in stack.receiver.wait_for(_trace_complete(trace_id, spec.rounds, speculated), timeout=60)
             if s.trace_id == trace_id]

    # -- the request span on the target, child of the client's span ------------------------------
    (request,) = [s for s in spans if s.kind == SERVER]
    assert request.name == A.request_span_name(A.TEXT_COMPLETION, "llama") and request.service == "saguaro-target"
    assert request.parent_span_id == format(client.context.span_id, "016x")
    attrs = request.attributes
    assert attrs[A.GEN_AI_OPERATION] == A.TEXT_COMPLETION
    assert attrs[A.SERVER_ADDRESS] and attrs[A.SERVER_PORT] == int(stack.address.rpartition(":")[2])
    assert attrs[A.GEN_AI_REQUEST_MODEL] == "llama"
    assert attrs[A.GEN_AI_MAX_TOKENS] == MAX_TOKENS
    assert attrs[A.GEN_AI_TEMPERATURE] == 0.0
    assert attrs[A.GEN_AI_INPUT_TOKENS] == len(PROMPT) == final.usage.prompt_tokens
    assert attrs[A.GEN_AI_OUTPUT_TOKENS] == MAX_TOKENS == final.usage.completion_tokens
    assert attrs[A.GEN_AI_FINISH_REASONS] == ["length"]
    assert attrs[A.GEN_AI_TTFT] == final.timings.time_to_first_token_s
    assert A.FIRST_TOKEN_EVENT in request.events
    assert attrs[A.SSD_MODE] == "ssd"
    assert attrs[A.SSD_ROUNDS] == spec.rounds
    assert attrs[A.SSD_ACCEPTED_TOKENS] == spec.accepted_draft_tokens
    assert attrs[A.SSD_CACHE_HITS] == spec.cache_hits and attrs[A.SSD_CACHE_MISSES] == spec.cache_misses

    # -- one ssd.round per decode round, children of the request span ------------------------------
    rounds = sorted((s for s in spans if s.name == A.ROUND_SPAN), key=lambda s: s.attributes[A.SSD_ROUND_INDEX])
    assert len(rounds) == spec.rounds
    assert {r.parent_span_id for r in rounds} == {request.span_id}
    assert {r.service for r in rounds} == {"saguaro-target"}
    ra = [r.attributes for r in rounds]
    assert [a[A.SSD_ROUND_INDEX] for a in ra] == list(range(spec.rounds))
    assert all(a[A.SSD_K] == spec.lookahead_k and len(a[A.SSD_FAN_OUT]) == spec.lookahead_k + 1 for a in ra)
    assert {a[A.SSD_TRANSPORT] for a in ra} == {spec.transport}
    assert sum(a[A.SSD_ACCEPTED] for a in ra) == spec.accepted_draft_tokens
    assert sum(a[A.SSD_CACHE_HIT] for a in ra) == spec.cache_hits
    assert sum(not a[A.SSD_CACHE_HIT] for a in ra) == spec.cache_misses
    assert sum(a[A.SSD_BACKUP] == "jit" for a in ra) == spec.jit_backups
    assert all(a[A.SSD_BONUS] == (a[A.SSD_ACCEPTED] == spec.lookahead_k) for a in ra)
    for i, count in enumerate(spec.accepted_per_position):
        assert sum(a[A.SSD_ACCEPTED] > i for a in ra) == count
    assert all(a[A.SSD_BATCH_SIZE] == 1 and a[A.SSD_ROWS_ACCEPTED] == [a[A.SSD_ACCEPTED]] for a in ra)
    assert all(a[A.SSD_VERIFY_TIME] >= 0 and a[A.SSD_DRAFT_TIME] >= 0 and a[A.SSD_OVERLAP] >= 0 for a in ra)
    assert all(0 <= a[A.SSD_OVERLAP] <= a[A.SSD_DRAFT_PREV_BUILD] for a in ra)

    # -- one ssd.speculate per round on the draft, child of that round ---------------------------------
    by_id = {r.span_id: r for r in rounds}
    speculates = [s for s in spans if s.name == A.SPECULATE_SPAN]
    assert len(speculates) == speculated
    assert {s.service for s in speculates} == {"saguaro-draft"}
    assert sorted(s.parent_span_id for s in speculates) == sorted(by_id)  # exactly one per round
    for s in speculates:
        parent = by_id[s.parent_span_id].attributes
        assert s.attributes[A.SSD_K] == spec.lookahead_k
        assert s.attributes[A.SSD_CACHE_HITS] == int(parent[A.SSD_CACHE_HIT])
        assert s.attributes[A.SSD_BACKUP] == parent[A.SSD_BACKUP]
        assert s.attributes[A.SSD_TREE_BRANCHES] == sum(parent[A.SSD_FAN_OUT])
        children = Counter(c.name for c in spans if c.parent_span_id == s.span_id)
        expected = {A.LOOKUP_SPAN: 1, A.GLUE_SPAN: 1, A.FORK_SPAN: 1, A.TREE_SPAN: 1}
        if not parent[A.SSD_CACHE_HIT]:
            expected[A.BACKUP_SPAN] = 1
        assert children == Counter(expected)

    # -- the request's log line names the same trace -------------------------------------------------
    lines = [json.loads(line) for line in stack.target_log.read_text().splitlines() if line.startswith("{")]
    (line,) = [entry for entry in lines if entry.get("event") == "request_finished" and entry["trace_id"] == trace_id]
    assert line["level"] == "info" and line["logger"] == "saguaro.requests"
    assert line["span_id"] == request.span_id
    assert (line["prompt_tokens"], line["completion_tokens"], line["finish_reason"]) == (len(PROMPT), MAX_TOKENS, "length")
    assert (line["mode"], line["rounds"], line["transport"]) == ("ssd", spec.rounds, spec.transport)
    assert line["tokens_per_round"] == round(spec.mean_tokens_per_round, 4)
    assert line["cache_hit_rate"] == round(spec.cache_hits / (spec.cache_hits + spec.cache_misses), 4)
    assert line["ttft_s"] == round(final.timings.time_to_first_token_s, 6)


def test_an_unsampled_request_leaves_no_spans_anywhere(stack, client_tracer):
    """A caller that decided not to sample (flags 00) gets no request, round or draft spans."""
    unsampled = "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-00"
    final = stack.generate(PROMPT, 12, metadata=[("traceparent", unsampled)])
    assert final.speculation.rounds > 0
    with client_tracer.tracer.start_as_current_span("client.generate") as client_span:
        sampled = stack.generate(PROMPT, 12, metadata=client_tracer.metadata(client_span))
    trace_id = format(client_span.get_span_context().trace_id, "032x")
    spec = sampled.speculation
    # Spans leave each process in order: once the later request's are in, the earlier ones would be.
    spans = stack.receiver.wait_for(_trace_complete(trace_id, spec.rounds, spec.draft_tokens // spec.lookahead_k), 60)
    assert not [s for s in spans if s.trace_id == "a" * 32]
