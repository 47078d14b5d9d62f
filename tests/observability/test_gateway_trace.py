"""Through the gateway: client -> gateway -> target -> draft is one trace, one span per hop.

A real ``saguaro gateway`` process (tracing on from the OTEL_* environment, like the target and
draft processes of the stack) in front of the stack's target: its SERVER span continues the
caller's trace, names the target it routed to, and parents the target's request span, whose
rounds parent the draft's ``ssd.speculate`` spans. Both fronts (gRPC and OpenAI HTTP) are checked.
"""

from __future__ import annotations

import json
import time
import urllib.request

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from saguaro.net import free_port
from saguaro.services.gateway.telemetry import GatewaySpan
from saguaro.telemetry import attributes as A
from saguaro.telemetry import tracing
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow  # real targets behind a gateway, traced

PROMPT = [11, 42, 7, 300, 5, 18]
SERVER = 2


def _wait_serving(stub: pb_grpc.InferenceStub, proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the gateway process exited; see its log"
        try:
            if stub.Health(pb.HealthRequest(), timeout=5).status == pb.SERVING_STATUS_SERVING:
                return
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, "the gateway never reported SERVING"
        time.sleep(0.1)


def _check_tree(stack, client_span, max_tokens: int, api: str) -> None:
    """gateway span -> target request span -> ssd.round -> ssd.speculate, in the client's trace."""
    trace_id = format(client_span.get_span_context().trace_id, "032x")

    def complete(got) -> bool:
        mine = [s for s in got if s.trace_id == trace_id]
        target = [s for s in mine if s.service == "saguaro-target" and s.kind == SERVER]
        if not target or not any(s.service == "saguaro-gateway" for s in mine):
            return False
        rounds = target[0].attributes.get(A.SSD_ROUNDS, 0)
        speculated = target[0].attributes.get(A.SSD_SPEC_ROUNDS, 0)
        return (sum(s.name == A.ROUND_SPAN for s in mine) >= rounds
                and sum(s.name == A.SPECULATE_SPAN for s in mine) >= speculated)

    spans = [s for s in stack.receiver.wait_for(complete, 60) if s.trace_id == trace_id]
    (gateway_span,) = [s for s in spans if s.service == "saguaro-gateway"]
    (request_span,) = [s for s in spans if s.service == "saguaro-target" and s.kind == SERVER]
    assert gateway_span.kind == SERVER and gateway_span.name == request_span.name
    assert gateway_span.parent_span_id == format(client_span.get_span_context().span_id, "016x")
    assert request_span.parent_span_id == gateway_span.span_id
    attrs = gateway_span.attributes
    assert attrs[A.GATEWAY_API] == api and attrs[A.GATEWAY_TARGET] == stack.address
    assert attrs[A.GATEWAY_ATTEMPTS] == 1 and attrs[A.GATEWAY_POLICY] == "prefix"
    assert attrs[A.GEN_AI_MAX_TOKENS] == max_tokens
    assert attrs[A.GEN_AI_INPUT_TOKENS] == len(PROMPT) == request_span.attributes[A.GEN_AI_INPUT_TOKENS]
    assert attrs[A.GEN_AI_OUTPUT_TOKENS] == max_tokens == request_span.attributes[A.GEN_AI_OUTPUT_TOKENS]
    assert list(attrs[A.GEN_AI_FINISH_REASONS]) == ["length"] and attrs[A.GRPC_STATUS] == 0
    rounds = {s.span_id for s in spans if s.name == A.ROUND_SPAN}
    assert len(rounds) == request_span.attributes[A.SSD_ROUNDS] > 0
    assert {s.parent_span_id for s in spans if s.name == A.ROUND_SPAN} == {request_span.span_id}
    speculates = [s for s in spans if s.name == A.SPECULATE_SPAN]
    assert speculates and {s.parent_span_id for s in speculates} <= rounds
    assert {s.service for s in spans} == {"saguaro-gateway", "saguaro-target", "saguaro-draft"}


def test_one_trace_through_the_gateway(stack, client_tracer):
    grpc_port, http_port = free_port(), free_port()
    gateway = stack.start(["gateway", "--targets", stack.address, "--port", str(grpc_port),
                           "--http-port", str(http_port)], "gateway")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.InferenceStub(channel)
            _wait_serving(stub, gateway)
            request = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=PROMPT),
                                         sampling=pb.SamplingParams(max_tokens=16, ignore_eos=True))
            with client_tracer.tracer.start_as_current_span("client.generate") as grpc_client:
                list(stub.Generate(request, metadata=client_tracer.metadata(grpc_client), timeout=120))
            model = stub.ModelInfo(pb.ModelInfoRequest(), timeout=10).model_name
        body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        with client_tracer.tracer.start_as_current_span("client.completions") as http_client:
            http = urllib.request.Request(f"http://127.0.0.1:{http_port}/v1/completions", data=json.dumps(body).encode(),
                                          headers={"Content-Type": "application/json",
                                                   **dict(client_tracer.metadata(http_client))})
            with urllib.request.urlopen(http, timeout=120) as response:
                assert json.load(response)["usage"]["completion_tokens"] == 8
    finally:
        stack.stop(gateway)
    _check_tree(stack, grpc_client, 16, "grpc")
    _check_tree(stack, http_client, 8, "http")


def test_gateway_span_passes_the_context_through_or_continues_it():
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = {"traceparent": caller, "authorization": "Bearer x"}
    untraced = GatewaySpan.start(headers, api="grpc", model="llama")
    # tracing off: pass-through, and the operation for the target's span
    assert untraced.forward_metadata() == [("traceparent", caller), (A.OPERATION_METADATA, A.TEXT_COMPLETION)]
    untraced.finish(3, 4, ["stop"])

    exporter = InMemorySpanExporter()
    tracing.configure_tracing("saguaro-gateway", exporters=[exporter], batch=False)
    try:
        span = GatewaySpan.start(headers, api="http", model="llama", max_tokens=16, temperature=0.0)
        forwarded = dict(span.forward_metadata())
        span.routed("10.0.0.7:50051", policy="prefix", reason="prefix_hit", prefix_hit_blocks=3)
        span.first_token()
        span.finish(prompt_tokens=6, completion_tokens=16, finish_reasons=["length"])
        failed = GatewaySpan.start({}, api="grpc", model="llama")
        failed.fail("RESOURCE_EXHAUSTED", "queue full")
    finally:
        tracing.shutdown_tracing()
    done, refused = exporter.get_finished_spans()
    assert done.name == A.request_span_name(A.TEXT_COMPLETION, "llama") and done.kind.name == "SERVER"
    assert format(done.context.trace_id, "032x") == caller.split("-")[1]
    assert format(done.parent.span_id, "016x") == caller.split("-")[2]
    assert forwarded["traceparent"].split("-")[2] == format(done.context.span_id, "016x")  # the target's parent
    assert done.attributes[A.GATEWAY_TARGET] == "10.0.0.7:50051" and done.attributes[A.GATEWAY_ATTEMPTS] == 1
    assert done.attributes[A.GEN_AI_OUTPUT_TOKENS] == 16 and done.attributes[A.GEN_AI_MAX_TOKENS] == 16
    assert done.attributes[A.GEN_AI_TTFT] >= 0 and list(done.attributes[A.GEN_AI_FINISH_REASONS]) == ["length"]
    assert refused.parent is None and refused.attributes[A.ERROR_TYPE] == "RESOURCE_EXHAUSTED"
    assert refused.status.status_code.name == "ERROR"


def test_chat_and_completion_spans_name_their_operation_and_server():
    """The gateway's HTTP handler names the operation (chat for /v1/chat/completions); the target's
    request span takes it from the forwarded metadata; both carry server.address/server.port."""
    from saguaro.services.target.request_telemetry import RequestTelemetry

    exporter = InMemorySpanExporter()
    tracing.configure_tracing("saguaro-gateway", exporters=[exporter], batch=False)
    try:
        forwarded = {}
        for operation in (A.CHAT, A.TEXT_COMPLETION):
            span = GatewaySpan.start({}, api="http", model="llama", operation=operation,
                                     server=tracing.server_attributes("gw.example.com:8443", "0.0.0.0", 8000))
            forwarded[operation] = span.forward_metadata()
            span.finish(1, 1, ["stop"])
        requests = RequestTelemetry("llama")
        requests.listening("127.0.0.1:50051", 50051)
        for operation in (A.CHAT, A.TEXT_COMPLETION):
            requests.start(operation, forwarded[operation], 0.0).fail("cancelled")
    finally:
        tracing.shutdown_tracing()
    spans = exporter.get_finished_spans()
    assert [s.attributes[A.GEN_AI_OPERATION] for s in spans] == [A.CHAT, A.TEXT_COMPLETION] * 2
    assert [s.name for s in spans] == [A.request_span_name(op, "llama") for op in (A.CHAT, A.TEXT_COMPLETION)] * 2
    gateway, target = spans[:2], spans[2:]
    assert all((s.attributes[A.SERVER_ADDRESS], s.attributes[A.SERVER_PORT]) == ("gw.example.com", 8443)
               for s in gateway)
    assert all((s.attributes[A.SERVER_ADDRESS], s.attributes[A.SERVER_PORT]) == ("127.0.0.1", 50051) for s in target)
    assert all(s.kind.name == "SERVER" for s in spans)
