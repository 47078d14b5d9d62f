"""A real traced stack: ``saguaro draft`` and ``saguaro target`` processes exporting OTLP spans to
a receiver in the test process, serving /metrics, logging JSON.

The client side of each test starts its own root span (a test-local tracer provider with an
in-memory exporter) and sends its W3C context as gRPC metadata, as a gateway or SDK would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from saguaro.net import free_port
from saguaro.telemetry.receiver import OtlpReceiver
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc

SMALL_ARGS = ["--kv-cache-bytes", str(16 << 20), "--max-num-seqs", "8", "--k", "4", "--fan-out", "2"]


@dataclass
class Stack:
    receiver: OtlpReceiver
    target: subprocess.Popen
    draft: subprocess.Popen
    address: str
    target_metrics: str  # http://host:port
    draft_metrics: str
    target_log: Path
    stub: pb_grpc.InferenceStub
    channel: grpc.Channel
    env: dict[str, str]  # the services' environment (tracing to ``receiver``)
    logs: Path

    def start(self, args: list[str], name: str) -> subprocess.Popen:
        """Another ``saguaro`` process exporting spans to this stack's receiver (log: ``logs/name.log``)."""
        return _start(args, self.env, self.logs / f"{name}.log")

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        stop_processes(proc)

    def scrape(self, which: str = "target") -> str:
        base = self.target_metrics if which == "target" else self.draft_metrics
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            return response.read().decode()

    def generate(self, prompt: list[int], max_tokens: int, metadata=(), **options) -> pb.GenerateFinal:
        request = pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=prompt),
                                     sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True), **options)
        final = None
        for response in self.stub.Generate(request, metadata=list(metadata), timeout=120):
            if response.WhichOneof("kind") == "final":
                final = response.final
        assert final is not None
        return final


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "saguaro.cli", *args], env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


@pytest.fixture(scope="session")
def stack(model_dirs, tmp_path_factory):
    logs = tmp_path_factory.mktemp("stack")
    receiver = OtlpReceiver()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SAGUARO_"))}
    env.update(OMP_NUM_THREADS="1", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="50")
    draft_port, target_port, draft_metrics, target_metrics = (free_port() for _ in range(4))
    draft = _start(["draft", "--model", model_dirs["llama_draft_perturbed"], "--port", str(draft_port),
                    "--metrics-port", str(draft_metrics), *SMALL_ARGS], env, logs / "draft.log")
    target = _start(["target", "--model", model_dirs["llama"], "--port", str(target_port), "--draft-address",
                     f"127.0.0.1:{draft_port}", "--wait-for-draft", "120", "--metrics-port", str(target_metrics),
                     "--log-format", "json", "--speculation-policy", "always", "--no-draft-soft-deadline",  # every round speculates
                     *SMALL_ARGS], env, logs / "target.log")
    address = f"127.0.0.1:{target_port}"
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=180)
        stub = pb_grpc.InferenceStub(channel)
        deadline = time.monotonic() + 60
        while not stub.Health(pb.HealthRequest(), timeout=10).draft_connected:
            assert time.monotonic() < deadline, "the target never connected to its draft"
            time.sleep(0.1)
        yield Stack(receiver, target, draft, address, f"http://127.0.0.1:{target_metrics}",
                    f"http://127.0.0.1:{draft_metrics}", logs / "target.log", stub, channel, env, logs)
    finally:
        channel.close()
        stop_processes(target, draft)
        receiver.stop()


def stop_processes(*procs: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL what is still alive after 20 s."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class ClientTracer:
    tracer: trace.Tracer
    exporter: InMemorySpanExporter

    def metadata(self, span) -> list[tuple[str, str]]:
        """W3C ``traceparent`` metadata naming ``span`` as the parent (what a gateway sends)."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return list(carrier.items())


@pytest.fixture
def client_tracer() -> ClientTracer:
    """A tracer of the test's own (the client's), not the process-global one."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield ClientTracer(provider.get_tracer("saguaro-tests-client"), exporter)
    provider.shutdown()
