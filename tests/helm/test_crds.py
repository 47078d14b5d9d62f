"""Custom resources, validated structurally (kubernetes-validate has no schemas for CRDs).

The schemas below transcribe the fields of the upstream CRDs the chart uses — KEDA
`ScaledObject` keda.sh/v1alpha1 (kedacore/keda config/crd/bases/keda.sh_scaledobjects.yaml),
prometheus-operator `ServiceMonitor` / `PodMonitor` monitoring.coreos.com/v1, Gateway API
`HTTPRoute` gateway.networking.k8s.io/v1 — with unknown fields rejected at every level, and the
embedded Kubernetes types (ObjectMeta, LabelSelector, HPA behavior) taken from
kubernetes-validate's strict 1.30/1.34 definitions (conftest.KUBE_VERSIONS). They are a subset: fields the chart does not
render are not listed, so adding one to a template means adding it here, from the CRD.

The InferencePool (inference.networking.k8s.io/v1) is checked against the published CRD's own
openAPIV3Schema, vendored verbatim in data/inferencepool-v1.6.0.schema.json (origin and license in
its "$comment"), made strict the way the API server's pruning would silently drop unknown fields.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource

K8S = "https://kubernetes.io/api/_definitions.json#/$defs/"


def k8s_ref(name: str) -> dict:
    return {"$ref": K8S + name}


def strict(properties: dict, required: tuple = ()) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


STRING = {"type": "string", "minLength": 1}
INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
GATEWAY_DURATION = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}
META = k8s_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
NAMESPACE_SELECTOR = strict({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": STRING}})


def header(api_version: str, kind: str) -> dict:
    return {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": META}


SCALED_OBJECT = strict({
    **header("keda.sh/v1alpha1", "ScaledObject"),
    "spec": strict({
        "scaleTargetRef": strict({"apiVersion": STRING, "kind": {"enum": ["Deployment", "StatefulSet"]},
                                  "name": STRING, "envSourceContainerName": STRING}, required=("name",)),
        "pollingInterval": INT32,
        "cooldownPeriod": INT32,
        "initialCooldownPeriod": INT32,
        "idleReplicaCount": INT32,
        "minReplicaCount": INT32,
        "maxReplicaCount": INT32,
        "fallback": strict({"failureThreshold": INT32, "replicas": INT32}, required=("failureThreshold", "replicas")),
        "advanced": strict({
            "restoreToOriginalReplicaCount": {"type": "boolean"},
            "horizontalPodAutoscalerConfig": strict({
                "name": STRING,
                "behavior": k8s_ref("io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerBehavior"),
            }),
        }),
        "triggers": {"type": "array", "minItems": 1, "items": strict({
            "type": STRING,
            "name": STRING,
            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
            "useCachedMetrics": {"type": "boolean"},
            # KEDA's CRD: metadata is a map of strings.
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "authenticationRef": strict({"name": STRING, "kind": {"enum": ["TriggerAuthentication",
                                                                          "ClusterTriggerAuthentication"]}},
                                        required=("name",)),
        }, required=("type", "metadata"))},
    }, required=("scaleTargetRef", "triggers")),
}, required=("apiVersion", "kind", "metadata", "spec"))

ENDPOINT_COMMON = {
    "port": STRING,
    "path": {"type": "string", "pattern": "^/"},
    "scheme": {"enum": ["http", "https"]},
    "interval": DURATION,
    "scrapeTimeout": DURATION,
    "tlsConfig": strict({"insecureSkipVerify": {"type": "boolean"}, "serverName": STRING}),
}

SERVICE_MONITOR = strict({
    **header("monitoring.coreos.com/v1", "ServiceMonitor"),
    "spec": strict({
        "selector": k8s_ref("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"),
        "namespaceSelector": NAMESPACE_SELECTOR,
        "podTargetLabels": {"type": "array", "items": STRING},
        "endpoints": {"type": "array", "minItems": 1, "items": strict(ENDPOINT_COMMON)},
    }, required=("selector", "endpoints")),
}, required=("apiVersion", "kind", "metadata", "spec"))

POD_MONITOR = strict({
    **header("monitoring.coreos.com/v1", "PodMonitor"),
    "spec": strict({
        "selector": k8s_ref("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"),
        "namespaceSelector": NAMESPACE_SELECTOR,
        "podTargetLabels": {"type": "array", "items": STRING},
        "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": strict(ENDPOINT_COMMON)},
    }, required=("selector", "podMetricsEndpoints")),
}, required=("apiVersion", "kind", "metadata", "spec"))

# prometheus-operator PrometheusRule monitoring.coreos.com/v1 (the fields of a Rule the chart renders)
RULE = strict({"record": STRING, "alert": STRING, "expr": {"type": ["string", "integer"]}, "for": DURATION,
               "labels": {"type": "object", "additionalProperties": {"type": "string"}},
               "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}, required=("expr",))
PROMETHEUS_RULE = strict({
    **header("monitoring.coreos.com/v1", "PrometheusRule"),
    "spec": strict({
        "groups": {"type": "array", "items": strict({"name": STRING, "interval": DURATION,
                                                       "rules": {"type": "array", "items": RULE}},
                                                      required=("name",))},
    }),
}, required=("apiVersion", "kind", "metadata", "spec"))

HOSTNAME = {"type": "string", "pattern": r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
            "maxLength": 253}
HTTP_ROUTE = strict({
    **header("gateway.networking.k8s.io/v1", "HTTPRoute"),
    "spec": strict({
        "parentRefs": {"type": "array", "minItems": 1, "maxItems": 32, "items": strict({
            "group": {"type": "string"}, "kind": STRING, "namespace": STRING, "name": STRING,
            "sectionName": STRING, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        }, required=("name",))},
        "hostnames": {"type": "array", "maxItems": 16, "items": HOSTNAME},
        "rules": {"type": "array", "minItems": 1, "maxItems": 16, "items": strict({
            "matches": {"type": "array", "maxItems": 64, "items": strict({
                "path": strict({"type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                                "value": {"type": "string", "pattern": "^/", "maxLength": 1024}}),
            })},
            "backendRefs": {"type": "array", "items": {
                **strict({
                    "group": {"type": "string", "maxLength": 253,
                              "pattern": r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
                    "kind": {"type": "string", "minLength": 1, "maxLength": 63,
                             "pattern": r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"},
                    "name": STRING, "namespace": STRING,
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "weight": {"type": "integer", "minimum": 0, "maximum": 1000000},
                }, required=("name",)),
                # the CRD's CEL rule "Must have port for Service reference" (group "" and kind
                # Service are the defaults)
                "if": {"properties": {"group": {"const": ""}, "kind": {"const": "Service"}}},
                "then": {"required": ["port"]},
            }},
            "timeouts": strict({"request": GATEWAY_DURATION, "backendRequest": GATEWAY_DURATION}),
        })},
    }),
}, required=("apiVersion", "kind", "metadata", "spec"))


def no_unknown_fields(schema):
    """The schema with ``additionalProperties: false`` on every object that lists its properties:
    the API server prunes unknown fields of a structural CRD without a word, so a misspelled field
    would be lost in the cluster; here it is an error."""
    if isinstance(schema, list):
        return [no_unknown_fields(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: no_unknown_fields(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


INFERENCE_POOL_CRD = Path(__file__).with_name("data") / "inferencepool-v1.6.0.schema.json"
INFERENCE_POOL = no_unknown_fields(json.loads(INFERENCE_POOL_CRD.read_text()))

SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTP_ROUTE,
    ("inference.networking.k8s.io/v1", "InferencePool"): INFERENCE_POOL,
}


@cache
def validator(key: tuple[str, str], kube_version: str) -> jsonschema.Validator:
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{kube_version}.0-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **SCHEMAS[key]}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def check(obj: dict, kube_version: str) -> None:
    errors = sorted(validator((obj["apiVersion"], obj["kind"]), kube_version).iter_errors(obj), key=str)
    assert not errors, "\n".join(f"{obj['kind']}: {e.message} at {list(e.absolute_path)}" for e in errors)


def test_custom_resources_match_their_crds(case, render, k8s):
    for obj in render(case).objects:
        if (obj["apiVersion"], obj["kind"]) in SCHEMAS:
            for version in k8s.KUBE_VERSIONS:
                check(obj, version)


def test_all_custom_resources_appear_somewhere(render):
    """The toggles do render each CRD kind (so the check above is not vacuous)."""
    values = {"autoscaling": {"keda": {"enabled": True}}, "target": {"autoscaling": {"enabled": True}},
              "monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                             "prometheusRule": {"enabled": True}},
              "httpRoute": {"enabled": True}, "inferencePool": {"enabled": True}}
    kinds = {(o["apiVersion"], o["kind"]) for o in render(values).objects}
    assert set(SCHEMAS) <= kinds


@pytest.mark.parametrize("mutation", [
    ("ScaledObject", lambda o: o["spec"]["triggers"][0].__setitem__("metadata", {"threshold": 4})),
    ("ScaledObject", lambda o: o["spec"].__setitem__("minReplicas", 1)),
    ("ScaledObject", lambda o: o["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]
     .__setitem__("stabilizationWindow", 60)),
    ("PodMonitor", lambda o: o["spec"].__setitem__("endpoints", o["spec"].pop("podMetricsEndpoints"))),
    ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].__setitem__("interval", "30 seconds")),
    ("HTTPRoute", lambda o: o["spec"]["rules"][0].__setitem__("backendRef", [])),
    ("HTTPRoute", lambda o: o["spec"]["rules"][0]["backendRefs"][0].update(group="", kind="Service")),
    ("InferencePool", lambda o: o["spec"].__setitem__("targetPortNumber", 8080)),
    ("InferencePool", lambda o: o["spec"]["endpointPickerRef"].__setitem__("failureMode", "Open")),
    ("InferencePool", lambda o: o["spec"]["selector"].__setitem__("matchExpressions", [])),
    ("InferencePool", lambda o: o["spec"].pop("targetPorts")),
], ids=["trigger-metadata-not-string", "misnamed-min", "hpa-behavior-typo", "podmonitor-wrong-list",
        "bad-duration", "httproute-typo", "service-backend-without-port", "inferencepool-v1alpha2-field",
        "inferencepool-failure-mode", "inferencepool-selector-not-v1", "inferencepool-no-target-ports"])
def test_structural_checks_catch_mistakes(render, k8s, mutation):
    """The structural schemas are strict enough to catch typical template mistakes."""
    kind, mutate = mutation
    values = {"autoscaling": {"keda": {"enabled": True}}, "target": {"autoscaling": {"enabled": True}},
              "monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
              "httpRoute": {"enabled": True}, "inferencePool": {"enabled": True}}
    # the pool's HTTPRoute (its backendRef is the InferencePool); the gateway's for the other cases
    name = "demo-saguaro-pool" if kind in ("HTTPRoute", "InferencePool") else None
    obj = json.loads(json.dumps(next(o for o in render(values).objects
                                     if o["kind"] == kind and name in (None, o["metadata"]["name"]))))
    check(obj, k8s.KUBE_VERSIONS[-1])
    mutate(obj)
    with pytest.raises(AssertionError):
        check(obj, k8s.KUBE_VERSIONS[-1])


@pytest.mark.parametrize("to_zero", [False, True], ids=["fallback", "fallback-scale-to-zero"])
def test_scaled_objects_render_fallback_and_idle_replicas(render, k8s, to_zero):
    """KEDA fallback (default replicas: maxReplicas) and opt-in scale to zero (idleReplicaCount 0 <
    minReplicaCount, and a gateway-request trigger that wakes the target pool) validate against
    the ScaledObject CRD."""
    values = {"pairing": {"mode": "remote"}, "autoscaling": {"keda": {"enabled": True}},
              "target": {"autoscaling": {"enabled": True, "maxReplicas": 6,
                                         "keda": {"scaleToZero": {"enabled": to_zero}}}},
              "draft": {"autoscaling": {"enabled": True, "keda": {"fallback": {"replicas": 2},
                                                                  "scaleToZero": {"enabled": to_zero}}}}}
    objects = {o["metadata"]["name"]: o for o in render(values).of_kind("ScaledObject")}
    target, draft = objects[f"{k8s.RELEASE}-saguaro-target"], objects[f"{k8s.RELEASE}-saguaro-draft"]
    assert target["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 6}
    assert draft["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 2}
    prometheus = [t for t in target["spec"]["triggers"] if t["type"] == "prometheus"]
    if to_zero:
        for obj in (target, draft):
            assert obj["spec"]["idleReplicaCount"] == 0 < obj["spec"]["minReplicaCount"]
        (wake,) = [t for t in prometheus if t["name"] == "gateway-requests"]
        assert wake["metadata"]["activationThreshold"] == "0"
        assert 'saguaro_pool="gateway"' in wake["metadata"]["query"]
        assert all("ignoreNullValues" not in t["metadata"] for t in prometheus)  # no series at zero pods: 0
    else:
        assert "idleReplicaCount" not in target["spec"] and "idleReplicaCount" not in draft["spec"]
        assert prometheus and all(t["metadata"]["ignoreNullValues"] == "false" for t in prometheus)
    for obj in objects.values():
        for version in k8s.KUBE_VERSIONS:
            check(obj, version)


def test_fallback_with_a_value_trigger_fails_with_a_clear_message(chart, k8s):
    values = {"autoscaling": {"keda": {"enabled": True}},
              "target": {"autoscaling": {"enabled": True, "keda": {"triggers": [
                  {"name": "queue", "type": "prometheus", "metricType": "Value",
                   "metadata": {"query": "sum(vllm:num_requests_waiting)", "threshold": "4"}}]}}}}
    with pytest.raises(Exception, match="fallback needs every trigger's metricType to be AverageValue"):
        chart.render(values, name=k8s.RELEASE, namespace=k8s.NAMESPACE, is_install=True)
