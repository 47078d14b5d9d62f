"""The Gateway API Inference Extension path (inferencePool): the InferencePool selects the target
pods on their HTTP port, its endpoint picker (EPP) is wired to the pool and scrapes the targets'
metrics port, and a target pod's rendered containers, run as processes, serve the OpenAI API on
that HTTP port and export every series the rendered picker config names.

Schemas: test_render.py (kubernetes-validate) and test_crds.py (the vendored InferencePool CRD)
check every combination; here, the wiring between the objects.
"""

from __future__ import annotations

import importlib.util
import urllib.request
from pathlib import Path

import helm_python
import pytest
import yaml
from tests_support import parse_cli

POOL = {"inferencePool": {"enabled": True}}


def epp_args(manifests) -> dict[str, str]:
    """The picker's `--flag value` and `--flag=value` arguments as a dict."""
    container = manifests.get("Deployment", manifests.name("epp"))["spec"]["template"]["spec"]["containers"][0]
    args, out = container["args"], {}
    i = 0
    while i < len(args):
        flag = args[i]
        assert flag.startswith("--"), args
        if "=" in flag:
            key, value = flag[2:].split("=", 1)
            i += 1
        else:
            key, value = flag[2:], args[i + 1]
            i += 2
        out[key] = value
    return out


def epp_config(manifests) -> dict:
    """The EndpointPickerConfig the picker loads (--config-file, from its mounted ConfigMap)."""
    deployment = manifests.get("Deployment", manifests.name("epp"))
    spec = deployment["spec"]["template"]["spec"]
    path = Path(epp_args(manifests)["config-file"])
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if Path(m["mountPath"]) == path.parent)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config_map = manifests.get("ConfigMap", volume["configMap"]["name"])
    return yaml.safe_load(config_map["data"][path.name])


def scraped_series(config: dict) -> tuple[str, list[str]]:
    """(metrics path, metric names) the picker's metrics data source and extractor read for the
    default engine; empty specs (LoRA) are switched off."""
    plugins = {p["type"]: p.get("parameters", {}) for p in config["plugins"]}
    extractor = plugins["core-metrics-extractor"]
    engine = next(e for e in extractor["engineConfigs"] if e["name"] == extractor["defaultEngine"])
    names = [spec.split("{", 1)[0] for key, spec in engine.items() if key.endswith("Spec") and spec]
    return plugins["metrics-data-source"]["path"], names


def container(manifests, k8s, name: str) -> dict:
    return next(c for c in k8s.pod_spec(manifests.workload("target"))["containers"] if c["name"] == name)


def port_named(spec: dict, name: str) -> int:
    return next(p["containerPort"] for p in spec["ports"] if p["name"] == name)


# ------------------------------------------------------------------------------------------
# Wiring of the rendered objects
# ------------------------------------------------------------------------------------------

def test_the_pool_selects_the_target_pods_on_their_http_port(render, k8s):
    manifests = render(POOL)
    pool = manifests.get("InferencePool", manifests.name("pool"))
    target = manifests.workload("target")
    labels = k8s.pod_labels(target)
    selector = pool["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert not any(selector.items() <= k8s.pod_labels(w).items() for w in manifests.workloads() if w is not target)
    http_api = container(manifests, k8s, "http-api")
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [port_named(http_api, "http")]
    assert http_api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # the endpoint picker: its Service, on the ext-proc port of its pod
    ref = pool["spec"]["endpointPickerRef"]
    assert (ref["group"], ref["kind"], ref["failureMode"]) == ("", "Service", "FailClose")
    service = manifests.get("Service", ref["name"])
    port = next(p for p in service["spec"]["ports"] if p["port"] == ref["port"]["number"])
    epp = manifests.get("Deployment", ref["name"])
    assert port_named(epp["spec"]["template"]["spec"]["containers"][0], port["targetPort"]) == port["port"]
    args = epp_args(manifests)
    assert args["grpc-port"] == str(port["port"])
    assert (args["pool-name"], args["pool-namespace"], args["pool-group"]) == (
        pool["metadata"]["name"], k8s.NAMESPACE, "inference.networking.k8s.io")
    # it scrapes the port the target serves its metrics on (not the pool's HTTP port)
    assert args["model-server-metrics-port"] == str(port_named(container(manifests, k8s, "target"), "metrics"))


def test_the_route_sends_to_the_pool(render, k8s):
    manifests = render({"inferencePool": {"enabled": True, "httpRoute": {
        "parentRefs": [{"name": "igw", "namespace": "gateways"}], "hostnames": ["llm.example.com"]}}})
    route = manifests.get("HTTPRoute", manifests.name("pool"))
    assert route["spec"]["parentRefs"] == [{"name": "igw", "namespace": "gateways"}]
    assert route["spec"]["hostnames"] == ["llm.example.com"]
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": manifests.name("pool")}]
    # our gateway (and its own route, when httpRoute.enabled) keeps serving beside the pool
    assert manifests.has_workload("gateway")
    assert f"InferencePool {manifests.name('pool')}" in manifests.notes and "attached to: igw" in manifests.notes
    no_route = render({"inferencePool": {"enabled": True, "httpRoute": {"enabled": False}}})
    assert not no_route.of_kind("HTTPRoute") and no_route.of_kind("InferencePool")


def test_off_by_default_and_http_api_alone(render, k8s):
    defaults = render({})
    assert not defaults.of_kind("InferencePool") and not defaults.has_workload("epp")
    assert "InferencePool" not in defaults.notes
    assert "http-api" not in [c["name"] for c in k8s.pod_spec(defaults.workload("target"))["containers"]]
    alone = render({"target": {"httpApi": {"enabled": True}}})
    assert not alone.of_kind("InferencePool")
    assert container(alone, k8s, "http-api")["ports"][0]["name"] == "http"


def test_the_picker_has_read_only_namespaced_rbac(render, k8s):
    manifests = render(POOL)
    name = manifests.name("epp")
    epp = manifests.get("Deployment", name)["spec"]["template"]["spec"]
    assert epp["serviceAccountName"] == manifests.get("ServiceAccount", name)["metadata"]["name"]
    role = manifests.get("Role", name)
    assert all(set(rule["verbs"]) == {"get", "list", "watch"} for rule in role["rules"])
    resources = {(group, resource) for rule in role["rules"] for group in rule["apiGroups"]
                 for resource in rule["resources"]}
    assert {("", "pods"), ("inference.networking.k8s.io", "inferencepools")} <= resources
    binding = manifests.get("RoleBinding", name)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": k8s.NAMESPACE}]
    assert not manifests.of_kind("ClusterRole")


@pytest.mark.parametrize("values", [
    {"pairing": {"mode": "colocated"}},
    {"pairing": {"mode": "remote"}},
    {"internalTls": {"enabled": True, "existingSecret": "saguaro-internal-tls"}, "gateway": {"modelName": "llama"}},
], ids=["colocated", "remote", "internal-tls-model-name"])
def test_the_http_api_is_the_gateway_pinned_to_its_target(render, k8s, values):
    """The http-api container runs `saguaro gateway` (the real parser accepts its arguments) on
    the pod's loopback target, with the target's TLS and the gateway's served model name."""
    manifests = render(k8s.deep_merge(values, POOL))
    workload = manifests.workload("target")
    http_api = container(manifests, k8s, "http-api")
    parsed = parse_cli(k8s.expanded_args(manifests, workload, http_api))
    target = parse_cli(k8s.expanded_args(manifests, workload, container(manifests, k8s, "target")))
    assert parsed.command == "gateway" and parsed.discovery == "static" and not parsed.redis_url
    assert parsed.targets == [f"127.0.0.1:{target.port}"]
    assert parsed.http_port == port_named(http_api, "http") and parsed.port == 0
    assert parsed.policy == "round-robin" and parsed.max_migrations == 0
    assert (parsed.served_model_name or [None])[0] == manifests.values.get("gateway", {}).get("modelName")
    tls = "internalTls" in values
    assert bool(parsed.target_tls_ca) == tls == bool(target.tls_cert)
    if tls:
        mounts = {m["mountPath"] for m in http_api["volumeMounts"]}
        assert Path(parsed.target_tls_ca).parent.as_posix() in mounts
    # one network namespace: the declared ports of the pod all differ
    declared = [p["containerPort"] for c in k8s.pod_spec(workload)["containers"] for p in c.get("ports", [])]
    assert len(declared) == len(set(declared)), declared


@pytest.mark.parametrize("values, message", [
    ({"inferencePool": {"enabled": True}, "metrics": {"enabled": False}},
     "inferencePool.enabled needs metrics.enabled"),
    ({"inferencePool": {"enabled": True}, "target": {"httpApi": {"port": 50051}}},
     "target.httpApi.port 50051 is already taken in the target pod by target.port"),
    ({"target": {"httpApi": {"enabled": True, "port": 50062}}, "draft": {"workers": 2}},
     "target.httpApi.port 50062 is already taken in the target pod by draft.port"),
], ids=["no-metrics", "target-port", "colocated-draft-worker-port"])
def test_inconsistent_values_are_refused(chart, k8s, values, message):
    with pytest.raises(helm_python.HelmRenderError, match=message):
        chart.render(values, name=k8s.RELEASE, namespace=k8s.NAMESPACE)


# ------------------------------------------------------------------------------------------
# The rendered target pod, run as processes
# ------------------------------------------------------------------------------------------

def probe_test_helpers():
    """test_probe.py's helpers (run a rendered container as a process, wait); loaded by path,
    since tests import in importlib mode."""
    spec = importlib.util.spec_from_file_location("saguaro_helm_probe_helpers_pool",
                                                  Path(__file__).with_name("test_probe.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rendered_target_pod_serves_openai_and_the_pickers_metrics(render, k8s, tmp_path):
    """Every container of the rendered target pod (target, colocated draft, http-api) runs from
    its rendered command; the official OpenAI client completes on the pod's HTTP port (the port
    the InferencePool targets), and the metrics port the picker is told to scrape carries every
    series its rendered config names."""
    import openai

    from saguaro.net import free_port
    from saguaro.tiny_models import build_tiny_model

    helpers = probe_test_helpers()
    model = str(build_tiny_model(tmp_path / "model" / "tiny", family="llama"))
    values = helpers.cpu_values(model, redis={"mode": "none"}, inferencePool={"enabled": True},
                                target={"httpApi": {"port": free_port()}})
    manifests = render(values)
    workload = manifests.workload("target")
    pool = manifests.get("InferencePool", manifests.name("pool"))
    http_port = pool["spec"]["targetPorts"][0]["number"]
    metrics_port = int(epp_args(manifests)["model-server-metrics-port"])
    path, names = scraped_series(epp_config(manifests))
    assert {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"} <= set(names)

    specs = k8s.pod_spec(workload)["containers"]
    assert [c["name"] for c in specs] == ["target", "draft", "http-api"]
    processes = [helpers.Service(manifests, workload, spec, k8s, tmp_path / f"{spec['name']}.log") for spec in specs]
    try:
        for process in processes:
            process.wait_listening()
        http_api = specs[-1]
        assert helpers.wait_until(lambda: helpers.http_probe(http_api, "readinessProbe") == 200, timeout=120), \
            (tmp_path / "http-api.log").read_text()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused", max_retries=0)
        served = [m.id for m in client.models.list().data]
        assert served == ["tiny"]
        completion = client.completions.create(model="tiny", prompt="def add(a, b):", max_tokens=8,
                                                temperature=0, extra_body={"ignore_eos": True})
        assert completion.usage.completion_tokens == 8 and completion.choices[0].finish_reason == "length"
        streamed = client.completions.create(model="tiny", prompt="def add(a, b):", max_tokens=8, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True})
        assert "".join(c.choices[0].text for c in streamed if c.choices) == completion.choices[0].text
        # rendered with the tiny tokenizer's own chat template (saguaro.tiny_models.CHAT_TEMPLATE)
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "def add(a, b):"}],
                                              max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
        assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 4

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{path}", timeout=10) as response:
            exposition = response.read().decode()
        exported = {line.split("{", 1)[0].split(" ", 1)[0] for line in exposition.splitlines()
                    if line and not line.startswith("#")}
        missing = [name for name in names if name not in exported]
        assert not missing, f"the picker reads {missing}, which the target does not export"
    finally:
        for process in reversed(processes):
            process.stop()
