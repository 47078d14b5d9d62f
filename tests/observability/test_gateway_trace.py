"""Through the gateway: client -> gateway -> target -> draft stays one trace.

The real gateway (on a thread of this process, in front of the stack's target process) forwards
the caller's W3C context; the target's request span continues it and the draft's spans hang
below. ``GatewaySpan`` is the gateway's own request span once its process traces.
"""

from __future__ import annotations

import grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from saguaro.services.gateway import GatewayConfig, GatewayThread
from saguaro.telemetry import attributes as A
from saguaro.telemetry import tracing
from saguaro.telemetry.gateway import GatewaySpan
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc

PROMPT = [11, 42, 7, 300, 5, 18]
SERVER = 2


def test_one_trace_through_the_gateway(stack, client_tracer):
    gateway = GatewayThread(GatewayConfig(targets=[stack.address], host="127.0.0.1", port=0, http_port=None,
                                          health_interval_s=0.1)).start()
    try:
        gateway.wait_ready()
        with grpc.insecure_channel(gateway.grpc_address) as channel:
            stub = pb_grpc.InferenceStub(channel)
            request = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=PROMPT),
                                         sampling=pb.SamplingParams(max_tokens=16, ignore_eos=True))
            with client_tracer.tracer.start_as_current_span("client.generate") as client_span:
                responses = list(stub.Generate(request, metadata=client_tracer.metadata(client_span), timeout=120))
    finally:
        gateway.stop()
    spec = responses[-1].final.speculation
    trace_id = format(client_span.get_span_context().trace_id, "032x")
    speculated = spec.draft_tokens // spec.lookahead_k
    spans = [s for s in stack.receiver.wait_for(
        lambda got: sum(s.trace_id == trace_id and s.name == A.SPECULATE_SPAN for s in got) >= speculated
        and sum(s.trace_id == trace_id and s.name == A.ROUND_SPAN for s in got) >= spec.rounds, 60)
        if s.trace_id == trace_id]
    (request_span,) = [s for s in spans if s.kind == SERVER]
    assert request_span.service == "saguaro-target"
    assert request_span.parent_span_id == format(client_span.get_span_context().span_id, "016x")
    rounds = {s.span_id for s in spans if s.name == A.ROUND_SPAN}
    assert len(rounds) == spec.rounds
    assert {s.parent_span_id for s in spans if s.name == A.ROUND_SPAN} == {request_span.span_id}
    assert {s.parent_span_id for s in spans if s.name == A.SPECULATE_SPAN} == rounds
    assert {s.service for s in spans} == {"saguaro-target", "saguaro-draft"}


def test_gateway_span_passes_the_context_through_or_continues_it():
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = {"traceparent": caller, "authorization": "Bearer x"}
    untraced = GatewaySpan.start(headers, api="grpc", model="llama")
    assert untraced.forward_metadata() == [("traceparent", caller)]  # tracing off: pass-through
    untraced.finish(3, 4, "stop")

    exporter = InMemorySpanExporter()
    tracing.configure_tracing("saguaro-gateway", exporters=[exporter], batch=False)
    try:
        span = GatewaySpan.start(headers, api="http", model="llama", max_tokens=16, temperature=0.0)
        forwarded = dict(span.forward_metadata())
        span.routed("10.0.0.7:50051", policy="prefix", reason="prefix_hit", prefix_hit_blocks=3)
        span.finish(prompt_tokens=6, completion_tokens=16, finish_reason="length", ttft_s=0.02)
        failed = GatewaySpan.start({}, api="grpc", model="llama")
        failed.fail("RESOURCE_EXHAUSTED", "queue full")
    finally:
        tracing.shutdown_tracing()
    done, refused = exporter.get_finished_spans()
    assert done.name == A.request_span_name("llama") and done.kind.name == "SERVER"
    assert format(done.context.trace_id, "032x") == caller.split("-")[1]
    assert format(done.parent.span_id, "016x") == caller.split("-")[2]
    assert forwarded["traceparent"].split("-")[2] == format(done.context.span_id, "016x")  # the target's parent
    assert done.attributes[A.GATEWAY_TARGET] == "10.0.0.7:50051" and done.attributes[A.GATEWAY_ATTEMPTS] == 1
    assert done.attributes[A.GEN_AI_OUTPUT_TOKENS] == 16 and done.attributes[A.GEN_AI_MAX_TOKENS] == 16
    assert refused.parent is None and refused.attributes[A.ERROR_TYPE] == "RESOURCE_EXHAUSTED"
    assert refused.status.status_code.name == "ERROR"
