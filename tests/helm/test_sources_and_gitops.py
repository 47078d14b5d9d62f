"""Scheduling defaults, model sources and GitOps features of the chart (docs/deploy.md,
"Scheduling", "Model sources", "GitOps"): what a plain install asks of a cluster, how each model
source becomes volumes, mounts and arguments, deterministic renders, and the escape hatches."""

from __future__ import annotations

import base64

import helm_python
import kubernetes_validate
import pytest

GPU = "nvidia.com/gpu"
DIGEST = "sha256:" + "ab" * 32


def validate(manifests, k8s) -> None:
    for obj in manifests.objects:
        if obj["apiVersion"].startswith(("keda.sh", "monitoring.coreos.com", "gateway.networking.k8s.io")):
            continue
        for version in k8s.KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def container(workload: dict, name: str, k8s, init: bool = False) -> dict:
    spec = k8s.pod_spec(workload)
    found = [c for c in spec.get("initContainers" if init else "containers", []) if c["name"] == name]
    assert len(found) == 1, f"no container {name}"
    return found[0]


def test_default_install_schedules_on_any_gpu_cluster(render, k8s):
    """No ReadWriteMany claim, no GPU product affinity, no RuntimeClass: GPUs only in resources."""
    manifests = render({})
    validate(manifests, k8s)
    for claim in manifests.of_kind("PersistentVolumeClaim"):
        assert "ReadWriteMany" not in claim["spec"]["accessModes"]
    for workload in manifests.workloads():
        spec = k8s.pod_spec(workload)
        assert "runtimeClassName" not in spec
        assert "nodeAffinity" not in spec.get("affinity", {})
        assert "nodeSelector" not in spec
        for volume in spec.get("volumes", []):
            assert "persistentVolumeClaim" not in volume, "models are stored per pod by default"
    target = manifests.workload("target")
    gpus = [c for c in k8s.pod_spec(target)["containers"] if GPU in c["resources"]["limits"]]
    assert [c["name"] for c in gpus] == ["target", "draft"]
    volumes = {v["name"]: v for v in k8s.pod_spec(target)["volumes"]}
    assert volumes["model-target"]["emptyDir"]["sizeLimit"] == "40Gi"
    assert volumes["model-draft"]["emptyDir"]["sizeLimit"] == "8Gi"


def test_gpu_product_affinity_is_opt_in_and_knows_h200_b200(render, k8s, chart_values):
    assert {"NVIDIA-H100-80GB-HBM3", "NVIDIA-H200", "NVIDIA-B200"} <= set(chart_values["gpu"]["products"])
    values = {"gpu": {"productAffinity": True, "productLabel": "cloud.google.com/gke-accelerator",
                      "products": ["nvidia-h200-141gb"], "runtimeClassName": "nvidia"}}
    manifests = render(values)
    validate(manifests, k8s)
    spec = k8s.pod_spec(manifests.workload("target"))
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "cloud.google.com/gke-accelerator", "operator": "In",
                                            "values": ["nvidia-h200-141gb"]}]}]
    assert spec["runtimeClassName"] == "nvidia"


def test_hf_sources_render_downloads_per_pod(render, k8s):
    values = {"pairing": {"mode": "remote"},
              "target": {"model": "hf://meta-llama/Llama-3.1-8B-Instruct@0e9e39f249a16976918f6564b8830bc894c89659"},
              "draft": {"model": "hf://meta-llama/Llama-3.2-1B-Instruct@v1.0"},
              "models": {"huggingFace": {"token": {"secretName": "hf", "key": "token"}}}}
    manifests = render(values)
    validate(manifests, k8s)
    target, draft = manifests.workload("target"), manifests.workload("draft")
    fetch = container(target, "fetch-target-model", k8s, init=True)
    assert fetch["args"][1] == values["target"]["model"]
    assert [c["name"] for c in k8s.pod_spec(target)["initContainers"]] == ["fetch-target-model"]
    assert [c["name"] for c in k8s.pod_spec(draft)["initContainers"]] == ["fetch-draft-model"]
    token = next(e for e in fetch["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert not any(e["name"] == "HF_ENDPOINT" for e in fetch["env"])
    draft_args = k8s.expanded_args(manifests, draft, container(draft, "draft", k8s))
    assert draft_args[draft_args.index("--model") + 1] == "/var/lib/saguaro/models/draft/Llama-3.2-1B-Instruct"


def test_pvc_and_baked_in_sources(render, k8s):
    values = {"target": {"model": "pvc://llm-models/meta/Llama-3.1-8B-Instruct"}, "draft": {"model": "/opt/models/draft-1b"}}
    manifests = render(values)
    validate(manifests, k8s)
    target = manifests.workload("target")
    spec = k8s.pod_spec(target)
    assert "initContainers" not in spec, "nothing to download"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model-target"]["persistentVolumeClaim"] == {"claimName": "llm-models", "readOnly": True}
    assert "model-draft" not in volumes and "models" not in volumes, "a baked-in model needs no volume"
    main = container(target, "target", k8s)
    mount = next(m for m in main["volumeMounts"] if m["name"] == "model-target")
    assert mount == {"name": "model-target", "mountPath": "/var/lib/saguaro/models/target/Llama-3.1-8B-Instruct",
                     "subPath": "meta/Llama-3.1-8B-Instruct", "readOnly": True}
    args = k8s.expanded_args(manifests, target, main)
    assert args[args.index("--model") + 1] == mount["mountPath"]
    assert args[args.index("--draft-model") + 1] == "/opt/models/draft-1b"
    draft_args = k8s.expanded_args(manifests, target, container(target, "draft", k8s))
    assert draft_args[draft_args.index("--model") + 1] == "/opt/models/draft-1b"
    assert not [m for m in container(target, "draft", k8s)["volumeMounts"] if m["name"].startswith("model")]


@pytest.mark.parametrize("uri,message", [
    ("hf://Qwen2.5-7B", "the repository must be ORG/NAME"),
    ("hf://Qwen/Qwen2.5-7B@", "an empty revision"),
    ("hf://Qwen/Qwen2.5-7B@../x", "is not a branch, tag or commit name"),
    ("pvc://Models_Claim/x", "is not a PersistentVolumeClaim name"),
    ("pvc://models/../etc", "may not contain '..'"),
    ("s3://bucket/model", "unknown scheme"),
    ("models/target", "a path must be absolute"),
])
def test_bad_model_sources_fail_the_render(chart, k8s, uri, message):
    """The template checks the form (the schema only asks for a string, so every user gets this
    message, not a regular expression)."""
    with pytest.raises(helm_python.HelmRenderError) as raised:
        chart.render({"draft": {"model": uri}}, name=k8s.RELEASE, namespace=k8s.NAMESPACE)
    assert message in str(raised.value) and "draft.model" in str(raised.value)
    assert "expected hf://ORG/NAME[@REVISION], pvc://CLAIM[/PATH] or an absolute path" in str(raised.value)


def test_redis_password_renders_are_deterministic(chart, k8s):
    values = {"redis": {"bundled": {"auth": {"enabled": True, "password": "from-git"}}}}
    first = chart.render(values, name=k8s.RELEASE, namespace=k8s.NAMESPACE, is_install=True)
    second = chart.render(values, name=k8s.RELEASE, namespace=k8s.NAMESPACE, is_install=True)
    assert first == second
    for path in (k8s.CHART / "templates").rglob("*"):
        if path.is_file():
            source = path.read_text()
            assert "randAlphaNum" not in source and "lookup " not in source, path.name
    manifests = k8s.parse_rendered(first, values)
    secret = manifests.get("Secret", "demo-saguaro-redis")
    assert base64.b64decode(secret["data"]["redis-password"]).decode() == "from-git"


def test_redis_password_from_an_existing_secret(render, k8s):
    manifests = render({"redis": {"bundled": {"auth": {"enabled": True, "existingSecret": "redis-auth",
                                                        "passwordKey": "pw"}}}})
    validate(manifests, k8s)
    assert not manifests.of_kind("Secret")
    redis = k8s.pod_spec(manifests.workload("redis"))["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis["env"]}
    assert refs["REDIS_PASSWORD"] == {"name": "redis-auth", "key": "pw"}
    gateway = k8s.pod_spec(manifests.workload("gateway"))["containers"][0]
    assert {"name": "redis-auth", "key": "pw"} in [e["valueFrom"]["secretKeyRef"] for e in gateway["env"]
                                                   if "secretKeyRef" in e.get("valueFrom", {})]


def test_redis_auth_without_a_password_fails_with_the_fix(chart, k8s):
    with pytest.raises(helm_python.HelmRenderError, match="redis.bundled.auth.existingSecret.*redis.bundled.auth.password"):
        chart.render({"redis": {"bundled": {"auth": {"enabled": True}}}}, name=k8s.RELEASE, namespace=k8s.NAMESPACE)


def test_escape_hatches_land_where_expected(render, k8s):
    volume = {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}
    mount = {"name": "scratch", "mountPath": "/scratch"}
    values = {
        "image": {"registry": "registry.example.com"},
        "gateway": {"image": {"digest": DIGEST}, "extraVolumes": [volume], "extraVolumeMounts": [mount],
                    "schedulerName": "gw-scheduler", "podSecurityContext": {"runAsUser": 20001},
                    "containerSecurityContext": {"readOnlyRootFilesystem": True, "runAsGroup": 20001}},
        "target": {"image": {"digest": DIGEST, "tag": "ignored"}, "extraVolumes": [volume], "extraVolumeMounts": [mount],
                   "schedulerName": "kai-scheduler", "priorityClassName": "llm-serving"},
        "draft": {"extraVolumes": [{"name": "draft-extra", "emptyDir": {}}],
                  "extraVolumeMounts": [{"name": "draft-extra", "mountPath": "/extra"}],
                  "containerSecurityContext": {"runAsUser": 30001}},
        "redis": {"bundled": {"image": {"digest": DIGEST}, "schedulerName": "gw-scheduler",
                              "podAnnotations": {"a": "b"}, "podLabels": {"team": "llm"}}},
        "extraObjects": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{{ .Release.Name }}-extra"},
                          "data": {"model": "{{ .Values.target.model }}"}}],
    }
    manifests = render(values)
    validate(manifests, k8s)
    gateway, target = manifests.workload("gateway"), manifests.workload("target")
    gateway_spec, target_spec = k8s.pod_spec(gateway), k8s.pod_spec(target)
    assert container(gateway, "gateway", k8s)["image"] == f"registry.example.com/saguaro/saguaro-gateway@{DIGEST}"
    assert container(target, "target", k8s)["image"] == f"registry.example.com/saguaro/saguaro-target@{DIGEST}"
    assert container(target, "fetch-target-model", k8s, init=True)["image"].endswith(f"@{DIGEST}")
    assert container(target, "draft", k8s)["image"] == "registry.example.com/saguaro/saguaro-draft:0.1.0"
    assert gateway_spec["schedulerName"] == "gw-scheduler" and target_spec["schedulerName"] == "kai-scheduler"
    assert target_spec["priorityClassName"] == "llm-serving"
    assert volume in gateway_spec["volumes"] and volume in target_spec["volumes"]
    assert {"name": "draft-extra", "emptyDir": {}} in target_spec["volumes"], "colocated drafts' volumes join the pod"
    assert mount in container(gateway, "gateway", k8s)["volumeMounts"]
    assert mount in container(target, "target", k8s)["volumeMounts"]
    assert {"name": "draft-extra", "mountPath": "/extra"} in container(target, "draft", k8s)["volumeMounts"]
    assert gateway_spec["securityContext"]["runAsUser"] == 20001
    assert gateway_spec["securityContext"]["runAsNonRoot"] is True, "merged over podSecurityContext"
    assert container(gateway, "gateway", k8s)["securityContext"]["runAsGroup"] == 20001
    assert container(gateway, "gateway", k8s)["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container(target, "draft", k8s)["securityContext"]["runAsUser"] == 30001
    assert "runAsUser" not in container(target, "target", k8s)["securityContext"]
    redis = manifests.workload("redis")
    assert k8s.pod_spec(redis)["containers"][0]["image"] == f"docker.io/library/redis@{DIGEST}"
    assert k8s.pod_spec(redis)["schedulerName"] == "gw-scheduler"
    assert redis["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}
    assert k8s.pod_labels(redis)["team"] == "llm"
    extra = manifests.get("ConfigMap", "demo-extra")
    assert extra["data"]["model"] == "hf://Qwen/Qwen2.5-7B-Instruct"


def test_remote_draft_pods_take_their_own_hatches(render, k8s):
    values = {"pairing": {"mode": "remote"},
              "draft": {"schedulerName": "kai-scheduler", "image": {"digest": DIGEST},
                        "extraVolumes": [{"name": "x", "emptyDir": {}}], "extraVolumeMounts": [{"name": "x", "mountPath": "/x"}]}}
    manifests = render(values)
    validate(manifests, k8s)
    draft = manifests.workload("draft")
    assert k8s.pod_spec(draft)["schedulerName"] == "kai-scheduler"
    assert {"name": "x", "emptyDir": {}} in k8s.pod_spec(draft)["volumes"]
    assert {"name": "x", "mountPath": "/x"} in container(draft, "draft", k8s)["volumeMounts"]
    assert container(draft, "fetch-draft-model", k8s, init=True)["image"].endswith(f"@{DIGEST}")
    assert "x" not in {v["name"] for v in k8s.pod_spec(manifests.workload("target"))["volumes"]}


@pytest.mark.parametrize("values", [
    {"gateway": {"image": {"digest": "sha256:short"}}},
    {"models": {"huggingFace": {"endpoint": "hf-mirror.example.com"}}},
    {"gateway": {"containerSecurityContext": {"privileged": True}}},
    {"target": {"podSecurityContext": {"runAsNonRoot": False}}},
    {"extraObjects": [{"metadata": {"name": "no-kind"}}]},
    {"gpu": {"productAffinity": "yes"}},
], ids=["short-digest", "endpoint-without-scheme", "privileged-component", "root-component", "object-without-kind",
        "affinity-as-string"])
def test_schema_rejects_bad_new_values(chart, values):
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(values)
