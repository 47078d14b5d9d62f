"""Every PromQL expression the chart ships, taken from a real Helm render: dashboard panels and
variables, KEDA trigger queries and recording/alerting rules.

Reading them from the render (not from the source files) means a test sees the expressions with
the release's selectors filled in, exactly as Grafana, KEDA and Prometheus would receive them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import helm_python
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "saguaro"
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


def panel_queries(name: str, board: dict) -> list[Query]:
    """The PromQL targets of every panel (rows' nested panels included); TraceQL targets skipped."""
    out = []
    panels = list(board["panels"])
    while panels:
        panel = panels.pop(0)
        panels += panel.get("panels", [])
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append(Query(f"dashboard {name} / {panel.get('title', '?')}", target["expr"]))
    return out


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
