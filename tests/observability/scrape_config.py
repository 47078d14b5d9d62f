"""Prometheus scrape configs from the chart's rendered PodMonitor and ServiceMonitor, pointed at
local processes instead of Kubernetes service discovery.

prometheus-operator turns a monitor into a scrape job whose relabelling keeps the pods (or
service endpoints) the monitor selects, then attaches ``namespace``, ``pod``, ``container``,
``service``, ``job`` and ``endpoint`` and copies ``podTargetLabels``/``targetLabels`` from the
Kubernetes meta labels. Here each local process stands in for one pod: a static target carrying
the ``__meta_kubernetes_*`` labels that discovery would attach (from the rendered pod template,
container port and Service), followed by the same relabel rules the operator generates, so the
series land in Prometheus with the labels a cluster would give them. The monitor's own
``relabelings`` and ``metricRelabelings`` are appended as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

META = "__meta_kubernetes_"


def sanitize(name: str) -> str:
    """Prometheus's label-name sanitisation of a Kubernetes label key (``a.b/c-d`` -> ``a_b_c_d``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


@dataclass
class LocalPod:
    """One running process standing in for a pod of the rendered chart."""

    name: str                               # the pod name a cluster would give it
    namespace: str
    labels: dict[str, str]                  # the rendered pod template's labels
    container: str                          # the container serving the port
    ports: dict[str, str]                   # container port name -> local "host:port"
    service: dict | None = None             # the rendered Service in front of it (ServiceMonitor)
    service_ports: dict[str, str] = field(default_factory=dict)  # Service port name -> container port name

    def meta(self) -> dict[str, str]:
        labels = {f"{META}namespace": self.namespace, f"{META}pod_name": self.name,
                  f"{META}pod_container_name": self.container}
        for key, value in self.labels.items():
            labels[f"{META}pod_label_{sanitize(key)}"] = value
            labels[f"{META}pod_labelpresent_{sanitize(key)}"] = "true"
        return labels


def _selector_rules(selector: dict, role: str) -> list[dict]:
    """``keep`` rules for a LabelSelector, as the operator writes them (label value and presence)."""
    rules = []
    for key, value in (selector.get("matchLabels") or {}).items():
        rules.append({"action": "keep", "source_labels": [f"{META}{role}_label_{sanitize(key)}",
                                                            f"{META}{role}_labelpresent_{sanitize(key)}"],
                      "regex": f"({re.escape(value)});true"})
    for expression in selector.get("matchExpressions") or []:
        key, operator = sanitize(expression["key"]), expression["operator"]
        alternatives = "|".join(re.escape(v) for v in expression.get("values", []))
        sources = [f"{META}{role}_label_{key}", f"{META}{role}_labelpresent_{key}"]
        if operator == "In":
            rules.append({"action": "keep", "source_labels": sources, "regex": f"({alternatives});true"})
        elif operator == "NotIn":
            rules.append({"action": "drop", "source_labels": sources, "regex": f"({alternatives});true"})
        elif operator == "Exists":
            rules.append({"action": "keep", "source_labels": [sources[1]], "regex": "true"})
        elif operator == "DoesNotExist":
            rules.append({"action": "drop", "source_labels": [sources[1]], "regex": "true"})
        else:
            raise ValueError(f"unknown selector operator {operator!r}")
    return rules


def _meta_to(label: str, meta: str) -> dict:
    """Copy discovery's ``__meta_kubernetes_<meta>`` to the target label ``label``."""
    return {"source_labels": [f"{META}{meta}"], "target_label": label}


def _copy_labels(keys: list[str], role: str) -> list[dict]:
    return [{"source_labels": [f"{META}{role}_label_{sanitize(key)}"], "target_label": sanitize(key),
             "regex": "(.+)", "replacement": "$1"} for key in keys]


def _relabel(rule: dict) -> dict:
    """A monitor's RelabelConfig (camelCase, operator API) as a Prometheus relabel_config."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label", "separator": "separator",
             "regex": "regex", "modulus": "modulus", "replacement": "replacement", "action": "action"}
    out = {names[key]: value for key, value in rule.items()}
    if "action" in out:
        out["action"] = out["action"].lower()
    return out


def _job(name: str, targets: list[dict], rules: list[dict], endpoint: dict) -> dict:
    """One scrape job: the static targets, the relabelling, and the monitor endpoint's own settings
    (path, scheme, TLS, metric relabelling)."""
    job = {"job_name": name, "static_configs": targets, "relabel_configs": rules,
           "metric_relabel_configs": [_relabel(r) for r in endpoint.get("metricRelabelings", [])],
           "metrics_path": endpoint.get("path", "/metrics"), "scheme": endpoint.get("scheme", "http")}
    if endpoint.get("tlsConfig", {}).get("insecureSkipVerify"):
        job["tls_config"] = {"insecure_skip_verify": True}
    return job


def pod_monitor_jobs(monitor: dict, pods: list[LocalPod]) -> list[dict]:
    """The scrape jobs prometheus-operator generates for a PodMonitor, over ``pods``."""
    spec, name = monitor["spec"], monitor["metadata"]["name"]
    jobs = []
    for index, endpoint in enumerate(spec["podMetricsEndpoints"]):
        port = endpoint["port"]
        targets = [{"targets": [pod.ports[port]], "labels": {**pod.meta(), f"{META}pod_container_port_name": port}}
                   for pod in pods if port in pod.ports]
        namespace = pods[0].namespace if pods else ""
        rules = [*_selector_rules(spec["selector"], "pod"),
                 {"action": "keep", "source_labels": [f"{META}pod_container_port_name"], "regex": re.escape(port)},
                 _meta_to("namespace", "namespace"),
                 _meta_to("container", "pod_container_name"),
                 _meta_to("pod", "pod_name"),
                 *_copy_labels(spec.get("podTargetLabels", []), "pod"),
                 {"target_label": "job", "replacement": f"{namespace}/{name}"},
                 {"target_label": "endpoint", "replacement": port},
                 *(_relabel(rule) for rule in endpoint.get("relabelings", []))]
        jobs.append(_job(f"podMonitor/{namespace}/{name}/{index}", targets, rules, endpoint))
    return jobs


def service_monitor_jobs(monitor: dict, pods: list[LocalPod]) -> list[dict]:
    """The scrape jobs prometheus-operator generates for a ServiceMonitor, over the pods behind
    each pod's rendered Service."""
    spec, name = monitor["spec"], monitor["metadata"]["name"]
    jobs = []
    for index, endpoint in enumerate(spec["endpoints"]):
        port = endpoint["port"]
        targets = []
        for pod in pods:
            if pod.service is None or port not in pod.service_ports:
                continue
            service = pod.service["metadata"]
            labels = {**pod.meta(), f"{META}service_name": service["name"], f"{META}endpoint_port_name": port,
                      f"{META}pod_container_port_name": pod.service_ports[port]}
            for key, value in (service.get("labels") or {}).items():
                labels[f"{META}service_label_{sanitize(key)}"] = value
                labels[f"{META}service_labelpresent_{sanitize(key)}"] = "true"
            targets.append({"targets": [pod.ports[pod.service_ports[port]]], "labels": labels})
        namespace = pods[0].namespace if pods else ""
        rules = [*_selector_rules(spec["selector"], "service"),
                 {"action": "keep", "source_labels": [f"{META}endpoint_port_name"], "regex": re.escape(port)},
                 _meta_to("namespace", "namespace"),
                 _meta_to("service", "service_name"),
                 _meta_to("pod", "pod_name"),
                 _meta_to("container", "pod_container_name"),
                 *_copy_labels(spec.get("targetLabels", []), "service"),
                 *_copy_labels(spec.get("podTargetLabels", []), "pod"),
                 {"source_labels": [f"{META}service_name"], "target_label": "job", "replacement": "$1"},
                 {"target_label": "endpoint", "replacement": port},
                 *(_relabel(rule) for rule in endpoint.get("relabelings", []))]
        jobs.append(_job(f"serviceMonitor/{namespace}/{name}/{index}", targets, rules, endpoint))
    return jobs


def scrape_jobs(monitors: list[dict], pods: list[LocalPod]) -> list[dict]:
    """Every rendered PodMonitor and ServiceMonitor as scrape jobs over the local pods."""
    jobs = []
    for monitor in monitors:
        if monitor["kind"] == "PodMonitor":
            jobs += pod_monitor_jobs(monitor, pods)
        elif monitor["kind"] == "ServiceMonitor":
            jobs += service_monitor_jobs(monitor, pods)
    return jobs
