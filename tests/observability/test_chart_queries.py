"""Every PromQL expression the chart ships returns data from a running stack, in a real Prometheus.

A ``saguaro up`` stack (gateway, target, draft; SSD) runs a short greedy load while a real
``prometheus`` scrapes it with the scrape jobs prometheus-operator would generate from the
chart's rendered PodMonitor and ServiceMonitor (tests/observability/scrape_config.py), so each
series carries the labels a cluster would attach. Then each dashboard panel (with its template
variables resolved through ``label_values`` as Grafana would), each KEDA trigger query and each
recording or alerting rule (which must also pass ``promtool check rules``) is evaluated and must
return a finite value. A renamed metric or label, a counter read without ``rate()``, or a
selector on a label nothing produces shows up here as an empty result.

``EXCEPTIONS`` lists the expressions that cannot have data in this setup, each with the reason
(docs/observability.md repeats the list).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from saguaro.net import free_port, free_port_run

from observability.chart_queries import (Query, dashboards, panel_queries, parse_label_values, query_variables, render,
                           rule_groups, rule_queries, substitute, trigger_queries)
from observability.prometheus_server import PrometheusServer
from observability.scrape_config import LocalPod, scrape_jobs
from tests_support import RedisServer

pytestmark = pytest.mark.slow  # a saguaro up stack, a Prometheus and a minute of scrapes

RELEASE, NAMESPACE = "demo", "llm"
VALUES = {
    "metrics": {"enabled": True},
    "monitoring": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True},
                   "prometheusRule": {"enabled": True}, "dashboards": {"enabled": True}},
    "autoscaling": {"keda": {"enabled": True}},
    "target": {"autoscaling": {"enabled": True}},
    "draft": {"autoscaling": {"enabled": True}},
}
# Grafana's built-in interval variables, as it would fill them for a short dashboard range.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "datasource": "prometheus"}
# expression source (prefix) -> why it has no data in a one-pod, short-load setup
EXCEPTIONS: dict[str, str] = {}
SMALL_ARGS = ["--kv-cache-bytes", str(16 << 20), "--max-num-seqs", "8"]
LOAD_REQUESTS, LOAD_PAUSE_S = 8, 0.5  # per prompt, two prompts in parallel: a few seconds of load
# Long enough for full KV blocks (the gateway's prefix index routes on block hashes); repeated, so
# the second round of requests hits the prefix caches.
PROMPTS = ["def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n" * 3,
           "import os\nimport sys\nimport json\nfrom pathlib import Path\n\n\nclass Config:\n" * 3]


def workloads(manifests: list[dict]) -> dict[str, dict]:
    """component -> its rendered Deployment/StatefulSet (one per component here)."""
    out = {}
    for doc in manifests:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            component = doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
            out.setdefault(component, doc)
    return out


def service_of(manifests: list[dict], component: str) -> dict | None:
    return next((doc for doc in manifests if doc["kind"] == "Service"
                 and doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
                 and doc["spec"].get("clusterIP") != "None"), None)


def local_pod(manifests: list[dict], component: str, container: str, ports: dict[str, str]) -> LocalPod:
    """The rendered pod of ``component``'s ``container``, standing in for the local process
    listening on ``ports`` (rendered port name -> local address)."""
    workload = workloads(manifests)[component]
    template = workload["spec"]["template"]
    spec = next(c for c in template["spec"]["containers"] if c["name"] == container)
    named = {p.get("name") for p in spec.get("ports", [])}
    missing = set(ports) - named
    assert not missing, f"the rendered {component} pod's {container} container has no port named {missing} (has {named})"
    service = service_of(manifests, component)
    service_ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} if service else {}
    return LocalPod(name=f"{workload['metadata']['name']}-0", namespace=NAMESPACE,
                    labels=template["metadata"]["labels"], container=container, ports=ports,
                    service=service, service_ports=service_ports)


def local_pods(manifests: list[dict], pairing: str, http: str, target_metrics: str, draft_metrics: str) -> list[LocalPod]:
    """The stack's processes as the chart's pods: the draft is a container of the target pod
    (colocated, its metrics port named draft-metrics) or a pod of its own (remote)."""
    draft = (local_pod(manifests, "target", "draft", {"draft-metrics": draft_metrics}) if pairing == "colocated"
             else local_pod(manifests, "draft", "draft", {"metrics": draft_metrics}))
    return [local_pod(manifests, "gateway", "gateway", {"http": http}),
            local_pod(manifests, "target", "target", {"metrics": target_metrics}), draft]


def metrics_labels(manifests: list[dict]) -> list[str]:
    """The rendered target container's ``--metrics-label`` arguments that hold for the whole stack
    (release and namespace, expanded; the pool label is per process and ``saguaro up`` adds it)."""
    container = next(c for c in workloads(manifests)["target"]["spec"]["template"]["spec"]["containers"]
                     if c["name"] == "target")
    args = container["args"]
    labels = [args[i + 1].replace("$(POD_NAMESPACE)", NAMESPACE) for i, arg in enumerate(args) if arg == "--metrics-label"]
    kept = [label for label in labels if not label.startswith(("saguaro_pool=", "pod="))]
    assert kept, f"the target container exports no --metrics-label: {args}"
    return [arg for label in kept for arg in ("--metrics-label", label)]


def wait_for_line(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text(), re.MULTILINE):
            return
        assert proc.poll() is None, f"saguaro up exited ({proc.returncode}):\n{log.read_text()}"
        time.sleep(0.5)
    raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n{log.read_text()}")


def served_model(http: str) -> str:
    with urllib.request.urlopen(f"{http}/v1/models", timeout=30) as response:
        return json.load(response)["data"][0]["id"]


def complete(http: str, model: str, prompt: str, stream: bool) -> None:
    """One greedy completion; streamed ones also feed the gateway's time-to-first-token."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0,
                       "stream": stream}).encode()
    request = urllib.request.Request(f"{http}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        response.read()


def load(http: str, model: str, prompt: str) -> None:
    """Requests spread over several scrape intervals, streamed and not: a series a request creates
    (a labelled counter's first increment) is seen again as it rises, so rate() has data."""
    for i in range(LOAD_REQUESTS):
        complete(http, model, prompt, stream=i % 2 == 1)
        time.sleep(LOAD_PAUSE_S)


@pytest.fixture(scope="module", params=["colocated", "remote"])
def stack(request, model_dirs, tmp_path_factory):
    """A `saguaro up` SSD stack under a short greedy load, scraped by Prometheus as the chart's
    monitors would have it scraped, for each pairing (the draft in the target pod, or its own)."""
    pairing = request.param
    workdir = tmp_path_factory.mktemp(f"prometheus-{pairing}")
    manifests = render({**VALUES, "pairing": {"mode": pairing}}, RELEASE, NAMESPACE)
    grpc_port, http_port, metrics_port, draft_port = free_port(), free_port(), free_port_run(2), free_port_run(1)
    log = workdir / "up.log"
    redis = RedisServer(workdir).start()  # the chart's default: a bundled Redis holds the prefix index
    up = subprocess.Popen(
        [sys.executable, "-m", "saguaro.cli", "up", "--target", model_dirs["llama"],
         "--draft", model_dirs["llama_draft_perturbed"], "--mode", "ssd", "--port", str(grpc_port),
         "--http-port", str(http_port), "--metrics-port", str(metrics_port), "--draft-port", str(draft_port),
         "--redis-url", redis.url, "--speculation-policy", "always", *SMALL_ARGS,
         # the labels the chart's pods export (saguaro.metricsLabelArgs); `up` adds each pool's
         *metrics_labels(manifests)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    prometheus = None
    try:
        wait_for_line(log, r"^ready: saguaro stack serving", up)
        pods = local_pods(manifests, pairing, f"127.0.0.1:{http_port}", f"127.0.0.1:{metrics_port}",
                          f"127.0.0.1:{metrics_port + 1}")
        monitors = [doc for doc in manifests if doc["kind"] in ("PodMonitor", "ServiceMonitor")]
        # the rendered rules, evaluated every second instead of every interval: the test has seconds
        groups = [{**group, "interval": "1s"} for group in rule_groups(manifests)]
        prometheus = PrometheusServer(workdir, scrape_jobs(monitors, pods), groups).start()
        # every job scraped once before the load, so rate() sees the counters rise
        prometheus.wait_for("min(up) == 1 and count(up) == 3")
        http = f"http://127.0.0.1:{http_port}"
        model = served_model(http)
        threads = [threading.Thread(target=load, args=(http, model, prompt)) for prompt in PROMPTS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(5)  # a few scrapes after the load: the rate() windows hold its increase
        yield manifests, prometheus, pairing
    finally:
        if prometheus is not None:
            prometheus.stop()
        up.terminate()
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
        redis.kill()


def exception_for(query: Query) -> str | None:
    return next((why for prefix, why in EXCEPTIONS.items() if query.source.startswith(prefix)), None)


def without_data(prometheus: PrometheusServer, query: Query, expr: str) -> str | None:
    """None when ``expr`` returns a finite value; otherwise what it returned, for the report."""
    result = prometheus.query(expr)
    if any(math.isfinite(value) for _, value in result):
        return None
    return f"{query.source}: {expr} returned {result or 'no series'}"


def assert_all_have_data(prometheus: PrometheusServer, checks: list[tuple[Query, str]]) -> None:
    """Every (query, interpolated expression) returns data; all failures are reported at once."""
    failures = [failure for query, expr in checks if exception_for(query) is None
                for failure in [without_data(prometheus, query, expr)] if failure]
    assert not failures, "expressions without data:\n" + "\n".join(failures)


def resolve_variables(prometheus: PrometheusServer, board: dict) -> dict[str, str]:
    """Each query variable as a dashboard opens: its ``label_values`` query must find values (as
    Grafana's refresh would, given the earlier variables), and the selection is "All" where the
    variable offers it (its ``allValue``), else every value as a regex alternation."""
    variables = dict(BUILTINS)
    for var in query_variables(board):
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match, label = parse_label_values(substitute(query, variables))
        values = prometheus.label_values(label, match)
        assert values, f"variable ${var['name']}: {query} has no values (label {label} on {match})"
        alternation = values[0] if len(values) == 1 else "(" + "|".join(map(re.escape, values)) + ")"
        variables[var["name"]] = var.get("allValue") if var.get("includeAll") and var.get("allValue") else alternation
    return variables


def test_the_stack_is_scraped_with_the_labels_a_cluster_would_attach(stack):
    _, prometheus, pairing = stack
    labels = {target["labels"]["container"]: target["labels"] for target in prometheus.targets()}
    assert set(labels) == {"gateway", "target", "draft"}, labels
    pod_of = {"gateway": "gateway", "target": "target", "draft": "target" if pairing == "colocated" else "draft"}
    for container, target in labels.items():
        assert target["namespace"] == NAMESPACE
        assert target["app_kubernetes_io_component"] == pod_of[container]  # podTargetLabels
        assert target["app_kubernetes_io_instance"] == RELEASE


def test_every_dashboard_query_returns_data(stack):
    manifests, prometheus, _ = stack
    boards = dashboards(manifests)
    assert boards, "the render has no dashboards"
    checks = []
    for name, board in boards.items():
        variables = resolve_variables(prometheus, board)
        checks += [(query, substitute(query.expr, variables)) for query in panel_queries(name, board)]
    assert len(checks) > 20  # the walk found the panels
    assert_all_have_data(prometheus, checks)


def test_every_autoscaling_trigger_query_returns_data(stack):
    manifests, prometheus, _ = stack
    queries = trigger_queries(manifests)
    assert {q.source.split(" / ")[0] for q in queries} >= {f"ScaledObject {RELEASE}-saguaro-target"}
    assert_all_have_data(prometheus, [(query, query.expr) for query in queries])


def test_every_rule_passes_promtool_and_returns_data(stack):
    manifests, prometheus, _ = stack
    assert_all_have_data(prometheus, [(query, query.expr) for query in rule_queries(rule_groups(manifests))])


VLLM_DASHBOARD = Path(__file__).with_name("data") / "vllm_grafana_queries.json"


def test_vllms_own_dashboard_finds_our_series(stack):
    """vLLM's published Grafana dashboard, pointed at Saguaro's pods, shows data in every panel:
    people who move from vLLM keep their dashboard (its model_name is the target's)."""
    _, prometheus, _ = stack
    board = json.loads(VLLM_DASHBOARD.read_text())
    (model,) = {labels["model_name"] for labels, _ in prometheus.query("vllm:num_requests_running")}
    assert model in prometheus.label_values("model_name")  # the variable's label_values(model_name) offers it
    variables = {**BUILTINS, "model_name": model}
    checks = [(Query(f"vLLM dashboard / {panel['title']}", expr), substitute(expr, variables))
              for panel in board["panels"] for expr in panel["exprs"]]
    assert len(checks) == 32  # the transcription is complete
    assert_all_have_data(prometheus, checks)
