"""Every PromQL expression the chart ships, taken from a real Helm render: dashboard panels and
variables, KEDA trigger queries and recording/alerting rules.

Reading them from the render (not from the source files) means a test sees the expressions with
the release's selectors filled in, exactly as Grafana, KEDA and Prometheus would receive them.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "saguaro"
DOC = ROOT / "docs" / "observability.md"
BEGIN, END = "<!-- queries: begin (generated) -->", "<!-- queries: end -->"
# The values docs/observability.md's query list is rendered with (every query-bearing switch on;
# tests/observability/test_chart_queries.py runs the same expressions).
DOC_VALUES = {"metrics": {"enabled": True}, "autoscaling": {"keda": {"enabled": True}},
              "target": {"autoscaling": {"enabled": True}}, "draft": {"autoscaling": {"enabled": True}},
              "monitoring": {"prometheusRule": {"enabled": True}, "dashboards": {"enabled": True}}}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<match>.+),\s*)?(?P<label>\w+)\)$")


@dataclass(frozen=True)
class Query:
    """One shipped expression and where it comes from (for failure messages and exceptions)."""

    source: str   # e.g. "dashboard saguaro-overview.json / Requests running", "ScaledObject demo-saguaro-target"
    expr: str


def render(values: dict, release: str, namespace: str) -> list[dict]:
    """The chart's manifests for ``values``, parsed (NOTES.txt and empty documents left out)."""
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    return [doc for name, text in rendered.items() if name.endswith((".yaml", ".yml"))
            for doc in yaml.safe_load_all(text) if doc]


def dashboards(manifests: list[dict]) -> dict[str, dict]:
    """Dashboard name -> its JSON model, from the rendered dashboards ConfigMap(s)."""
    boards = {}
    for doc in manifests:
        if doc["kind"] == "ConfigMap":
            for name, text in (doc.get("data") or {}).items():
                if name.endswith(".json"):
                    boards[name] = json.loads(text)
    return boards


def promql_targets(board: dict) -> Iterator[tuple[dict, str]]:
    """(panel, PromQL expression) of every panel target (rows' nested panels included); TraceQL
    targets skipped."""
    panels = list(board["panels"])
    while panels:
        panel = panels.pop(0)
        panels += panel.get("panels", [])
        for target in panel.get("targets", []):
            if "expr" in target:
                yield panel, target["expr"]


def panel_queries(name: str, board: dict) -> list[Query]:
    return [Query(f"dashboard {name} / {panel.get('title', '?')}", expr) for panel, expr in promql_targets(board)]


def query_variables(board: dict) -> list[dict]:
    """The dashboard's ``query`` template variables, in definition order (later ones may use earlier)."""
    return [var for var in board["templating"]["list"] if var["type"] == "query"]


def parse_label_values(query: str) -> tuple[str | None, str]:
    """``label_values(metric{...}, label)`` -> (series selector or None, label)."""
    found = LABEL_VALUES.match(query.strip())
    if not found:
        raise ValueError(f"not a label_values() query: {query!r}")
    return found["match"], found["label"]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's variable interpolation (``$x``, ``${x}``, ``[[x]]``) with already formatted values."""
    def replace(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        if name not in variables:
            raise KeyError(f"{expr!r} uses ${name}, which no variable defines")
        return variables[name]
    return VARIABLE.sub(replace, expr)


def trigger_queries(manifests: list[dict]) -> list[Query]:
    """The PromQL of every KEDA ``prometheus`` trigger."""
    return [Query(f"ScaledObject {doc['metadata']['name']} / {trigger.get('name', trigger['type'])}",
                  trigger["metadata"]["query"])
            for doc in manifests if doc["kind"] == "ScaledObject"
            for trigger in doc["spec"]["triggers"] if trigger["type"] == "prometheus"]


def rule_groups(manifests: list[dict]) -> list[dict]:
    """The rule groups of every rendered PrometheusRule (a Prometheus rule file's ``groups``)."""
    return [group for doc in manifests if doc["kind"] == "PrometheusRule" for group in doc["spec"]["groups"]]


def rule_queries(groups: list[dict]) -> list[Query]:
    """Recording rules are read back by the name they record; alert expressions as written."""
    out = []
    for group in groups:
        for rule in group["rules"]:
            if "record" in rule:
                out.append(Query(f"recording rule {rule['record']}", rule["record"]))
            out.append(Query(f"rule {rule.get('record') or rule.get('alert')} (expr)", rule["expr"]))
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def query_table(manifests: list[dict]) -> str:
    """docs/observability.md's list of every shipped expression: where it is, what it means, the query."""
    rows = ["| where | what it means | query |", "|---|---|---|"]
    for name, board in sorted(dashboards(manifests).items()):
        for panel, expr in promql_targets(board):
            rows.append(f"| {name} / {_cell(panel['title'])} | {_cell(panel.get('description', ''))} | `{_cell(expr)}` |")
    for doc in manifests:
        if doc["kind"] == "ScaledObject":
            for trigger in doc["spec"]["triggers"]:
                if trigger["type"] == "prometheus":
                    rows.append(f"| ScaledObject {doc['metadata']['name']} / {trigger.get('name', '')} | KEDA trigger "
                                f"(threshold {trigger['metadata'].get('threshold')} per replica) | "
                                f"`{_cell(trigger['metadata']['query'])}` |")
    for group in rule_groups(manifests):
        for rule in group["rules"]:
            rows.append(f"| PrometheusRule / {rule.get('record') or rule.get('alert')} | recording rule "
                        f"({group['name']}) | `{_cell(rule['expr'])}` |")
    return "\n".join(rows)


def documented_section(doc: str, table: str) -> str:
    """``doc`` with the generated query table between its markers."""
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[:start] + "\n" + table + "\n" + doc[end:]


if __name__ == "__main__":  # python tests/observability/chart_queries.py: rewrite the doc's table
    text = DOC.read_text()
    DOC.write_text(documented_section(text, query_table(render(DOC_VALUES, "demo", "llm"))))
    print(f"{DOC}: query list regenerated", file=sys.stderr)
