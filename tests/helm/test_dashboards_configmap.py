"""The dashboards ConfigMap is templated from dashboards/*.json: it renders every file that is
there, and nothing (without an error) when the folder is empty or absent."""

from __future__ import annotations

import json
import shutil

import helm_python
import pytest

DASHBOARD = {"title": "Saguaro test", "uid": "saguaro-test", "panels": [], "schemaVersion": 39}


def chart_copy(k8s, tmp_path, dashboards: dict[str, str] | None):
    """A copy of the chart whose dashboards/ folder holds exactly ``dashboards`` (None: no folder)."""
    root = tmp_path / "saguaro"
    shutil.copytree(k8s.CHART, root, ignore=shutil.ignore_patterns("dashboards"))
    if dashboards is not None:
        (root / "dashboards").mkdir()
        for name, text in dashboards.items():
            (root / "dashboards" / name).write_text(text)
    return root


def dashboard_maps(k8s, root, values=None):
    with helm_python.Chart.load(root) as chart:
        manifests = k8s.parse_rendered(chart.render(values or {}, name=k8s.RELEASE, namespace=k8s.NAMESPACE), {})
    return [o for o in manifests.objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboards")]


@pytest.mark.parametrize("dashboards", [None, {}, {"README.md": "not a dashboard"}], ids=["absent", "empty", "no-json"])
def test_no_dashboards_no_configmap(k8s, tmp_path, dashboards):
    root = chart_copy(k8s, tmp_path, dashboards)
    assert dashboard_maps(k8s, root) == []
    report = helm_python.lint(root, {}, strict=True)
    assert not report["errors"]


def test_dashboards_render_into_one_labelled_configmap(k8s, tmp_path):
    files = {"saguaro-overview.json": json.dumps(DASHBOARD),
             "saguaro-speculation.json": json.dumps({**DASHBOARD, "uid": "spec", "title": "Speculation"})}
    root = chart_copy(k8s, tmp_path, files)
    (configmap,) = dashboard_maps(k8s, root)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(configmap["data"]) == set(files)
    for name, text in files.items():
        assert json.loads(configmap["data"][name]) == json.loads(text)
    assert dashboard_maps(k8s, root, {"monitoring": {"dashboards": {"enabled": False}}}) == []
    custom = dashboard_maps(k8s, root, {"monitoring": {"dashboards": {
        "labels": {"grafana_dashboard": "saguaro"}, "annotations": {"grafana_folder": "LLM"}}}})
    assert custom[0]["metadata"]["labels"]["grafana_dashboard"] == "saguaro"
    assert custom[0]["metadata"]["annotations"] == {"grafana_folder": "LLM"}


def test_a_dashboard_that_is_not_json_fails_the_render_with_its_name(k8s, tmp_path):
    """The chart parses each dashboard (to set its trace data source): a broken file must fail
    loudly, not ship as Helm's silent {"Error": ...} map."""
    root = chart_copy(k8s, tmp_path, {"saguaro-broken.json": '{"title": "x", '})
    with pytest.raises(helm_python.HelmError, match="saguaro-broken.json is not valid JSON"):
        dashboard_maps(k8s, root)


def test_shipped_dashboards_are_valid_json(k8s, render):
    """Whatever dashboards the chart ships now (possibly none) are valid JSON and all rendered."""
    shipped = sorted((k8s.CHART / "dashboards").glob("*.json")) if (k8s.CHART / "dashboards").is_dir() else []
    maps = [o for o in render({}).objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboards")]
    if not shipped:
        assert maps == []
        return
    (configmap,) = maps
    assert set(configmap["data"]) == {p.name for p in shipped}
    for path in shipped:
        dashboard = json.loads(path.read_text())
        assert dashboard.get("title"), path.name
    # a ConfigMap holds at most 1 MiB
    assert sum(len(v.encode()) for v in configmap["data"].values()) < 1024 * 1024
