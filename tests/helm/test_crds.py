"""Custom resources, validated against their CRDs (kubernetes-validate has no schemas for CRDs).

Every rendered custom resource must satisfy two schemas:

* the published CRD's openAPIV3Schema (served, storage version), vendored verbatim in data/ with
  its origin and license in a "$comment": KEDA `ScaledObject` keda.sh/v1alpha1 (kedacore/keda
  v2.20.2), prometheus-operator `ServiceMonitor` / `PodMonitor` / `PrometheusRule`
  monitoring.coreos.com/v1 (v0.93.0), Gateway API `HTTPRoute` gateway.networking.k8s.io/v1
  (v1.6.1) and the `InferencePool` inference.networking.k8s.io/v1 (gateway-api-inference-extension
  v1.6.0). `no_unknown_fields` makes it fail on a field the CRD does not define (the API server
  would prune it silently) and reads the int-or-string, preserve-unknown-fields and set extensions
  as the API server does; `metadata` is checked as ObjectMeta. This is the authority on field
  names, types, enums and patterns, including the ones the chart does not render yet.
* a transcribed subset, kept for all but the InferencePool because it catches what the published
  schema lets through: the CRDs' CEL rules (x-kubernetes-validations, not evaluated here; e.g. an
  HTTPRoute Service backend needs a port) and the chart's own stricter expectations (non-empty
  strings, lower-case schemes, at least one trigger or endpoint). It lists only the fields the chart
  renders, with unknown fields rejected at every level and the embedded Kubernetes types
  (ObjectMeta, LabelSelector, HPA behavior) taken from kubernetes-validate's strict 1.30/1.34
  definitions (conftest.KUBE_VERSIONS); adding a field to a template means adding it here, from
  the CRD. test_structural_checks_catch_mistakes shows which of the two catches which mistake.

Updating a CRD version: replace its data/ file with the new tag's openAPIV3Schema (YAML to JSON,
"$comment" first) and the file name in SCHEMAS.
"""

from __future__ import annotations

import json
import re
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


GO_INLINE_FLAGS = re.compile(r"(?<=.)\(\?([ims]+)\)(.*)", re.DOTALL)


def go_pattern(pattern: str) -> str:
    """A Go regular expression for Python's re: Go lets inline flags start mid-pattern and apply to
    the rest of it (prometheus-operator's ``^(?i)(abort|warn)?$``), Python only at the very start,
    so they become a group scoped over the rest (exact while the flags are not inside a group)."""
    return GO_INLINE_FLAGS.sub(r"(?\1:\2)", pattern)


def no_unknown_fields(schema):
    """The CRD schema as the kube-apiserver applies it, in JSON Schema terms: a structural CRD
    prunes the fields its schema does not define without a word, so a misspelled field would be
    lost in the cluster; here it is an error (``additionalProperties: false`` on every object that
    neither sets additionalProperties nor ``x-kubernetes-preserve-unknown-fields: true``, which
    keeps unknown fields). jsonschema ignores the OpenAPI extensions, so the two that constrain
    values are spelled out: ``x-kubernetes-int-or-string: true`` accepts an integer or a string
    (the published node has no ``type``), and ``x-kubernetes-list-type: set`` rejects duplicates.
    Patterns are Go (RE2) regular expressions; `go_pattern` makes the one Go-only form they use
    fit Python's re. CEL rules (``x-kubernetes-validations``) are not evaluated; the subsets
    transcribe the ones that matter."""
    if isinstance(schema, list):
        return [no_unknown_fields(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: no_unknown_fields(value) for key, value in schema.items()}
    if isinstance(out.get("pattern"), str):
        out["pattern"] = go_pattern(out["pattern"])
    if out.get("x-kubernetes-int-or-string") is True:
        out["type"] = ["integer", "string"]
    if out.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    is_object = out.get("type") == "object" or "properties" in out
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields") is True
    if is_object and "additionalProperties" not in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def published(file_name: str) -> dict:
    """A vendored CRD openAPIV3Schema (data/, origin and license in its "$comment"), strict as above.
    The CRD leaves ``metadata`` as a bare object because the API server validates (and prunes) it
    as ObjectMeta for every custom resource; so does this schema."""
    schema = json.loads((Path(__file__).with_name("data") / file_name).read_text())
    schema["properties"]["metadata"] = META
    return no_unknown_fields(schema)


# Each kind: its published CRD schema, and the transcribed subset where there is one (see the
# module docstring); a rendered object must satisfy all of them.
SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "published": published("scaledobject-v2.20.2.schema.json"), "subset": SCALED_OBJECT},
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "published": published("servicemonitor-v0.93.0.schema.json"), "subset": SERVICE_MONITOR},
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "published": published("podmonitor-v0.93.0.schema.json"), "subset": POD_MONITOR},
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "published": published("prometheusrule-v0.93.0.schema.json"), "subset": PROMETHEUS_RULE},
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): {
        "published": published("httproute-v1.6.1.schema.json"), "subset": HTTP_ROUTE},
    ("inference.networking.k8s.io/v1", "InferencePool"): {
        "published": published("inferencepool-v1.6.0.schema.json")},
}


@cache
def validator(schema_key: tuple[str, str, str], kube_version: str) -> jsonschema.Validator:
    """The validator of SCHEMAS[(apiVersion, kind)][source], with the embedded Kubernetes types
    resolved against kubernetes-validate's strict definitions of that Kubernetes version."""
    api_version, kind, source = schema_key
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{kube_version}.0-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **SCHEMAS[api_version, kind][source]}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(obj: dict, kube_version: str, sources=("published", "subset")) -> list[str]:
    key = (obj["apiVersion"], obj["kind"])
    return [f"{obj['kind']} ({source} schema): {e.message} at {list(e.absolute_path)}"
            for source in sources if source in SCHEMAS[key]
            for e in sorted(validator((*key, source), kube_version).iter_errors(obj), key=str)]


def check(obj: dict, kube_version: str) -> None:
    errors = schema_errors(obj, kube_version)
    assert not errors, "\n".join(errors)


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


BOTH, PUBLISHED, SUBSET = ("published", "subset"), ("published",), ("subset",)


@pytest.mark.parametrize("mutation", [
    ("ScaledObject", BOTH, lambda o: o["spec"]["triggers"][0].__setitem__("metadata", {"threshold": 4})),
    ("ScaledObject", BOTH, lambda o: o["spec"].__setitem__("minReplicas", 1)),
    ("ScaledObject", BOTH, lambda o: o["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]
     .__setitem__("stabilizationWindow", 60)),
    ("PodMonitor", BOTH, lambda o: o["spec"].__setitem__("endpoints", o["spec"].pop("podMetricsEndpoints"))),
    ("ServiceMonitor", BOTH, lambda o: o["spec"]["endpoints"][0].__setitem__("interval", "30 seconds")),
    ("ServiceMonitor", SUBSET, lambda o: o["spec"]["endpoints"][0].__setitem__("port", "")),
    ("ServiceMonitor", BOTH, lambda o: o["metadata"]["labels"].__setitem__("replicas", 2)),
    ("PrometheusRule", BOTH, lambda o: o["spec"]["groups"][0]["rules"][0].__setitem__("for", "5 minutes")),
    ("PrometheusRule", BOTH, lambda o: o["spec"]["groups"][0].__setitem__("rule", [])),
    ("HTTPRoute", BOTH, lambda o: o["spec"]["rules"][0].__setitem__("backendRef", [])),
    # a CEL rule of the CRD, which only the subset transcribes
    ("HTTPRoute", SUBSET, lambda o: o["spec"]["rules"][0]["backendRefs"][0].update(group="", kind="Service")),
    ("HTTPRoute", PUBLISHED, lambda o: o["spec"]["parentRefs"][0].__setitem__("sectionName", "HTTPS_443")),
    ("InferencePool", PUBLISHED, lambda o: o["spec"].__setitem__("targetPortNumber", 8080)),
    ("InferencePool", PUBLISHED, lambda o: o["spec"]["endpointPickerRef"].__setitem__("failureMode", "Open")),
    ("InferencePool", PUBLISHED, lambda o: o["spec"]["selector"].__setitem__("matchExpressions", [])),
    ("InferencePool", PUBLISHED, lambda o: o["spec"].pop("targetPorts")),
], ids=["trigger-metadata-not-string", "misnamed-min", "hpa-behavior-typo", "podmonitor-wrong-list",
        "bad-duration", "empty-port", "label-not-string", "rule-bad-duration", "rule-group-typo",
        "httproute-typo", "service-backend-without-port", "section-name-not-dns",
        "inferencepool-v1alpha2-field", "inferencepool-failure-mode", "inferencepool-selector-not-v1",
        "inferencepool-no-target-ports"])
def test_structural_checks_catch_mistakes(render, k8s, mutation):
    """The schemas are strict enough to catch typical template mistakes, each of the listed
    schemas on its own (so each earns its place)."""
    kind, sources, mutate = mutation
    values = {"autoscaling": {"keda": {"enabled": True}}, "target": {"autoscaling": {"enabled": True}},
              "monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                             "prometheusRule": {"enabled": True}},
              "httpRoute": {"enabled": True}, "inferencePool": {"enabled": True}}
    # the pool's HTTPRoute (its backendRef is the InferencePool); the gateway's for the other cases
    name = "demo-saguaro-pool" if kind in ("HTTPRoute", "InferencePool") else None
    obj = json.loads(json.dumps(next(o for o in render(values).objects
                                     if o["kind"] == kind and name in (None, o["metadata"]["name"]))))
    check(obj, k8s.KUBE_VERSIONS[-1])
    mutate(obj)
    for source in sources:
        assert schema_errors(obj, k8s.KUBE_VERSIONS[-1], (source,)), f"the {source} schema missed it"


def test_published_schemas_read_the_kubernetes_extensions():
    """no_unknown_fields gives the OpenAPI extensions of a CRD the API server's meaning."""
    schema = no_unknown_fields({"type": "object", "properties": {
        "port": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"known": {"type": "string"}}},
        "bare": {"type": "object"},
        "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
        "mode": {"type": "string", "pattern": "^(?i)(abort|warn)?$"},
    }})
    validator = jsonschema.Draft202012Validator(schema)
    valid = {"port": 8080, "free": {"known": "x", "anything": {"goes": 1}}, "bare": {}, "tags": ["a", "b"],
             "mode": "WARN"}
    assert not list(validator.iter_errors(valid))
    for invalid in ({"port": 1.5}, {"port": None}, {"free": {"known": 1}}, {"bare": {"pruned": 1}},
                    {"tags": ["a", "a"]}, {"mode": "ignore"}, {"typo": 1}):
        assert list(validator.iter_errors(invalid)), invalid
    assert validator.is_valid({"port": "http-metrics"})


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
