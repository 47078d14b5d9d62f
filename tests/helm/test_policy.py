"""Policies over the rendered manifests, for every toggle combination, mode and example:
resources, probes and security contexts on every container; GPUs only where models run; ports,
selectors and references that line up; NetworkPolicies allowing exactly the intended flows; RBAC
limited to what the gateway uses; autoscalers per pool."""

from __future__ import annotations

import base64
import re

import pytest

GPU = "nvidia.com/gpu"
SAGUARO_COMPONENTS = {"gateway", "target", "draft"}


def containers_of(workload: dict, k8s, init: bool = True) -> list[dict]:
    spec = k8s.pod_spec(workload)
    return list(spec.get("containers", [])) + (list(spec.get("initContainers", [])) if init else [])


def selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels + matchExpressions In/NotIn/Exists/DoesNotExist) matches labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def matching_workloads(manifests, selector: dict, k8s) -> list[dict]:
    return [w for w in manifests.workloads() if selects(selector, k8s.pod_labels(w))]


# ------------------------------------------------------------------------------------------
# Containers
# ------------------------------------------------------------------------------------------

def test_every_container_has_requests_limits_and_probes(case, render, k8s):
    for workload in render(case).workloads():
        for container in containers_of(workload, k8s):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(kind, {}), f"{where}: no {kind}.{resource}"
        for container in containers_of(workload, k8s, init=False):
            where = f"{workload['metadata']['name']}/{container['name']}"
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, f"{where}: no {probe}"


def test_every_container_runs_non_root_and_locked_down(case, render, k8s):
    for workload in render(case).workloads():
        spec = k8s.pod_spec(workload)
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, workload["metadata"]["name"]
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for container in containers_of(workload, k8s):
            where = f"{workload['metadata']['name']}/{container['name']}"
            ctx = container.get("securityContext", {})
            assert ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert ctx.get("runAsUser", pod.get("runAsUser", 1)) != 0, where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("readOnlyRootFilesystem") is True, where
            assert ctx.get("privileged") in (None, False), where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not ctx.get("capabilities", {}).get("add"), where


def test_writable_paths_are_volumes(case, render, k8s):
    """With a read-only root filesystem, /tmp (HOME, caches) must be a volume in Saguaro containers."""
    for workload in render(case).workloads():
        for container in containers_of(workload, k8s, init=False):
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            if k8s.role_of(container) in SAGUARO_COMPONENTS:
                assert "/tmp" in mounts, container["name"]
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                assert env.get("HOME") == "/tmp"
            if container["name"] == "redis":
                assert "/data" in mounts


def test_images_are_pinned_tags(case, render, k8s):
    for workload in render(case).workloads():
        for container in containers_of(workload, k8s):
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


# ------------------------------------------------------------------------------------------
# GPUs
# ------------------------------------------------------------------------------------------

def test_gpus_only_on_model_containers(case, render, k8s):
    """target.gpus on the target, draft.gpus on every draft worker (container or pod), none elsewhere."""
    manifests = render(case)
    values = manifests.values
    gpu_enabled = values.get("gpu", {}).get("enabled", True)
    expected = {"target": values.get("target", {}).get("gpus", 1), "draft": values.get("draft", {}).get("gpus", 1)}
    seen = {"target": 0, "draft": 0}
    for workload in manifests.workloads():
        for container in containers_of(workload, k8s):
            requests = container["resources"].get("requests", {})
            limits = container["resources"].get("limits", {})
            role = k8s.role_of(container)
            if role in ("target", "draft") and gpu_enabled:
                assert requests.get(GPU) == limits.get(GPU) == expected[role], container["name"]
                seen[role] += 1
            else:
                assert GPU not in requests and GPU not in limits, f"GPU on {container['name']}"
    if gpu_enabled:
        assert seen["target"] == 1
        if values.get("target", {}).get("mode", "ssd") == "ssd":
            assert seen["draft"] == values.get("draft", {}).get("workers", 1), "a GPU request per draft worker"


def test_gpu_pods_schedule_by_resources(case, render, k8s, chart_values):
    """GPU pods ask for GPUs through resources only (test_gpus_only_on_model_containers); the GPU
    product node affinity and the RuntimeClass appear only when a values file asks for them."""
    manifests = render(case)
    values = manifests.values
    gpu = {**chart_values["gpu"], **values.get("gpu", {})}
    for workload in manifests.workloads_of("target") + manifests.workloads_of("draft"):
        component = k8s.component_of(workload)
        spec = k8s.pod_spec(workload)
        if not gpu["enabled"]:
            assert "runtimeClassName" not in spec
            assert "nodeAffinity" not in spec.get("affinity", {})
            continue
        assert spec.get("runtimeClassName") == (gpu["runtimeClassName"] or None)
        node_affinity = spec.get("affinity", {}).get("nodeAffinity")
        if gpu["productAffinity"]:
            terms = node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            expressions = [e for t in terms for e in t["matchExpressions"]]
            assert {"key": gpu["productLabel"], "operator": "In", "values": gpu["products"]} in expressions
        elif not values.get(component, {}).get("affinity"):
            assert node_affinity is None, "no GPU product affinity unless gpu.productAffinity"
        assert any(t.get("key") == GPU and t.get("effect") == "NoSchedule" for t in spec["tolerations"])
        assert spec["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"][
            "app.kubernetes.io/component"] == component
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    for component in ("gateway", "redis"):
        if manifests.has_workload(component):
            spec = k8s.pod_spec(manifests.workload(component))
            assert "runtimeClassName" not in spec and "tolerations" not in spec


def test_pairing_modes(case, render, k8s):
    manifests = render(case)
    values = manifests.values
    mode = values.get("target", {}).get("mode", "ssd")
    pairing = values.get("pairing", {}).get("mode", "colocated")
    workers = values.get("draft", {}).get("workers", 1)
    target = manifests.workload("target")
    names = [c["name"] for c in k8s.pod_spec(target)["containers"]]
    http_api = _get(values, ("inferencePool", "enabled"), False) or _get(values, ("target", "httpApi", "enabled"), False)
    assert (names[-1] == "http-api") == http_api, "the pod's OpenAI HTTP API (target.httpApi) comes last"
    names = [name for name in names if name != "http-api"]
    if mode != "ssd":
        assert names == ["target"] and not manifests.has_workload("draft")
    elif pairing == "colocated":
        assert target["kind"] == "Deployment" and names == ["target", "draft"] + [f"draft-{i}" for i in range(1, workers)]
        assert not manifests.has_workload("draft")
    else:
        drafts = manifests.workloads_of("draft")
        assert len(drafts) == workers, "one draft StatefulSet per draft worker"
        assert target["kind"] == "StatefulSet" and names == ["target"]
        assert all(d["kind"] == "StatefulSet" and [c["name"] for c in k8s.pod_spec(d)["containers"]] == ["draft"]
                   for d in drafts)
        anti = values.get("pairing", {}).get("remote", {}).get("antiAffinity", "required")
        for workload, other in [(target, "draft")] + [(draft, "target") for draft in drafts]:
            affinity = k8s.pod_spec(workload).get("affinity", {}).get("podAntiAffinity", {})
            if anti == "required":
                terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
            elif anti == "preferred":
                terms = [t["podAffinityTerm"] for t in affinity["preferredDuringSchedulingIgnoredDuringExecution"]]
            else:
                terms = []
            for term in terms:
                assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == other
                assert term["topologyKey"] == "kubernetes.io/hostname"


# ------------------------------------------------------------------------------------------
# Ports, selectors and references
# ------------------------------------------------------------------------------------------

def container_ports(workloads: list[dict], k8s) -> dict[str, int]:
    ports = {}
    for workload in workloads:
        for container in k8s.pod_spec(workload)["containers"]:
            for port in container.get("ports", []):
                ports[port["name"]] = port["containerPort"]
    return ports


def test_services_select_one_workload_and_named_ports_exist(case, render, k8s):
    """Each Service selects one workload, or (remote draft workers) exactly the StatefulSets it governs."""
    manifests = render(case)
    for service in manifests.of_kind("Service"):
        selected = matching_workloads(manifests, {"matchLabels": service["spec"]["selector"]}, k8s)
        name = service["metadata"]["name"]
        assert selected, f"Service {name} selects nothing"
        if len(selected) > 1:
            governed = [w for w in manifests.of_kind("StatefulSet") if w["spec"]["serviceName"] == name]
            assert selected == governed, f"Service {name} selects {len(selected)} workloads it does not govern"
        assert {k8s.component_of(w) for w in selected} == {k8s.component_of(service)}
        ports = container_ports(selected, k8s)
        for port in service["spec"]["ports"]:
            target_port = port["targetPort"]
            assert target_port in ports, f"{service['metadata']['name']}: no container port {target_port}"
            assert ports[target_port] == port["port"], f"{service['metadata']['name']}: {port}"


def test_workload_selectors_and_service_names(case, render, k8s):
    manifests = render(case)
    for workload in manifests.workloads():
        selector = workload["spec"]["selector"]
        assert selects(selector, k8s.pod_labels(workload))
        others = [w for w in manifests.workloads() if w is not workload]
        assert not any(selects(selector, k8s.pod_labels(o)) for o in others), "overlapping selectors"
        if workload["kind"] == "StatefulSet":
            service = manifests.get("Service", workload["spec"]["serviceName"])
            assert service["spec"]["clusterIP"] == "None"


def test_probes_use_declared_ports(case, render, k8s):
    for workload in render(case).workloads():
        for container in k8s.pod_spec(workload)["containers"]:
            names = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                handler = container[probe]
                for kind in ("tcpSocket", "httpGet", "grpc"):
                    if kind in handler:
                        port = handler[kind]["port"]
                        assert port in names or port in {p["containerPort"] for p in container["ports"]}


def test_pdbs_and_autoscalers_point_at_workloads(case, render, k8s):
    """One PDB per pool (the draft pool's spans every draft worker StatefulSet), at most one
    autoscaler per workload."""
    manifests = render(case)
    for pdb in manifests.of_kind("PodDisruptionBudget"):
        selected = matching_workloads(manifests, pdb["spec"]["selector"], k8s)
        assert selected == manifests.workloads_of(k8s.component_of(pdb)), pdb["metadata"]["name"]
    scalers = manifests.of_kind("HorizontalPodAutoscaler") + manifests.of_kind("ScaledObject")
    for scaler in scalers:
        ref = scaler["spec"]["scaleTargetRef"]
        workload = manifests.get(ref["kind"], ref["name"])
        assert k8s.component_of(workload) == k8s.component_of(scaler)
        assert "replicas" not in workload["spec"], f"{ref['name']} is autoscaled: helm must not set replicas"
    for workload in manifests.workloads():
        refs = [s for s in scalers if s["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]]
        assert len(refs) <= 1, workload["metadata"]["name"]


def test_target_and_draft_scale_separately(case, render, k8s):
    manifests = render(case)
    values = manifests.values
    if not values.get("target", {}).get("autoscaling", {}).get("enabled"):
        return
    keda = values.get("autoscaling", {}).get("keda", {}).get("enabled", False)
    kind = "ScaledObject" if keda else "HorizontalPodAutoscaler"
    by_component = {k8s.component_of(s): s for s in manifests.of_kind(kind)}
    assert by_component["target"]["spec"]["scaleTargetRef"]["name"] == manifests.name("target")
    remote = manifests.has_workload("draft")
    assert ("draft" in by_component) == (remote and values.get("draft", {}).get("autoscaling", {}).get("enabled", False))
    draft_scalers = [s for s in manifests.of_kind(kind) if k8s.component_of(s) == "draft"]
    if draft_scalers:  # one per draft worker StatefulSet, each following the target pods
        assert sorted(s["spec"]["scaleTargetRef"]["name"] for s in draft_scalers) == sorted(
            w["metadata"]["name"] for w in manifests.workloads_of("draft"))
    target_behavior = (by_component["target"]["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
                       if keda else by_component["target"]["spec"]["behavior"])
    # damped for minutes-long model loads: scale-up waits and adds one pod per period; scale-down is slow
    assert target_behavior["scaleUp"]["stabilizationWindowSeconds"] >= 60
    assert target_behavior["scaleDown"]["stabilizationWindowSeconds"] >= 600
    if keda:
        triggers = {t["name"]: t for t in by_component["target"]["spec"]["triggers"]}
        assert {"verify-queue", "kv-cache", "spec-goodput"} <= set(triggers)
        goodput = triggers["spec-goodput"]["metadata"]["query"]
        assert "accepted_tokens" in goodput and "num_drafts" in goodput, "goodput is acceptance-adjusted"
        for trigger in triggers.values():
            assert f'namespace="{k8s.NAMESPACE}"' in trigger["metadata"]["query"]
            assert "{{" not in trigger["metadata"]["query"]
        for draft_scaler in draft_scalers:
            draft_trigger = draft_scaler["spec"]["triggers"][0]
            assert draft_trigger["type"] == "kubernetes-workload"
            target_labels = k8s.pod_labels(manifests.workload("target"))
            selector = dict(kv.split("=") for kv in draft_trigger["metadata"]["podSelector"].split(","))
            assert selects({"matchLabels": selector}, target_labels)
            assert not any(selects({"matchLabels": selector}, k8s.pod_labels(d)) for d in manifests.workloads_of("draft"))


def test_monitors_scrape_declared_ports(case, render, k8s):
    manifests = render(case)
    for monitor in manifests.of_kind("ServiceMonitor"):
        services = [s for s in manifests.of_kind("Service") if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
        assert len(services) == 1
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in services[0]["spec"]["ports"]}
    for monitor in manifests.of_kind("PodMonitor"):
        pods = matching_workloads(manifests, monitor["spec"]["selector"], k8s)
        assert {k8s.component_of(w) for w in pods} == ({"target", "draft"} & {k8s.component_of(w) for w in manifests.workloads()})
        ports = container_ports(pods, k8s)
        assert "metrics" in ports
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports


def test_dashboards_and_otel_wiring(case, render, k8s):
    manifests = render(case)
    otel = manifests.values.get("otel", {}).get("enabled", False)
    for workload in manifests.workloads():
        for container in k8s.pod_spec(workload)["containers"]:
            if k8s.role_of(container) not in SAGUARO_COMPONENTS:
                continue
            env = k8s.container_environment(manifests, workload, container)
            if otel:
                assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http")
                assert env["OTEL_SERVICE_NAME"] == f"saguaro-{k8s.role_of(container)}"
                assert f"k8s.pod.name={workload['metadata']['name']}-0" in env["OTEL_RESOURCE_ATTRIBUTES"]
            else:
                assert env["OTEL_SDK_DISABLED"] == "true"
                assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env


# ------------------------------------------------------------------------------------------
# NetworkPolicies: exactly the intended flows
# ------------------------------------------------------------------------------------------

ANY = "any"


def flows(manifests, k8s) -> set[tuple[str, str, int]]:
    """(source, destination component, port) allowed by the rendered policies. Sources are
    components, ANY (no `from`) or 'metrics-scrapers' (networkPolicy.metricsFrom peers)."""
    metrics_from = manifests.values.get("networkPolicy", {}).get("metricsFrom")
    if metrics_from is None:
        metrics_from = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    allowed = set()
    for policy in manifests.of_kind("NetworkPolicy"):
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        destinations = {k8s.component_of(w) for w in matching_workloads(manifests, spec["podSelector"], k8s)}
        assert len(destinations) == 1
        destination = destinations.pop()
        for rule in spec.get("ingress", []):
            ports = [p["port"] for p in rule["ports"]]
            assert all(isinstance(p, int) for p in ports)
            peers = rule.get("from")
            if peers is None:
                sources = {ANY}
            elif peers == metrics_from:
                sources = {"metrics-scrapers"}
            else:
                sources = set()
                for peer in peers:
                    assert set(peer) == {"podSelector"}, f"unexpected peer {peer}"
                    matched = {k8s.component_of(w) for w in matching_workloads(manifests, peer["podSelector"], k8s)}
                    assert len(matched) == 1
                    sources |= matched
            allowed |= {(s, destination, p) for s in sources for p in ports}
    return allowed


def test_network_policies_allow_exactly_the_intended_flows(case, render, k8s):
    manifests = render(case)
    values = manifests.values
    if not values.get("networkPolicy", {}).get("enabled", True):
        assert not manifests.of_kind("NetworkPolicy")
        return
    get = lambda *path, default=None: _get(values, path, default)  # noqa: E731
    gateway_ports = (get("gateway", "grpcPort", default=50050), get("gateway", "httpPort", default=8000))
    target_port = get("target", "port", default=50051)
    draft_port = get("draft", "port", default=50061)
    metrics = get("metrics", "enabled", default=True)
    components = {k8s.component_of(w) for w in manifests.workloads()}

    expected = {(ANY, "gateway", p) for p in gateway_ports}
    expected.add(("gateway", "target", target_port))
    if metrics:
        expected.add(("metrics-scrapers", "target", get("target", "metricsPort", default=9400)))
        colocated = get("target", "mode", default="ssd") == "ssd" and get("pairing", "mode", default="colocated") == "colocated"
        if colocated:  # each colocated draft worker's metrics port, on the target pod (its gRPC stays on loopback)
            first = get("draft", "metricsPort", default=9401)
            expected |= {("metrics-scrapers", "target", first + i) for i in range(max(1, get("draft", "workers", default=1)))}
    if "draft" in components:
        expected.add(("target", "draft", draft_port))
        if metrics:
            expected.add(("metrics-scrapers", "draft", get("draft", "metricsPort", default=9401)))
    if "redis" in components:
        expected |= {("gateway", "redis", 6379), ("target", "redis", 6379)}
    if get("inferencePool", "enabled", default=False):  # inferencePool.proxyFrom [] = any source
        expected |= {(ANY, "target", get("target", "httpApi", "port", default=8080)),
                     ("epp", "target", get("target", "metricsPort", default=9400)),
                     (ANY, "epp", get("inferencePool", "epp", "extProcPort", default=9002)),
                     ("metrics-scrapers", "epp", get("inferencePool", "epp", "metricsPort", default=9090))}
    assert flows(manifests, k8s) == expected
    # every pod is covered by a policy (so everything else is denied)
    covered = set()
    for policy in manifests.of_kind("NetworkPolicy"):
        covered |= {k8s.component_of(w) for w in matching_workloads(manifests, policy["spec"]["podSelector"], k8s)}
    assert covered == components


def _get(values: dict, path: tuple, default):
    node = values
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def test_network_policy_ports_are_the_containers(render, k8s):
    """NetworkPolicies use numbers: each must be a port the selected pods declare."""
    manifests = render({"pairing": {"mode": "remote"}})
    for policy in manifests.of_kind("NetworkPolicy"):
        pods = matching_workloads(manifests, policy["spec"]["podSelector"], k8s)
        declared = set(container_ports(pods, k8s).values())
        for rule in policy["spec"]["ingress"]:
            assert {p["port"] for p in rule["ports"]} <= declared


# ------------------------------------------------------------------------------------------
# RBAC
# ------------------------------------------------------------------------------------------

def test_rbac_grants_only_the_endpointslice_watch(case, render, k8s):
    manifests = render(case)
    values = manifests.values
    assert not manifests.of_kind("ClusterRole") and not manifests.of_kind("ClusterRoleBinding")
    gateway = k8s.pod_spec(manifests.workload("gateway"))
    kubernetes_discovery = _get(values, ("gateway", "discovery"), "kubernetes") == "kubernetes"
    # the endpoint picker's own read-only Role: test_inference_pool.py
    roles = [role for role in manifests.of_kind("Role") if k8s.component_of(role) != "epp"]
    if not kubernetes_discovery:
        assert not roles and gateway["automountServiceAccountToken"] is False
        return
    assert len(roles) == 1
    assert roles[0]["rules"] == [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                                  "verbs": ["get", "list", "watch"]}]
    binding = manifests.get("RoleBinding", roles[0]["metadata"]["name"])
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": roles[0]["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": gateway["serviceAccountName"],
                                    "namespace": k8s.NAMESPACE}]
    assert gateway["automountServiceAccountToken"] is True
    for workload in manifests.workloads():
        if k8s.component_of(workload) not in ("gateway", "epp"):  # the picker watches its pool and pods
            spec = k8s.pod_spec(workload)
            assert spec["automountServiceAccountToken"] is False
            assert spec.get("serviceAccountName", "default") == "default"


def test_secrets_never_appear_in_plain_env(case, render, k8s):
    for workload in render(case).workloads():
        for container in containers_of(workload, k8s):
            for var in container.get("env", []):
                if "PASSWORD" in var["name"] or "AUTH" in var["name"] or var["name"].endswith("HEADERS"):
                    assert "valueFrom" in var and "secretKeyRef" in var["valueFrom"], var
                if "value" in var:  # credentials only by $(VAR) reference to a Secret-backed variable
                    literal = re.sub(r"\$\([A-Z_]+\)", "", var["value"])
                    assert "password" not in literal.lower() and not re.search(r"://[^/@]*:[^/@]+@", literal), var


@pytest.mark.parametrize("redis_mode", ["bundled", "external", "none"])
def test_redis_wiring(render, k8s, redis_mode):
    values = {"redis": {"mode": redis_mode, "external": {"url": "rediss://cache.example.com:6380/2"},
                        "bundled": {"auth": {"enabled": True, "password": "from-values"}}}}
    manifests = render(values)
    gateway = k8s.pod_spec(manifests.workload("gateway"))["containers"][0]
    args = k8s.expanded_args(manifests, manifests.workload("gateway"), gateway)
    if redis_mode == "none":
        assert "--redis-url" not in args and not manifests.has_workload("redis")
        return
    url = args[args.index("--redis-url") + 1]
    if redis_mode == "bundled":
        assert url == f"redis://:{k8s.FAKE_SECRET}@demo-saguaro-redis.{k8s.NAMESPACE}.svc.cluster.local:6379/0"
        secret = manifests.get("Secret", "demo-saguaro-redis")
        assert base64.b64decode(secret["data"]["redis-password"]).decode() == "from-values"
        redis = k8s.pod_spec(manifests.workload("redis"))["containers"][0]
        assert "--requirepass" in redis["args"]
        assert redis["resources"]["requests"] and not any(GPU in r for r in redis["resources"].values())
        volumes = {v["name"]: v for v in k8s.pod_spec(manifests.workload("redis"))["volumes"]}
        assert "emptyDir" in volumes["data"], "persistence is off by default"
    else:
        assert url == "rediss://cache.example.com:6380/2" and not manifests.has_workload("redis")
