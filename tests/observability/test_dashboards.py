"""The Grafana dashboards the chart ships: valid against a JSON schema of the Grafana dashboard
model subset they use, laid out on the 24-column grid, every variable defined, every PromQL
query naming metrics (and labels) that the services export, every TraceQL query naming spans
and attributes the services emit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from saguaro.services.gateway.metrics import GatewayMetrics as GatewayServiceMetrics
from saguaro.telemetry import attributes as A
from saguaro.telemetry.metrics import DEFINITIONS, exported_samples

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "helm" / "saguaro" / "dashboards").glob("*.json"))
SCHEMA = json.loads((Path(__file__).parent / "grafana_dashboard.schema.json").read_text())
BUILTIN_VARS = {"__rate_interval", "__interval", "__range"}
TARGET_LABELS = {"pod", "instance", "job", "namespace", "container"}  # added by Prometheus at scrape time
SERVICES = {"saguaro-target", "saguaro-draft", "saguaro-gateway"}
METRIC = re.compile(r"\b(vllm:[a-z0-9_:]+|saguaro_[a-z0-9_]+)(\{[^}]*\})?")


def gateway_samples() -> dict[str, set[str]]:
    """Sample names the gateway service registers (its own module, instantiated for real)."""
    out: dict[str, set[str]] = {}
    for family in GatewayServiceMetrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        for suffix in suffixes:
            out[family.name + suffix] = set()
    return out


def known_samples() -> dict[str, set[str]]:
    """Sample name -> its label names (empty set: labels not checked)."""
    known = {name: set(d.labels) for name, d in exported_samples().items()}
    for name, labels in gateway_samples().items():
        known.setdefault(name, labels)
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
            found = METRIC.findall(expr)
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
    from urllib.parse import unquote

    traceql = [q for board in boards.values() for q in queries(board)[1]]
    traceql += [json.loads(unquote(url.split("panes=", 1)[1]))["a"]["queries"][0]["query"] for url in links]
    for query in traceql:
        for key in re.findall(r"\bspan\.([\w.]+)", query):
            assert key in attribute_keys, f"unknown span attribute {key!r} in {query}"
        for span in re.findall(r'(?<![\w.])name\s*=\s*"([^"]+)"', query):  # the intrinsic span name
            assert span in span_names, f"unknown span name {span!r} in {query}"
        for service in re.findall(r'resource\.service\.name\s*=\s*"([^"]+)"', query):
            assert service in SERVICES, query
