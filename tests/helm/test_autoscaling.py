"""The KEDA triggers' queries select the series a real target exports, whatever the scrape.

Why a real process: a Prometheus scrape keeps the labels the process exports and adds only
what its own configuration adds (a PodMonitor: namespace, pod, app_kubernetes_io_* through
podTargetLabels; a generic job: whatever its relabelling says). A query whose matchers all hold
on the raw /metrics of the target, started with the chart's own arguments, works under any
scrape configuration (docs/deploy.md "Autoscaling").
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from saguaro.net import free_port

SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def selectors(query: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, op, value)]) of every vector selector with matchers in ``query``."""
    return [(name, MATCHER.findall(body)) for name, body in SELECTOR.findall(query)]


def holds(labels: dict[str, str], label: str, op: str, value: str) -> bool:
    actual = labels.get(label, "")
    return {"=": actual == value, "!=": actual != value, "=~": re.fullmatch(value, actual) is not None,
            "!~": re.fullmatch(value, actual) is None}[op]


def scrape(url: str) -> list[tuple[str, dict[str, str]]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [(s.name, s.labels) for f in text_string_to_metric_families(text) for s in f.samples]


def wait_for_metrics(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> list[tuple[str, dict[str, str]]]:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the target exited before serving /metrics"
        try:
            return scrape(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def keda_target(render, k8s, model_dirs, tmp_path_factory):
    """The rendered ScaledObject of the target pool, and the raw /metrics of a real target started
    with the --metrics-label arguments the chart gives the target container."""
    manifests = render({"autoscaling": {"keda": {"enabled": True}}, "target": {"autoscaling": {"enabled": True}}})
    workload = next(w for w in manifests.workloads() if k8s.component_of(w) == "target")
    container = next(c for c in k8s.pod_spec(workload)["containers"] if c["name"] == "target")
    args = k8s.expanded_args(manifests, workload, container)
    labels = [arg for i, arg in enumerate(args) if i and args[i - 1] == "--metrics-label"]
    assert {label.split("=", 1)[0] for label in labels} == {"saguaro_release", "saguaro_pool", "namespace", "pod"}
    port, metrics = free_port(), free_port()
    command = [sys.executable, "-m", "saguaro.cli", "target", "--model", model_dirs["llama"], "--mode", "ar",
               "--port", str(port), "--metrics-port", str(metrics), "--kv-cache-bytes", str(16 << 20)]
    for label in labels:
        command += ["--metrics-label", label]
    log = tmp_path_factory.mktemp("keda-target") / "target.log"
    proc = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        samples = wait_for_metrics(f"http://127.0.0.1:{metrics}/metrics", proc)
        (scaled,) = [o for o in manifests.of_kind("ScaledObject") if k8s.component_of(o) == "target"]
        yield scaled, samples
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_every_prometheus_trigger_selects_the_series_the_target_exports(keda_target):
    scaled, samples = keda_target
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    assert queries
    for query in queries:
        found = selectors(query)
        assert found, f"no selector in {query!r}"
        for name, matchers in found:
            assert matchers, f"{name} in {query!r} selects every pod in Prometheus"
            assert not [m for m in matchers if m[0].startswith(("app_kubernetes_io", "kubernetes_"))], \
                f"{name}: a label only a scrape's relabelling adds"
            series = [labels for sample, labels in samples if sample == name]
            assert series, f"the target exports no {name}"
            assert any(all(holds(labels, *m) for m in matchers) for labels in series), \
                f"{query!r}: no {name} series of the target matches {matchers}"


def test_the_selector_tells_this_release_from_another(keda_target):
    """The matchers are not vacuous: the release label is part of them."""
    scaled, _ = keda_target
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    ((_, matchers),) = selectors(query)
    assert ("inference_server", "=", "saguaro") in matchers and ("saguaro_pool", "=", "target") in matchers
    assert any(label == "saguaro_release" for label, _, _ in matchers)
