"""Tracing is off unless the environment asks for it, and then costs a round nothing: no span
objects, no attribute formatting, not even an ``opentelemetry`` import — while the metrics keep
counting. Checked in a fresh interpreter, so nothing else in the test session has imported
OpenTelemetry first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from saguaro.telemetry import tracing
from saguaro.v1 import speculation_pb2 as pb

SCRIPT = r"""
import json, sys
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from saguaro.config import EngineConfig
from saguaro.sampling import SamplingParams
from saguaro.speculative.settings import DraftSettings
from saguaro.services.target.local import speculative_engine
from saguaro.telemetry import tracing
from saguaro.services.target.telemetry import TargetTelemetry

target_dir, draft_dir = sys.argv[1:3]
small = dict(kv_cache_bytes=16 << 20, max_num_seqs=8, show_progress=False)
configured = tracing.configure_tracing("saguaro-target")
engine = speculative_engine(EngineConfig(model=target_dir, **small), "ssd", EngineConfig(model=draft_dir, **small),
                            DraftSettings(k=3))
telemetry = TargetTelemetry("llama", metrics=True)
engine.telemetry = telemetry.rounds
requests = telemetry.requests
record = requests.start("r", [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")], 0.0)
seq = engine.add_request([7, 19, 23, 101, 5], SamplingParams(max_tokens=16, ignore_eos=True))
telemetry.rounds.bind(seq.seq_id, record.span_context)
while engine.has_work():
    engine.step()
engine.proposer.close()
drafts = [s.value for f in text_string_to_metric_families(generate_latest(telemetry.registry).decode())
          for s in f.samples if s.name == "vllm:spec_decode_num_drafts_total"]
print(json.dumps({"configured": configured, "span_context": record.span_context is None,
                  "otel": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
                  "spec_rounds": seq.stats.spec_rounds, "drafts": drafts}))
"""


def test_a_round_without_tracing_never_touches_opentelemetry(model_dirs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", SCRIPT, model_dirs["llama"], model_dirs["llama_draft_perturbed"]],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["configured"] is False and result["span_context"] is True
    assert result["otel"] == []
    assert result["spec_rounds"] > 0 and result["drafts"] == [result["spec_rounds"]]


def test_the_environment_decides():
    assert not tracing.requested({})
    assert tracing.requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert tracing.requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert tracing.requested({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.requested({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert not tracing.requested({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert tracing.round_ratio({}) == 1.0
    assert tracing.round_ratio({"SAGUARO_TRACE_ROUNDS": "0.25"}) == 0.25
    assert tracing.round_ratio({"SAGUARO_TRACE_ROUNDS": "7"}) == 1.0


def test_an_untraced_round_adds_no_bytes():
    row = pb.SpeculateRow(seq_id=3, n_prev=2, recovery_token=11, committed_len=40, committed_tokens=[11, 5, 6])
    plain = pb.SpeculateRequest(rows=[row])
    traced = pb.SpeculateRequest(rows=[row])
    traced.trace_context["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert pb.SpeculateRequest(rows=[row], trace_context={}).ByteSize() == plain.ByteSize()
    assert pb.SpeculateRequest.FromString(traced.SerializeToString()).trace_context == traced.trace_context
