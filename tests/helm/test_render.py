"""Render, lint and validate: every toggle combination and example renders with Helm, passes
`helm lint --strict` (for Kubernetes 1.34; the chart's kubeVersion is checked against 1.30 too: no
template branches on the version), and every built-in object validates in strict
mode (unknown fields are errors) against the 1.30 and 1.34 OpenAPI schemas (conftest.KUBE_VERSIONS) (kubernetes-validate).

Custom resources (KEDA ScaledObject, ServiceMonitor, PodMonitor, HTTPRoute, InferencePool) have no
schema in kubernetes-validate; test_crds.py checks them structurally.
"""

from __future__ import annotations

import json

import helm_python
import kubernetes_validate
import pytest

CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("inference.networking.k8s.io/v1", "InferencePool"),
}

_validated: set[tuple[str, str]] = set()


def validate_strict(obj: dict, version: str) -> None:
    """kubernetes-validate in strict mode, once per distinct object and version."""
    key = (version, json.dumps(obj, sort_keys=True))
    if key in _validated:
        return
    kubernetes_validate.validate(obj, version, strict=True)
    _validated.add(key)


def test_case_renders_and_validates(case, render, k8s):
    manifests = render(case)
    assert manifests.objects, "nothing rendered"
    for obj in manifests.objects:
        assert obj["metadata"]["name"], obj
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        for version in k8s.KUBE_VERSIONS:
            try:
                validate_strict(obj, version)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version}: "
                            f"{exc.message} at {list(exc.absolute_path)}")


def test_every_rendered_kind_is_known(case, render):
    """Objects are either built-in (validated above) or one of the CRDs test_crds.py checks."""
    builtin = {"ConfigMap", "Secret", "Service", "ServiceAccount", "Deployment", "StatefulSet",
               "PersistentVolumeClaim", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
               "Role", "RoleBinding", "Ingress", "Pod"}  # Pod: the `helm test` hook
    for obj in render(case).objects:
        assert obj["kind"] in builtin or (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS, obj["kind"]


def test_object_names_are_unique_per_kind(case, render):
    seen = set()
    for obj in render(case).objects:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)


def lint_problems(k8s, values: dict, kube_version: str) -> list:
    report = helm_python.lint(k8s.CHART, values, strict=True, kube_version=kube_version, namespace=k8s.NAMESPACE)
    return [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]


def test_helm_lint_strict(case, k8s):
    assert not lint_problems(k8s, case, "v1.34.0")


@pytest.mark.parametrize("every_toggle", [False, True], ids=["all-off", "all-on"])
def test_helm_lint_strict_on_the_oldest_kubernetes_validated(every_toggle, k8s):
    """No template branches on the Kubernetes version (.Capabilities.KubeVersion), so linting
    every case for 1.30 too would repeat the 1.34 lint; this checks the chart's ``kubeVersion``
    admits 1.30 (every object still validates against 1.30's schemas in
    test_case_renders_and_validates)."""
    values = k8s.combo_values((every_toggle,) * len(k8s.TOGGLES))
    assert not lint_problems(k8s, values, "v1.30.0")


def test_long_release_names_fit_dns_labels(chart, k8s):
    """Names stay within 63 characters (StatefulSet pods add an ordinal and a revision hash label)."""
    name = "a-very-long-release-name-for-a-production-cluster-xyz"  # 53: Helm's maximum
    rendered = chart.render({"pairing": {"mode": "remote"}}, name=name, namespace=k8s.NAMESPACE)
    manifests = k8s.parse_rendered(rendered, {})
    for obj in manifests.objects:
        assert len(obj["metadata"]["name"]) <= 63
        if obj["kind"] == "StatefulSet":
            assert len(obj["metadata"]["name"]) <= 52, "StatefulSet names get a 10-char revision hash suffix"


def test_defaults_render_the_documented_layout(render):
    manifests = render({})
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in manifests.objects)
    assert ("Deployment", "demo-saguaro-gateway") in kinds
    assert ("Deployment", "demo-saguaro-target") in kinds  # colocated: the draft is a container
    assert ("StatefulSet", "demo-saguaro-redis") in kinds
    assert not manifests.find("StatefulSet", "demo-saguaro-draft")
    assert "Saguaro" in manifests.notes and "port-forward" in manifests.notes
