"""Draft data parallelism in the chart (`draft.workers`): the target gets one `--draft-address`
argument per draft worker and `--draft-workers M`, parsed here by the real CLI parser.

* colocated: containers draft, draft-1, ... in every target pod, each on its own loopback ports
  (draft.port + i, draft.metricsPort + i) with its own GPUs; ports that collide inside the pod
  fail the render;
* remote: M StatefulSets <draft>-w<i> under the one headless draft Service; target-N dials pod N
  of each; one NetworkPolicy, PDB and PodMonitor for all of them, one autoscaler per set;
* sd: M worker threads in the target process.

The rendered objects are also validated strictly against the Kubernetes 1.30 and 1.34 schemas
(the same cases run through every test of the suite via conftest.EXTRA_CASES).
"""

from __future__ import annotations


import helm_python
import kubernetes_validate
import pytest

from tests_support import parse_cli as parse

GPU = "nvidia.com/gpu"
DRAFT = "demo-saguaro-draft"
DNS = "llm.svc.cluster.local"


def validate(manifests, k8s) -> None:
    for obj in manifests.objects:
        if obj["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/", "gateway.networking.k8s.io/")):
            continue
        for version in k8s.KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def target_of(manifests, k8s):
    workload = manifests.workload("target")
    container = k8s.pod_spec(workload)["containers"][0]
    assert container["name"] == "target"
    return workload, container, parse(k8s.expanded_args(manifests, workload, container))


def address_items(container: dict) -> list[str]:
    """The raw args items after --draft-address, up to the next flag."""
    args = container["args"]
    start = args.index("--draft-address") + 1
    end = next(i for i in range(start, len(args)) if args[i].startswith("--"))
    return args[start:end]


def test_colocated_two_workers(render, k8s):
    manifests = render({"draft": {"workers": 2}})
    validate(manifests, k8s)
    workload, target, parsed = target_of(manifests, k8s)
    # two args items, each one $(VAR) that expands to exactly one address
    assert address_items(target) == ["$(SAGUARO_DRAFT_ADDRESS)", "$(SAGUARO_DRAFT_ADDRESS_1)"]
    expanded = k8s.expanded_args(manifests, workload, target)
    start = expanded.index("--draft-address") + 1
    assert expanded[start:start + 2] == ["127.0.0.1:50061", "127.0.0.1:50062"]
    assert parsed.draft_address == ["127.0.0.1:50061", "127.0.0.1:50062"]
    assert parsed.draft_workers == 2 and parsed.mode == "ssd"

    containers = k8s.pod_spec(workload)["containers"]
    assert [c["name"] for c in containers] == ["target", "draft", "draft-1"]
    drafts = [parse(k8s.expanded_args(manifests, workload, c)) for c in containers[1:]]
    assert [d.command for d in drafts] == ["draft", "draft"]
    assert [(d.host, d.port) for d in drafts] == [("127.0.0.1", 50061), ("127.0.0.1", 50062)]
    assert [d.metrics_port for d in drafts] == [9401, 9402]
    assert parsed.port == 50051 and parsed.metrics_port == 9400
    for worker, (draft, spec) in enumerate(zip(drafts, containers[1:])):
        # gRPC on loopback only; /metrics on the pod IP, under a port name of its own for the PodMonitor
        assert draft.metrics_host == "0.0.0.0"
        assert spec["ports"] == [{"name": "draft-metrics" + (f"-{worker}" if worker else ""),
                                  "containerPort": draft.metrics_port, "protocol": "TCP"}]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            command = spec[probe]["exec"]["command"]
            assert command[command.index("--port") + 1] == str(draft.port)
        # its own GPU
        assert spec["resources"]["requests"][GPU] == spec["resources"]["limits"][GPU] == 1
    assert sum(c["resources"]["limits"].get(GPU, 0) for c in containers) == 3
    assert not manifests.has_workload("draft")
    assert manifests.get("ConfigMap", "demo-saguaro-target")["data"]["SAGUARO_DRAFT_WORKERS"] == "2"
    assert "2 containers in every target pod" in manifests.notes


def test_colocated_workers_follow_custom_ports_and_metrics_off(render, k8s):
    manifests = render({"draft": {"workers": 3, "port": 6000, "metricsPort": 7000}, "metrics": {"enabled": False}})
    workload, _, parsed = target_of(manifests, k8s)
    assert parsed.draft_address == ["127.0.0.1:6000", "127.0.0.1:6001", "127.0.0.1:6002"]
    drafts = [parse(k8s.expanded_args(manifests, workload, c)) for c in k8s.pod_spec(workload)["containers"][1:]]
    assert [d.port for d in drafts] == [6000, 6001, 6002]
    assert [d.metrics_port for d in drafts] == [0, 0, 0] and parsed.metrics_port == 0


def test_remote_two_workers(render, k8s):
    values = {"pairing": {"mode": "remote"}, "target": {"replicas": 3}, "draft": {"workers": 2, "replicas": 3},
              "monitoring": {"podMonitor": {"enabled": True}}}
    manifests = render(values)
    validate(manifests, k8s)
    workload, target, parsed = target_of(manifests, k8s)
    assert workload["kind"] == "StatefulSet"
    assert address_items(target) == ["$(SAGUARO_DRAFT_ADDRESS)", "$(SAGUARO_DRAFT_ADDRESS_1)"]
    # pod 0 of the target (the helper's downward API gives pod-index 0) dials pod 0 of each set
    assert parsed.draft_address == [f"{DRAFT}-w0-0.{DRAFT}.{DNS}:50061", f"{DRAFT}-w1-0.{DRAFT}.{DNS}:50061"]
    assert parsed.draft_workers == 2
    env = {e["name"]: e.get("value") for e in target["env"]}
    assert env["SAGUARO_DRAFT_ADDRESS_1"] == f"{DRAFT}-w1-$(POD_INDEX).{DRAFT}.{DNS}:50061"

    sets = manifests.workloads_of("draft")
    assert [s["metadata"]["name"] for s in sets] == [f"{DRAFT}-w0", f"{DRAFT}-w1"]
    service = manifests.get("Service", DRAFT)
    for i, statefulset in enumerate(sets):
        spec = statefulset["spec"]
        assert spec["serviceName"] == DRAFT and spec["replicas"] == 3
        assert spec["selector"]["matchLabels"]["saguaro/draft-worker"] == str(i)
        assert k8s.pod_labels(statefulset)["saguaro/draft-worker"] == str(i)
        assert k8s.pod_labels(statefulset)["app.kubernetes.io/component"] == "draft"
        container = k8s.pod_spec(statefulset)["containers"][0]
        draft = parse(k8s.expanded_args(manifests, statefulset, container))
        assert draft.port == 50061 and draft.host == "0.0.0.0"
        assert container["resources"]["limits"][GPU] == 1
    # the selectors do not overlap; the shared Service, PDB, NetworkPolicy and PodMonitor cover both sets
    assert "saguaro/draft-worker" not in service["spec"]["selector"]
    assert manifests.get("PodDisruptionBudget", DRAFT)["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    policy = manifests.get("NetworkPolicy", DRAFT)
    assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    monitor = manifests.of_kind("PodMonitor")[0]
    assert {"target", "draft"} <= set(monitor["spec"]["selector"]["matchExpressions"][0]["values"])
    assert f"{DRAFT}-w0 .. {DRAFT}-w1" in manifests.notes


@pytest.mark.parametrize("keda", [False, True], ids=["hpa", "keda"])
def test_remote_workers_autoscale_per_set(render, k8s, keda):
    values = {"pairing": {"mode": "remote"}, "autoscaling": {"keda": {"enabled": keda}},
              "target": {"autoscaling": {"enabled": True}}, "draft": {"workers": 2, "autoscaling": {"enabled": True}}}
    manifests = render(values)
    validate(manifests, k8s)
    kind = "ScaledObject" if keda else "HorizontalPodAutoscaler"
    scalers = {s["metadata"]["name"]: s for s in manifests.of_kind(kind) if k8s.component_of(s) != "gateway"}
    assert set(scalers) == {"demo-saguaro-target", f"{DRAFT}-w0", f"{DRAFT}-w1"}
    for i in range(2):
        ref = scalers[f"{DRAFT}-w{i}"]["spec"]["scaleTargetRef"]
        assert ref == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": f"{DRAFT}-w{i}"}
        assert "replicas" not in manifests.get("StatefulSet", f"{DRAFT}-w{i}")["spec"]


def test_single_worker_keeps_the_original_names(render, k8s):
    """draft.workers=1 renders what the chart rendered before the value existed (plus --draft-workers 1)."""
    manifests = render({"pairing": {"mode": "remote"}})
    (statefulset,) = manifests.workloads_of("draft")
    assert statefulset["metadata"]["name"] == DRAFT
    assert "saguaro/draft-worker" not in statefulset["spec"]["selector"]["matchLabels"]
    _, target, parsed = target_of(manifests, k8s)
    assert address_items(target) == ["$(SAGUARO_DRAFT_ADDRESS)"]
    assert parsed.draft_address == [f"{DRAFT}-0.{DRAFT}.{DNS}:50061"] and parsed.draft_workers == 1


def test_mode_sd_runs_worker_threads(render, k8s):
    manifests = render({"target": {"mode": "sd"}, "draft": {"workers": 2}})
    workload, target, parsed = target_of(manifests, k8s)
    assert parsed.draft_workers == 2 and parsed.draft_address is None
    mounts = [m["mountPath"] for m in target["volumeMounts"]]
    assert any(parsed.draft_model.startswith(m + "/") for m in mounts), "the in-process draft's model is mounted"
    assert [c["name"] for c in k8s.pod_spec(workload)["containers"]] == ["target"]
    assert not manifests.has_workload("draft")
    assert "2 worker threads" in manifests.notes


def test_long_release_names_fit_with_many_workers(chart, k8s):
    name = "a-very-long-release-name-for-a-production-cluster-xyz"
    rendered = chart.render({"pairing": {"mode": "remote"}, "draft": {"workers": 12}}, name=name,
                            namespace=k8s.NAMESPACE)
    manifests = k8s.parse_rendered(rendered, {})
    sets = manifests.workloads_of("draft")
    assert len(sets) == 12
    for statefulset in sets:
        assert len(statefulset["metadata"]["name"]) <= 52, "StatefulSet names get a 10-char revision hash suffix"
        # the per-pod DNS label <statefulset>-<ordinal> stays a DNS label
        assert len(f"{statefulset['metadata']['name']}-999") <= 63


@pytest.mark.parametrize("workers", [0, -1, "2", 1.5], ids=["zero", "negative", "string", "fraction"])
def test_schema_rejects_bad_workers(chart, k8s, workers):
    values = {"draft": {"workers": workers}}
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm_python.HelmValuesError):
        chart.render(values, name=k8s.RELEASE, namespace=k8s.NAMESPACE)


@pytest.mark.parametrize("values,message", [
    # draft-1's metrics port would be the target's
    ({"draft": {"workers": 2, "metricsPort": 9399}}, "target.metricsPort and draft.metricsPort \\+ 1"),
    # draft-1's gRPC port would be the target's
    ({"draft": {"workers": 2, "port": 50050}}, "target.port and draft.port \\+ 1"),
    # worker ports overlap each other's metrics ports
    ({"draft": {"workers": 3, "port": 9401}}, "draft.port and draft.metricsPort"),
    ({"draft": {"workers": 2, "port": 65535}}, "above 65535"),
], ids=["metrics-collides-with-target", "grpc-collides-with-target", "grpc-collides-with-metrics", "port-overflow"])
def test_colocated_port_collisions_fail_the_render(chart, k8s, values, message):
    with pytest.raises(helm_python.HelmRenderError, match=message):
        chart.render(values, name=k8s.RELEASE, namespace=k8s.NAMESPACE)


def test_remote_workers_share_ports_without_collisions(render):
    """In remote pairing each worker is its own pod: the colocated port rules do not apply."""
    manifests = render({"pairing": {"mode": "remote"}, "draft": {"workers": 2, "port": 50050}})
    assert len(manifests.workloads_of("draft")) == 2
