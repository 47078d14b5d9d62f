"""docs/observability.md lists every PromQL expression the chart ships, generated from a render,
so the list cannot drift from what Grafana, KEDA and Prometheus receive."""

from __future__ import annotations

from observability.chart_queries import DOC, DOC_VALUES, documented_section, query_table, render


def test_the_documented_query_list_is_the_rendered_one():
    text = DOC.read_text()
    expected = documented_section(text, query_table(render(DOC_VALUES, "demo", "llm")))
    assert text == expected, ("docs/observability.md's query list is stale: run "
                              "`.venv/bin/python tests/observability/chart_queries.py`")
