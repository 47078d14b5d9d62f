"""``/metrics`` of a real target and draft, parsed with prometheus_client's parser: every defined
metric with its type and labels, and counts that match the requests sent (as deltas, so other
tests' requests on the shared stack do not matter)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from saguaro.net import free_port
from saguaro.telemetry.exposition import SERVER_LABEL, SERVER_NAME
from saguaro.telemetry.metrics import DEFINITIONS
from saguaro.v1 import inference_pb2 as pb

PROMPTS = [[7, 19, 23, 101, 5], [3, 44, 91, 17, 8, 250, 33], [120, 6, 77]]
MAX_TOKENS = [20, 9, 14]


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """(family name -> type, (sample name, labels) -> value)."""
    types, values = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return types, values


def value(values: dict, name: str, **labels: str) -> float:
    labels = {"model_name": labels.pop("model_name", "llama"), SERVER_LABEL: SERVER_NAME, **labels}
    return values.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_target_metrics_count_the_requests_sent(stack):
    _, before = parse(stack.scrape())
    finals = [stack.generate(p, n) for p, n in zip(PROMPTS, MAX_TOKENS)]  # one at a time: batch 1
    ar = stack.generate(PROMPTS[0], 6, decode_mode=pb.DECODE_MODE_AR)  # an opt-out request: rounds, no drafts
    types, after = parse(stack.scrape())

    for d in DEFINITIONS:
        if d.service == "target":
            assert types.get(d.name) == d.kind, d.name
            samples = [labels for (name, labels) in after if name in d.samples()]
            assert samples and all({k for k, _ in ls} >= set(d.labels) for ls in samples), d.name
            assert all(dict(ls)["model_name"] == "llama" for ls in samples), d.name

    spec = [f.speculation for f in finals]
    everyone = finals + [ar]
    assert delta(before, after, "vllm:prompt_tokens_total") == sum(f.usage.prompt_tokens for f in everyone)
    assert delta(before, after, "vllm:generation_tokens_total") == sum(f.usage.completion_tokens for f in everyone)
    assert delta(before, after, "vllm:request_success_total", finished_reason="length") == len(everyone)
    for name in ("vllm:time_to_first_token_seconds_count", "vllm:e2e_request_latency_seconds_count"):
        assert delta(before, after, name) == len(everyone)
    for name in ("vllm:request_queue_time_seconds_count", "vllm:request_prefill_time_seconds_count",
                 "vllm:request_decode_time_seconds_count"):
        assert delta(before, after, name) == len(everyone), name
    # one inter-token observation per output step after the first (prefill) one, not per token:
    # decode rounds that committed tokens (tokens_per_round_histogram[i]: rounds committing i)
    steps = sum(sum(f.speculation.tokens_per_round_histogram[1:]) for f in everyone)
    assert delta(before, after, "vllm:inter_token_latency_seconds_count") == steps
    assert sum(s.accepted_draft_tokens for s in spec) > 0  # so some round committed several tokens:
    assert steps < sum(f.usage.completion_tokens - 1 for f in everyone)
    assert delta(before, after, "saguaro_round_duration_seconds_count") == sum(f.speculation.rounds for f in everyone)
    by_arm = {arm: delta(before, after, "saguaro_rounds_by_arm_total", arm=arm) for arm in ("ar", "sd", "ssd")}
    assert sum(by_arm.values()) == sum(f.speculation.rounds for f in everyone)
    assert by_arm["sd"] == sum(f.speculation.policy_sd_rounds for f in everyone)
    assert by_arm["ar"] >= ar.speculation.rounds  # the opt-out request's rounds ran plainly
    transport = delta(before, after, "saguaro_draft_transport_seconds_total")
    assert 0 < transport <= delta(before, after, "saguaro_draft_wait_seconds_total")

    k = spec[0].lookahead_k
    assert delta(before, after, "vllm:spec_decode_num_drafts_total") == sum(s.draft_tokens // k for s in spec)
    assert delta(before, after, "vllm:spec_decode_num_draft_tokens_total") == sum(s.draft_tokens for s in spec)
    assert delta(before, after, "vllm:spec_decode_num_accepted_tokens_total") == sum(s.accepted_draft_tokens for s in spec)
    for i in range(k):
        assert delta(before, after, "vllm:spec_decode_num_accepted_tokens_per_pos_total", position=str(i)) == sum(
            s.accepted_per_position[i] for s in spec)
    assert delta(before, after, "saguaro_spec_cache_hits_total") == sum(s.cache_hits for s in spec)
    assert delta(before, after, "saguaro_spec_cache_misses_total") == sum(s.cache_misses for s in spec)
    assert delta(before, after, "saguaro_spec_backups_total", kind="jit") == sum(s.jit_backups for s in spec)
    assert delta(before, after, "saguaro_spec_backups_total", kind="fast") == 0
    assert delta(before, after, "saguaro_ar_fallback_rounds_total") == 0

    assert value(after, "vllm:num_requests_running") == 0 and value(after, "vllm:num_requests_waiting") == 0
    assert 0 <= value(after, "vllm:kv_cache_usage_perc") <= 1
    assert value(after, "saguaro_draft_connected") == 1
    assert value(after, "saguaro_draft_transport_info", transport=spec[0].transport) == 1


def test_draft_metrics_count_its_rounds(stack):
    _, before = parse(stack.scrape("draft"))
    finals = [stack.generate(p, n) for p, n in zip(PROMPTS, MAX_TOKENS)]
    types, after = parse(stack.scrape("draft"))
    model = "llama_draft_perturbed"
    for d in DEFINITIONS:
        if d.service == "draft":
            assert types.get(d.name) == d.kind, d.name
            assert any(name in d.samples() and dict(ls)["model_name"] == model for name, ls in after), d.name
    speculated = sum(f.speculation.draft_tokens // f.speculation.lookahead_k for f in finals)
    assert delta(before, after, "saguaro_draft_rounds_total", model_name=model) == speculated
    for phase in ("prefill", "lookup", "build"):
        assert delta(before, after, "saguaro_draft_busy_seconds_total", model_name=model, phase=phase) > 0
    assert value(after, "saguaro_draft_sessions_total", model_name=model) == 1
    assert 0 <= value(after, "saguaro_draft_idle_fraction", model_name=model) <= 1


@pytest.mark.parametrize("which", ["target", "draft"])
def test_health_endpoint(stack, which):
    base = stack.target_metrics if which == "target" else stack.draft_metrics
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:
        assert response.status == 200
        assert response.read().decode().startswith("serving")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/nothing-here", timeout=10)
    assert missing.value.code == 404


def test_prefix_cache_counters_count_a_repeated_prompt_in_tokens(stack):
    """vLLM's definitions: queries = prompt tokens looked up, hits = those found cached (whole
    blocks: the repeat of a 40-token prompt finds its full 16-token blocks)."""
    prompt = list(range(300, 340))
    _, before = parse(stack.scrape())
    stack.generate(prompt, 2)
    stack.generate(prompt, 2)
    _, after = parse(stack.scrape())
    assert delta(before, after, "vllm:prefix_cache_queries_total") == 2 * len(prompt)
    assert delta(before, after, "vllm:prefix_cache_hits_total") == 32


def test_every_service_serves_no_created_series_and_marks_every_series(stack):
    """Target, draft and gateway (real processes): no ``_created`` series, and every series
    carries ``inference_server="saguaro"`` (and the gateway its --metrics-label labels)."""
    http_port = free_port()
    gateway = stack.start(["gateway", "--targets", stack.address, "--port", str(free_port()),
                           "--http-port", str(http_port), "--metrics-label", "saguaro_pool=gateway"], "gateway-metrics")
    try:
        texts = {"target": stack.scrape(), "draft": stack.scrape("draft"),
                 "gateway": wait_for_text(f"http://127.0.0.1:{http_port}/metrics", gateway)}
    finally:
        stack.stop(gateway)
    for service, text in texts.items():
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        assert samples, service
        assert not [s.name for s in samples if s.name.endswith("_created")], service
        assert all(s.labels[SERVER_LABEL] == SERVER_NAME for s in samples), service
    assert any(line.startswith("vllm:") for line in texts["target"].splitlines())
    assert all('saguaro_pool="gateway"' in line for line in texts["gateway"].splitlines()
               if line and not line.startswith("#"))


def wait_for_text(url: str, proc, timeout: float = 120.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the process exited before serving /metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
