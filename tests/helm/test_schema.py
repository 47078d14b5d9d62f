"""values.schema.json: Helm refuses bad values at install/upgrade time, before anything reaches
the cluster. Each case is checked by the schema validation, by a render (what `helm install`
runs) and by `helm lint`."""

from __future__ import annotations

import helm_python
import pytest

BAD_VALUES = {
    "unknown-top-level-key": {"replicas": 3},
    "typo-in-component": {"target": {"replica": 2}},
    "pairing-mode": {"pairing": {"mode": "sidecar"}},
    "anti-affinity": {"pairing": {"remote": {"antiAffinity": "always"}}},
    "target-mode": {"target": {"mode": "eagle"}},
    "negative-gpus": {"target": {"gpus": -1}},
    "gpus-as-string": {"draft": {"gpus": "one"}},
    "port-out-of-range": {"target": {"port": 70000}},
    "port-zero": {"gateway": {"httpPort": 0}},
    "dtype": {"target": {"engine": {"dtype": "fp8"}}},
    "device": {"draft": {"engine": {"device": "tpu"}}},
    "zero-kv-cache": {"target": {"engine": {"kvCacheBytes": 0}}},
    "draft-block-size": {"draft": {"engine": {"blockSize": 32}}},
    "draft-tensor-parallel": {"draft": {"engine": {"tensorParallelSize": 2}}},
    "tensor-parallel-zero": {"target": {"engine": {"tensorParallelSize": 0}}},
    "k-zero": {"speculation": {"k": 0}},
    "backup-policy": {"speculation": {"backup": "eager"}},
    "saguaro-c-above-one": {"speculation": {"saguaroC": 1.5}},
    "redis-mode": {"redis": {"mode": "memcached"}},
    "external-redis-without-url": {"redis": {"mode": "external"}},
    "external-redis-bad-scheme": {"redis": {"mode": "external", "external": {"url": "http://redis:6379"}}},
    "gateway-policy": {"gateway": {"policy": "random"}},
    "static-discovery-without-targets": {"gateway": {"discovery": "static"}},
    "static-target-without-port": {"gateway": {"discovery": "static", "staticTargets": ["10.0.0.1"]}},
    "tls-without-secret": {"gateway": {"tls": {"enabled": True}}},
    "internal-tls-without-secret": {"internalTls": {"enabled": True}},
    "internal-tls-empty-secret": {"internalTls": {"enabled": True, "existingSecret": ""}},
    "internal-tls-secret-name": {"internalTls": {"enabled": True, "existingSecret": "Internal_TLS"}},
    "internal-tls-unknown-key": {"internalTls": {"enabled": True, "existingSecret": "x", "clientCa": "ca.pem"}},
    "internal-tls-mutual-as-string": {"internalTls": {"mutual": "yes"}},
    "internal-tls-colocated-draft-as-string": {"internalTls": {"colocatedDraft": "off"}},
    "internal-tls-null": {"internalTls": None},
    "models-source": {"models": {"source": "s3"}},
    "relative-mount-path": {"models": {"mountPath": "models"}},
    "pvc-access-mode": {"models": {"pvc": {"accessModes": ["ReadWriteAlways"]}}},
    "bad-quantity": {"target": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"},
                                              "limits": {"cpu": "1", "memory": "1Gi"}}}},
    "resources-without-limits": {"gateway": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": None}}},
    "probe-period-zero": {"target": {"probes": {"startup": {"periodSeconds": 0}}}},
    "probe-handler-override": {"target": {"probes": {"liveness": {"httpGet": {"path": "/"}}}}},
    "root-container": {"podSecurityContext": {"runAsNonRoot": False}},
    "privilege-escalation": {"containerSecurityContext": {"allowPrivilegeEscalation": True}},
    "privileged": {"containerSecurityContext": {"privileged": True}},
    "toleration-operator": {"gpu": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Maybe"}]}},
    "tolerations-policy": {"target": {"tolerationsPolicy": "merge"}},
    "hpa-window-too-long": {"target": {"autoscaling": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 7200}}}}},
    "hpa-policy-type": {"target": {"autoscaling": {"behavior": {"scaleUp": {"policies": [
        {"type": "Replicas", "value": 1, "periodSeconds": 60}]}}}}},
    "keda-trigger-without-metadata": {"target": {"autoscaling": {"keda": {"triggers": [{"type": "prometheus"}]}}}},
    "keda-no-triggers": {"draft": {"autoscaling": {"keda": {"triggers": []}}}},
    "min-replicas-zero": {"gateway": {"autoscaling": {"minReplicas": 0}}},
    "cpu-target-percent": {"gateway": {"autoscaling": {"targetCPUUtilizationPercentage": 250}}},
    "otel-endpoint": {"otel": {"endpoint": "otel-collector:4317"}},
    "otel-sampler": {"otel": {"sampler": "sometimes"}},
    "otel-ratio": {"otel": {"samplerArg": "5%"}},
    "log-format": {"logFormat": "xml"},
    "trace-data-source": {"monitoring": {"dashboards": {"traces": {"type": "zipkin"}}}},
    "negative-streams-per-key": {"gateway": {"maxStreamsPerKey": -1}},
    "pdb-percent": {"target": {"pdb": {"maxUnavailable": "half"}}},
    "httproute-without-parents": {"httpRoute": {"enabled": True, "parentRefs": []}},
    "httproute-timeout": {"httpRoute": {"requestTimeout": "ten minutes"}},
    "ingress-path-type": {"ingress": {"hosts": [{"host": "a.example.com", "paths": [{"path": "/", "pathType": "Glob"}]}]}},
    "redis-maxmemory": {"redis": {"bundled": {"maxmemory": "lots"}}},
    "fullname-too-long": {"fullnameOverride": "x" * 41},
    "init-container-without-resources": {"models": {"source": "emptyDir", "initContainers": [
        {"name": "fetch", "image": "example.com/fetch:1", "securityContext": {"allowPrivilegeEscalation": False}}]}},
    "privileged-init-container": {"models": {"initContainers": [
        {"name": "fetch", "image": "example.com/fetch:1", "securityContext": {"privileged": True,
                                                                             "allowPrivilegeEscalation": False},
         "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}]}},
}


@pytest.mark.parametrize("values", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_schema_rejects_bad_values(chart, k8s, values):
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm_python.HelmValuesError):
        chart.render(values, name=k8s.RELEASE, namespace=k8s.NAMESPACE)
    report = helm_python.lint(k8s.CHART, values, strict=True)
    assert report["errors"], "helm lint must report the bad value"


def test_schema_accepts_every_case(chart, case):
    chart.validate_schema(case)


def test_schema_accepts_the_chart_defaults(chart, chart_values):
    chart.validate_schema(chart_values)
    chart.validate_schema({})


@pytest.mark.parametrize("values,message", [
    ({"target": {"gpus": 2, "engine": {"tensorParallelSize": 4}}}, "tensorParallelSize"),
    ({"metrics": {"enabled": False}, "monitoring": {"podMonitor": {"enabled": True}}}, "metrics.enabled"),
    ({"gateway": {"maxStreamsPerKey": 4}}, "apiKeys.existingSecret"),
], ids=["tensor-parallel-exceeds-gpus", "podmonitor-without-metrics", "streams-per-key-without-api-keys"])
def test_templates_refuse_inconsistent_values(chart, k8s, values, message):
    """Cross-field rules the schema cannot express fail the render with a readable message."""
    with pytest.raises(helm_python.HelmRenderError, match=message):
        chart.render(values, name=k8s.RELEASE, namespace=k8s.NAMESPACE)
