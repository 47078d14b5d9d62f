"""Chart fixtures: the real Helm (v4 SDK through helm-python-sdk's libhelm_c) renders
helm/saguaro offline; nothing here talks to a cluster.

`TOGGLES` are the chart's switches; `COMBOS` is their full product, so every test that takes a
`combo` runs on each of the 128 combinations (plus the example values files, a few modes and the
internal TLS cases; `tls_case` takes only the latter).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "saguaro"
RELEASE = "demo"
NAMESPACE = "llm"
KUBE_VERSIONS = ("1.30", "1.34")
SAGUARO_COMPONENTS = ("gateway", "target", "draft")


def deep_merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Each switch: name -> (off overlay, on overlay). The product of all of them is rendered.
TOGGLES: dict[str, tuple[dict, dict]] = {
    "remote": ({"pairing": {"mode": "colocated"}}, {"pairing": {"mode": "remote"}}),
    "external-redis": (
        {"redis": {"mode": "bundled"}},
        {"redis": {"mode": "external", "external": {"urlSecret": {"name": "redis-url", "key": "url"}}}},
    ),
    "keda": (
        {"target": {"autoscaling": {"enabled": True}}, "draft": {"autoscaling": {"enabled": True}}},
        {"autoscaling": {"keda": {"enabled": True}},
         "target": {"autoscaling": {"enabled": True}}, "draft": {"autoscaling": {"enabled": True}}},
    ),
    "monitoring": (
        {"metrics": {"enabled": False}, "monitoring": {"dashboards": {"enabled": False}}},
        {"metrics": {"enabled": True}, "otel": {"enabled": True, "headersSecret": "otel-headers",
                                                "resourceAttributes": {"deployment.environment": "test"}},
         "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                        "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}},
    ),
    "ingress": (
        {"ingress": {"enabled": False}, "httpRoute": {"enabled": False}},
        {"ingress": {"enabled": True, "className": "nginx"},
         "httpRoute": {"enabled": True, "hostnames": ["saguaro.example.com"],
                       "parentRefs": [{"name": "inference-gateway", "namespace": "gateways", "sectionName": "https"}]}},
    ),
    "tls": (
        {"gateway": {"tls": {"enabled": False}}, "internalTls": {"enabled": False}},
        {"gateway": {"tls": {"enabled": True, "existingSecret": "saguaro-tls"},
                     "apiKeys": {"existingSecret": "saguaro-api-keys"}, "maxStreamsPerKey": 8},
         "ingress": {"tls": [{"secretName": "saguaro-ingress-tls", "hosts": ["saguaro.example.com"]}]},
         # mTLS on every hop inside the release (internalTls.mutual defaults to true)
         "internalTls": {"enabled": True, "existingSecret": "saguaro-internal-tls"}},
    ),
    # the Gateway API Inference Extension: InferencePool, endpoint picker, HTTPRoute to the pool,
    # and the http-api container in each target pod; the picker reads the targets' metrics, so
    # they stay on (metrics.enabled) whatever "monitoring" says
    "inference-pool": (
        {"inferencePool": {"enabled": False}},
        {"inferencePool": {"enabled": True, "httpRoute": {
            "hostnames": ["pool.example.com"],
            "parentRefs": [{"name": "inference-gateway", "namespace": "gateways", "sectionName": "http"}]}},
         "metrics": {"enabled": True}},
    ),
}


def combo_values(flags: tuple[bool, ...]) -> dict:
    values: dict = {}
    for (name, (off, on)), flag in zip(TOGGLES.items(), flags):
        values = deep_merge(values, on if flag else off)
    return values


def combo_id(flags: tuple[bool, ...]) -> str:
    on = [name for name, flag in zip(TOGGLES, flags) if flag]
    return "+".join(on) if on else "all-off"


COMBOS = [pytest.param(combo_values(flags), id=combo_id(flags))
          for flags in itertools.product((False, True), repeat=len(TOGGLES))]

# Modes outside the toggle product, and the example values files shipped with the chart.
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
EXTRA_CASES = [
    pytest.param({}, id="defaults"),
    pytest.param({"target": {"mode": "sd"}}, id="mode-sd"),
    pytest.param({"target": {"mode": "ar"}, "redis": {"mode": "none"}}, id="mode-ar-no-redis"),
    pytest.param({"gpu": {"enabled": False}, "models": {"source": "hostPath"}, "pairing": {"mode": "remote"}},
                 id="cpu-only-remote-hostpath"),
    pytest.param({"models": {"source": "none"}, "redis": {"bundled": {"auth": {"enabled": False},
                                                                      "persistence": {"enabled": True}}}},
                 id="models-in-image-redis-persistent-noauth"),
    pytest.param({"models": {"source": "emptyDir", "initContainers": [{
        "name": "fetch-models", "image": "example.com/model-fetcher:1.0",
        "args": ["--to", "/models"],
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "models", "mountPath": "/models"}]}]},
        "pairing": {"mode": "remote", "remote": {"antiAffinity": "preferred"}}},
        id="models-emptydir-download-remote-preferred"),
    pytest.param({"gateway": {"discovery": "static", "staticTargets": ["10.0.0.7:50051", "10.0.0.8:50051"]},
                  "serviceAccount": {"create": False}, "networkPolicy": {"enabled": False},
                  "redis": {"mode": "external", "external": {"url": "redis://redis.shared.svc:6379/3"}}},
                 id="static-discovery-external-redis-url"),
    pytest.param({"target": {"engine": {"maxModelLen": 8192, "prefixCaching": False}, "readyWhenDegraded": False},
                  "draft": {"engine": {"maxModelLen": 8192, "prefixCaching": False}},
                  "pairing": {"mode": "remote"}, "logFormat": "json",
                  "speculation": {"k": 3, "fanOutList": [2, 2, 1, 1], "fanOutListMiss": [3, 1, 1, 1],
                                  "backup": "adaptive", "saguaroC": 0.5}},
                 id="tuned-engine-and-tree"),
    # draft data parallelism (draft.workers): colocated containers draft, draft-1, ...; remote
    # StatefulSets <draft>-w<i> with one autoscaler each; sd worker threads
    pytest.param({"draft": {"workers": 2}}, id="draft-workers-2-colocated"),
    pytest.param({"draft": {"workers": 3}, "metrics": {"enabled": False}, "gpu": {"enabled": False}},
                 id="draft-workers-3-colocated-cpu-no-metrics"),
    pytest.param({"pairing": {"mode": "remote"}, "draft": {"workers": 2, "replicas": 2}, "target": {"replicas": 2}},
                 id="draft-workers-2-remote"),
    pytest.param({"pairing": {"mode": "remote"}, "autoscaling": {"keda": {"enabled": True}},
                  "target": {"autoscaling": {"enabled": True}},
                  "draft": {"workers": 3, "autoscaling": {"enabled": True}},
                  "monitoring": {"podMonitor": {"enabled": True}}},
                 id="draft-workers-3-remote-keda-podmonitor"),
    pytest.param({"pairing": {"mode": "remote", "remote": {"antiAffinity": "preferred"}},
                  "target": {"autoscaling": {"enabled": True}},
                  "draft": {"workers": 2, "autoscaling": {"enabled": True}}},
                 id="draft-workers-2-remote-hpa"),
    pytest.param({"target": {"mode": "sd"}, "draft": {"workers": 2}}, id="draft-workers-2-mode-sd"),
] + [pytest.param(yaml.safe_load(path.read_text()) or {}, id=f"example-{path.stem}") for path in EXAMPLES]


# Internal TLS (internalTls) beyond the "tls" toggle: both pairing modes with mutual on and off,
# the plaintext colocated hop, several draft workers, the modes without a draft service, and static
# discovery naming the target pods (what a shared certificate can carry).
INTERNAL_TLS_SECRET = "saguaro-internal-tls"


def internal_tls(pairing: str, mutual: bool, **overrides) -> dict:
    values = {"pairing": {"mode": pairing},
              "internalTls": {"enabled": True, "existingSecret": INTERNAL_TLS_SECRET, "mutual": mutual}}
    return deep_merge(values, overrides)


INTERNAL_TLS_CASES = [
    pytest.param(internal_tls(pairing, mutual), id=f"internal-tls-{pairing}-{'mtls' if mutual else 'tls'}")
    for pairing in ("colocated", "remote") for mutual in (True, False)
] + [
    pytest.param(internal_tls("colocated", True, internalTls={"colocatedDraft": False}),
                 id="internal-tls-colocated-plaintext-loopback"),
    pytest.param(internal_tls("remote", True, internalTls={"colocatedDraft": False}),
                 id="internal-tls-remote-colocated-draft-off"),
    pytest.param(internal_tls("colocated", True, draft={"workers": 2}), id="internal-tls-colocated-2-workers"),
    pytest.param(internal_tls("remote", False, draft={"workers": 2, "replicas": 2}, target={"replicas": 2}),
                 id="internal-tls-remote-2-workers-tls"),
    pytest.param(internal_tls("colocated", True, target={"mode": "sd"}), id="internal-tls-mode-sd"),
    pytest.param(internal_tls("colocated", False, target={"mode": "ar"}, redis={"mode": "none"}),
                 id="internal-tls-mode-ar-tls"),
    pytest.param(internal_tls("remote", True, target={"replicas": 2}, gateway={
        "discovery": "static", "tls": {"enabled": True, "existingSecret": "saguaro-tls"},
        "staticTargets": [f"{RELEASE}-saguaro-target-{i}.{RELEASE}-saguaro-target.{NAMESPACE}.svc.cluster.local:50051"
                          for i in range(2)]}),
                 id="internal-tls-remote-static-discovery-public-tls"),
]

ALL_CASES = COMBOS + EXTRA_CASES + INTERNAL_TLS_CASES


@dataclass
class Manifests:
    """One rendering of the chart: the Kubernetes objects and NOTES.txt."""

    values: dict
    objects: list[dict]
    notes: str
    sources: dict[str, str] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def find(self, kind: str, name: str) -> dict | None:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        return found[0] if found else None

    def workloads(self) -> list[dict]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet")]

    def workload(self, component: str) -> dict:
        found = [o for o in self.workloads() if component_of(o) == component]
        assert len(found) == 1, f"expected one {component} workload, found {len(found)}"
        return found[0]

    def workloads_of(self, component: str) -> list[dict]:
        """Every workload of one component (remote pairing with draft.workers > 1: one draft
        StatefulSet per worker)."""
        return [o for o in self.workloads() if component_of(o) == component]

    def has_workload(self, component: str) -> bool:
        return any(component_of(o) == component for o in self.workloads())

    def config_maps(self) -> dict[str, dict[str, str]]:
        return {o["metadata"]["name"]: o.get("data", {}) for o in self.of_kind("ConfigMap")}

    def name(self, component: str) -> str:
        return f"{RELEASE}-saguaro-{component}"


def component_of(obj: dict) -> str | None:
    labels = obj.get("metadata", {}).get("labels", {}) or {}
    return labels.get("app.kubernetes.io/component")


_WORKER_CONTAINER = re.compile(r"^draft-[1-9][0-9]*$")


def role_of(container: dict) -> str:
    """The Saguaro role a container runs: colocated draft workers "draft-1", "draft-2", ... are drafts."""
    return "draft" if _WORKER_CONTAINER.match(container["name"]) else container["name"]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def parse_rendered(rendered: dict[str, str], values: dict) -> Manifests:
    objects, notes = [], ""
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return Manifests(values=values, objects=objects, notes=notes, sources=rendered)


@pytest.fixture(scope="session")
def chart():
    import helm_python

    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart):
    """render(values) -> Manifests, memoised per values (renders are pure)."""
    cache: dict[str, Manifests] = {}

    def _render(values: dict | None = None) -> Manifests:
        values = values or {}
        key = json.dumps(values, sort_keys=True)
        if key not in cache:
            rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
            cache[key] = parse_rendered(rendered, values)
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def chart_values(chart) -> dict:
    return chart.values


# ------------------------------------------------------------------------------------------
# Kubernetes semantics the tests need: $(VAR) expansion of env values and container args.
# ------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes a $, and an
    undefined reference is left as written."""

    def sub(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR.sub(sub, text)


FAKE_SECRET = "s3cretValue"


def container_environment(manifests: Manifests, workload: dict, container: dict) -> dict[str, str]:
    """The environment the kubelet would give ``container``: envFrom ConfigMaps first, then env
    in order (each value expanded against what precedes it); downward-API fields and Secrets get
    stand-in values."""
    config_maps = manifests.config_maps()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in config_maps, f"envFrom ConfigMap {ref} is not rendered"
        env.update(config_maps[ref])
    fields = {
        "metadata.name": f"{workload['metadata']['name']}-0",
        "metadata.namespace": NAMESPACE,
        "spec.nodeName": "gpu-node-0",
        "metadata.labels['apps.kubernetes.io/pod-index']": "0",
    }
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "fieldRef" in var.get("valueFrom", {}):
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in fields, f"unexpected fieldRef {path}"
            env[var["name"]] = fields[path]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = FAKE_SECRET
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = config_maps[ref["name"]][ref["key"]]
        else:
            raise AssertionError(f"unsupported env source {var}")
    return env


def expanded_args(manifests: Manifests, workload: dict, container: dict) -> list[str]:
    env = container_environment(manifests, workload, container)
    args = [expand(arg, env) for arg in container.get("args", [])]
    unresolved = [arg for arg in args if _VAR.search(arg)]
    assert not unresolved, f"{container['name']}: unresolved $(VAR) references {unresolved}"
    return args


def pytest_generate_tests(metafunc):
    """`combo`: the 128 toggle combinations; `case`: those plus the extra modes and examples."""
    if "combo" in metafunc.fixturenames:
        metafunc.parametrize("combo", COMBOS)
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", ALL_CASES)
    if "tls_case" in metafunc.fixturenames:
        metafunc.parametrize("tls_case", INTERNAL_TLS_CASES)


@pytest.fixture(scope="session")
def k8s():
    """The Kubernetes-semantics helpers above, for test modules."""
    return SimpleNamespace(
        expand=expand, container_environment=container_environment, expanded_args=expanded_args,
        pod_spec=pod_spec, pod_labels=pod_labels, component_of=component_of, role_of=role_of, deep_merge=deep_merge,
        parse_rendered=parse_rendered, FAKE_SECRET=FAKE_SECRET, RELEASE=RELEASE, NAMESPACE=NAMESPACE,
        KUBE_VERSIONS=KUBE_VERSIONS, CHART=CHART, REPO=REPO, TOGGLES=TOGGLES, combo_values=combo_values,
        INTERNAL_TLS_SECRET=INTERNAL_TLS_SECRET,
    )
