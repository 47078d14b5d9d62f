"""The Grafana dashboards the chart ships: valid against a JSON schema of the Grafana dashboard
model subset they use, laid out on the 24-column grid, every variable defined, every PromQL
query naming metrics (and labels) that the services export, every TraceQL query and Jaeger
search naming spans and attributes the services emit, and the chart rendering them for the
trace data source chosen in values (Tempo or Jaeger, by UID)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from urllib.parse import unquote

import helm_python
import jsonschema
import pytest
import yaml

from saguaro.services.gateway.metrics import GatewayMetrics as GatewayServiceMetrics
from saguaro.telemetry import attributes as A
from saguaro.telemetry.metrics import DEFINITIONS, exported_samples

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "saguaro"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
SCHEMA = json.loads((Path(__file__).parent / "grafana_dashboard.schema.json").read_text())
BUILTIN_VARS = {"__rate_interval", "__interval", "__range"}
TARGET_LABELS = {"pod", "instance", "job", "namespace", "container"}  # added by Prometheus at scrape time
SERVICES = {"saguaro-target", "saguaro-draft", "saguaro-gateway"}
METRIC = re.compile(r"\b(vllm:[a-z0-9_:]+|saguaro_[a-z0-9_]+|saguaro:[a-z0-9_:]+)(\{[^}]*\})?")
GROUPING = re.compile(r"\b(?:by|without)\s*\([^)]*\)")  # label names, not metrics


def metrics_in(expr: str) -> list[tuple[str, str]]:
    """(metric, selector) of every Saguaro/vLLM series ``expr`` reads (grouping clauses left out)."""
    return METRIC.findall(GROUPING.sub("", expr))


def recorded_series() -> dict[str, set[str]]:
    """Series the chart's recording rules define -> the labels they keep (their ``by`` clause)."""
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render({"monitoring": {"prometheusRule": {"enabled": True}}}, name="demo", namespace="llm")
    rule = yaml.safe_load(rendered["saguaro/templates/prometheusrule.yaml"])
    out = {}
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            if "record" in r:
                by = re.search(r"\bby\s*\(([^)]*)\)", r["expr"])
                out[r["record"]] = {label.strip() for label in by.group(1).split(",")} if by else set()
    return out


def gateway_samples() -> dict[str, set[str]]:
    """Sample names the gateway service registers (its own module, instantiated for real)."""
    out: dict[str, set[str]] = {}
    for family in GatewayServiceMetrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        for suffix in suffixes:
            out[family.name + suffix] = set()
    return out


def known_samples() -> dict[str, set[str]]:
    """Sample name -> its label names (empty set: labels not checked); recorded series included."""
    known = {name: set(d.labels) for name, d in exported_samples().items()}
    for name, labels in gateway_samples().items():
        known.setdefault(name, labels)
    known.update(recorded_series())
    return known


def queries(board: dict) -> tuple[list[str], list[str]]:
    """(PromQL expressions, TraceQL queries) of every panel and variable."""
    promql, traceql = [], []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            (promql if "expr" in target else traceql).append(target.get("expr") or target["query"])
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            promql.append(var["query"]["query"])
    return promql, traceql


def trace_elements(board: dict) -> list[dict]:
    """Every trace query of a source dashboard: Tempo targets, dashboard links and data links to Explore."""
    out = [t for p in board["panels"] for t in p.get("targets", []) if t.get("queryType") == "traceql"]
    out += [link for link in board["links"] if "explore" in link.get("url", "")]
    out += [dl for p in board["panels"] for dl in p.get("fieldConfig", {}).get("defaults", {}).get("links", [])]
    return out


def explore_query(url: str) -> dict:
    """The (first) query of a Grafana Explore link."""
    return json.loads(unquote(url.split("panes=", 1)[1]))["a"]["queries"][0]


def render_dashboards(traces: dict) -> dict[str, dict]:
    """The dashboards as the chart ships them (its ConfigMap) with ``monitoring.dashboards.traces``."""
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render({"monitoring": {"dashboards": {"traces": traces}}}, name="demo", namespace="llm")
    configmap = yaml.safe_load(rendered["saguaro/templates/dashboards.yaml"])
    return {name: json.loads(text) for name, text in configmap["data"].items()}


def without_jaeger(node):
    """``node`` without the source files' "jaeger" alternatives."""
    if isinstance(node, dict):
        return {k: without_jaeger(v) for k, v in node.items() if k != "jaeger"}
    if isinstance(node, list):
        return [without_jaeger(v) for v in node]
    return node


@pytest.fixture(scope="module")
def boards() -> dict[str, dict]:
    assert {p.name for p in DASHBOARDS} == {"saguaro-overview.json", "saguaro-speculation.json", "saguaro-gateway.json"}
    return {p.name: json.loads(p.read_text()) for p in DASHBOARDS}


def test_schema_and_layout(boards):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    uids = set()
    for name, board in boards.items():
        jsonschema.validate(board, SCHEMA, cls=jsonschema.Draft202012Validator)
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, (name, panel["title"])
            area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not area & cells, f"{name}: {panel['title']} overlaps another panel"
            cells |= area
    assert len(uids) == len(boards)
    for board in boards.values():  # links between the dashboards point at real uids
        for link in board["links"]:
            match = re.fullmatch(r"/d/([A-Za-z0-9_-]+)", link["url"])
            assert match is None or match.group(1) in uids


def test_variables_are_defined_and_data_sources_templated(boards):
    for name, board in boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["traces"]["query"] in ("tempo", "jaeger"), "trace links need a templated trace data source"
        used = set(re.findall(r"\$\{?(\w+)", json.dumps(board["panels"]) + json.dumps(board["links"])))
        used |= set(re.findall(r"\$\{?(\w+)", json.dumps([v.get("query") for v in variables.values()])))
        assert used - BUILTIN_VARS <= set(variables), name
        refs = [p["datasource"] for p in board["panels"] if "datasource" in p]
        refs += [v["datasource"] for v in variables.values() if "datasource" in v]
        for ref in refs:
            var = variables[ref["uid"][2:-1]]
            assert var["type"] == "datasource" and var["query"] == ref["type"], (name, ref)


def test_every_promql_query_names_exported_metrics_and_labels(boards):
    known = known_samples()
    names_used = set()
    for name, board in boards.items():
        promql, _ = queries(board)
        for expr in promql:
            found = metrics_in(expr)
            assert found, f"{name}: query names no Saguaro/vLLM metric: {expr}"
            for metric, selector in found:
                assert metric in known, f"{name}: {metric} is not exported by any service ({expr})"
                names_used.add(metric)
                labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
                if known[metric]:
                    assert labels <= known[metric] | TARGET_LABELS, f"{name}: {metric} has no label {labels}"
    # the speculation metrics the brief names all appear on some dashboard
    for d in DEFINITIONS:
        assert set(d.samples()) & names_used or d.kind == "histogram" and f"{d.name}_bucket" in names_used \
            or d.name == "vllm:cache_config_info", f"{d.name} is on no dashboard"


def test_every_traceql_query_names_emitted_spans_and_attributes(boards):
    attribute_keys = {v for k, v in vars(A).items() if k.isupper() and isinstance(v, str)}
    span_names = {A.ROUND_SPAN, A.SPECULATE_SPAN, *A.DRAFT_CHILD_SPANS}
    links = [link["url"] for board in boards.values() for link in board["links"] if "explore" in link["url"]]
    links += [dl["url"] for board in boards.values() for p in board["panels"]
              for dl in p.get("fieldConfig", {}).get("defaults", {}).get("links", [])]
    assert links, "no trace links"

    traceql = [q for board in boards.values() for q in queries(board)[1]]
    traceql += [explore_query(url)["query"] for url in links]
    for query in traceql:
        for key in re.findall(r"\bspan\.([\w.]+)", query):
            assert key in attribute_keys, f"unknown span attribute {key!r} in {query}"
        for span in re.findall(r'(?<![\w.])name\s*=\s*"([^"]+)"', query):  # the intrinsic span name
            assert span in span_names, f"unknown span name {span!r} in {query}"
        for service in re.findall(r'resource\.service\.name\s*=\s*"([^"]+)"', query):
            assert service in SERVICES, query


def test_every_trace_query_has_a_jaeger_search_naming_emitted_spans(boards):
    """Jaeger's search is service + operation + tag equality + duration: each Tempo query's
    equivalent must name a service, span and attributes the services emit."""
    attribute_keys = {v for k, v in vars(A).items() if k.isupper() and isinstance(v, str)}
    span_names = {A.ROUND_SPAN, A.SPECULATE_SPAN, *A.DRAFT_CHILD_SPANS}
    for name, board in boards.items():
        elements = trace_elements(board)
        assert elements, name
        for element in elements:
            search = element.get("jaeger")
            assert search is not None, f"{name}: a trace query without its Jaeger search: {element}"
            assert search["service"] in SERVICES
            assert search.get("operation", A.ROUND_SPAN) in span_names
            for pair in search.get("tags", "").split():
                assert pair.split("=", 1)[0] in attribute_keys, (name, search)


@pytest.mark.parametrize("kind", ["tempo", "jaeger"])
def test_chart_renders_the_chosen_trace_data_source(boards, kind):
    rendered = render_dashboards({"type": kind, "datasourceUid": f"{kind}-uid"})
    assert set(rendered) == set(boards)
    for name, board in rendered.items():
        jsonschema.validate(board, SCHEMA, cls=jsonschema.Draft202012Validator)
        text = json.dumps(board)
        assert '"jaeger": {' not in text, f"{name}: a source-only key was shipped"
        (traces,) = [v for v in board["templating"]["list"] if v["name"] == "traces"]
        assert traces["query"] == kind and traces["current"]["value"] == f"{kind}-uid"
        source = without_jaeger(boards[name])
        for var in source["templating"]["list"]:
            if var["name"] == "traces":
                var.update(traces)
        if kind == "tempo":
            assert board == source  # Tempo: the source files as they are
            continue
        assert "tempo" not in text.lower(), f"{name}: a Tempo reference is left"
        expected = [e["jaeger"] for e in trace_elements(boards[name])]
        searches = [t for p in board["panels"] if p.get("datasource", {}).get("uid") == "${traces}" for t in p["targets"]]
        searches += [explore_query(link["url"]) for link in board["links"] if "explore" in link.get("url", "")]
        searches += [explore_query(dl["url"]) for p in board["panels"]
                     for dl in p.get("fieldConfig", {}).get("defaults", {}).get("links", [])]
        assert [{k: v for k, v in q.items() if k not in ("refId", "datasource")} for q in searches] == expected
        assert all(q["datasource"] == {"type": "jaeger", "uid": "${traces}"} for q in searches)


def test_every_promql_selector_is_scoped_by_namespace_and_pod(boards):
    """In a shared Prometheus, every panel (and every query variable after namespace and pod)
    narrows each selector to the chosen namespaces and pods."""
    for name, board in boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["namespace"]["type"] == variables["pod"]["type"] == "query", name
        assert "$namespace" in variables["pod"]["definition"], name
        promql, _ = queries(board)
        own = {variables[v]["query"]["query"] for v in ("namespace", "pod")}  # they choose the scope
        assert promql, name
        recorded = recorded_series()
        for expr in (e for e in promql if e not in own):
            for metric, selector in metrics_in(expr):
                assert 'namespace=~"$namespace"' in selector, (name, metric, expr)
                # recorded per-pool series keep no pod label: namespace is their scope
                assert 'pod=~"$pod"' in selector or "pod" not in recorded.get(metric, {"pod"}), (name, metric, expr)
