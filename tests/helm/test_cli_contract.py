"""The chart passes only what the services accept.

For every toggle combination, mode and example, each Saguaro container's `args` are expanded the
way the kubelet does ($(VAR) from envFrom ConfigMaps and env) and parsed by the real command-line
parser, `saguaro.cli.build_parser()` — an unknown or malformed flag fails here, not in a crash-looping
pod. The parsed values are then checked against the ports, Services and peers the chart wires up.
"""

from __future__ import annotations

import re


from tests_support import parse_cli as parse

# Environment variables of the OpenTelemetry SDK specification the chart may set.
OTEL_SPEC_VARIABLES = {
    "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_PROPAGATORS",
    "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER",
    "OTEL_LOGS_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_HEADERS",
}


def containers(manifests, k8s):
    """Every Saguaro container, colocated draft workers (draft-1, ...) included."""
    for workload in manifests.workloads():
        for container in k8s.pod_spec(workload)["containers"]:
            if k8s.role_of(container) in ("gateway", "target", "draft"):
                yield workload, container


def assert_on_a_mount_or_in_the_image(model: str, container: dict, values: dict) -> None:
    """The folder a service loads is on one of its container's volumes, or (models.source none)
    an absolute path the image provides."""
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    on_a_mount = any(model == m or model.startswith(m.rstrip("/") + "/") for m in mounts)
    assert on_a_mount or (model.startswith("/") and values.get("models", {}).get("source", "none") == "none"), model


def port_named(container: dict, name: str) -> int | None:
    return next((p["containerPort"] for p in container.get("ports", []) if p["name"] == name), None)


def test_container_args_parse_with_the_real_cli(case, render, k8s):
    manifests = render(case)
    for workload, container in containers(manifests, k8s):
        args = k8s.expanded_args(manifests, workload, container)
        assert args[0] == k8s.role_of(container), "the subcommand is the container's role"
        parse(args)


def test_target_flags_match_the_wiring(case, render, k8s):
    manifests = render(case)
    values = manifests.values
    target_workload = manifests.workload("target")
    target = k8s.pod_spec(target_workload)["containers"][0]
    parsed = parse(k8s.expanded_args(manifests, target_workload, target))
    assert parsed.command == "target" and parsed.host == values.get("target", {}).get("listenHost", "0.0.0.0")
    assert parsed.port == port_named(target, "grpc")
    gpu = values.get("gpu", {}).get("enabled", True)
    assert parsed.device == ("cuda" if gpu else "cpu")
    assert_on_a_mount_or_in_the_image(parsed.model, target, values)
    service = manifests.get("Service", manifests.name("target"))
    assert service["spec"]["ports"][0]["port"] == parsed.port
    metrics = values.get("metrics", {}).get("enabled", True)
    assert parsed.metrics_port == (port_named(target, "metrics") if metrics else 0)
    gpus = values.get("target", {}).get("gpus", 1)
    assert parsed.tensor_parallel_size == (
        values.get("target", {}).get("engine", {}).get("tensorParallelSize") or (gpus if gpu and gpus > 1 else 1))
    assert parsed.log_format == values.get("logFormat", "text")

    mode = values.get("target", {}).get("mode", "ssd")
    assert parsed.mode == mode
    if mode == "ar":
        assert parsed.draft_address is None and parsed.draft_model is None
        return
    if mode == "sd":  # the target process loads the draft too
        assert_on_a_mount_or_in_the_image(parsed.draft_model, target, values)
    for workload, container in containers(manifests, k8s):
        if k8s.role_of(container) == "draft":  # ssd: the name reported is the folder the drafts load
            draft = parse(k8s.expanded_args(manifests, workload, container))
            assert draft.model == parsed.draft_model
            assert_on_a_mount_or_in_the_image(draft.model, container, values)
    workers = values.get("draft", {}).get("workers", 1)
    assert parsed.draft_workers == workers
    if mode == "sd":
        assert parsed.draft_address is None  # the CLI refuses --draft-address with --mode sd
        return
    addresses = parsed.draft_address
    assert len(addresses) == workers and len(set(addresses)) == workers, addresses
    # one args item per address: a $(VAR) reference expands to exactly one argument
    start = target["args"].index("--draft-address") + 1
    assert all(re.fullmatch(r"\$\(SAGUARO_DRAFT_ADDRESS(_[1-9][0-9]*)?\)", item)
               for item in target["args"][start:start + workers]), target["args"][start:start + workers]
    assert target["args"][start + workers].startswith("--")
    drafts = []  # (workload, container, parsed args) of draft worker i
    if manifests.has_workload("draft"):  # remote: target-N dials pod N of each draft worker StatefulSet
        draft_workloads = manifests.workloads_of("draft")
        assert len(draft_workloads) == workers
        for i, address in enumerate(addresses):
            host, port = address.rsplit(":", 1)
            name = manifests.name("draft") if workers == 1 else f"{manifests.name('draft')}-w{i}"
            draft_workload = manifests.get("StatefulSet", name)
            draft_service = manifests.get("Service", draft_workload["spec"]["serviceName"])
            assert draft_service["metadata"]["name"] == manifests.name("draft")
            assert draft_service["spec"]["clusterIP"] == "None"
            assert host == f"{name}-0.{draft_service['metadata']['name']}.{k8s.NAMESPACE}.svc.cluster.local"
            draft = k8s.pod_spec(draft_workload)["containers"][0]
            draft_parsed = parse(k8s.expanded_args(manifests, draft_workload, draft))
            assert int(port) == draft_parsed.port == port_named(draft, "grpc") == draft_service["spec"]["ports"][0]["port"]
            assert draft_parsed.host == values.get("draft", {}).get("listenHost", "0.0.0.0")
            drafts.append((draft_workload, draft, draft_parsed))
    else:  # colocated: draft worker i is the container draft[-i] on the pod's loopback
        draft_containers = [c for c in k8s.pod_spec(target_workload)["containers"][1:] if k8s.role_of(c) == "draft"]
        assert [c["name"] for c in draft_containers] == ["draft"] + [f"draft-{i}" for i in range(1, workers)]
        for address, draft in zip(addresses, draft_containers):
            host, port = address.rsplit(":", 1)
            draft_parsed = parse(k8s.expanded_args(manifests, target_workload, draft))
            assert host == "127.0.0.1" == draft_parsed.host
            assert int(port) == draft_parsed.port
            # gRPC stays on loopback; only /metrics is reachable, on the declared port Prometheus scrapes
            declared = [(p["name"], p["containerPort"]) for p in draft.get("ports", [])]
            if draft_parsed.metrics_port:
                assert draft_parsed.metrics_host == "0.0.0.0"
                worker = draft_containers.index(draft)
                assert declared == [("draft-metrics" + (f"-{worker}" if worker else ""), draft_parsed.metrics_port)]
            else:
                assert declared == [], "nothing of a colocated draft is reachable from outside the pod"
            drafts.append((target_workload, draft, draft_parsed))
        # one network namespace: every listening port of the pod differs
        listening = [parsed.port, parsed.metrics_port] + [p for _, _, d in drafts for p in (d.port, d.metrics_port)]
        listening = [p for p in listening if p]
        assert len(listening) == len(set(listening)), listening
    for _, _, draft_parsed in drafts:
        # both ends agree on the speculation tree and block size
        for flag in ("k", "fan_out", "fan_out_list", "fan_out_list_miss", "backup", "jit_max_batch", "saguaro_c",
                     "block_size"):
            assert getattr(parsed, flag) == getattr(draft_parsed, flag), flag
        assert draft_parsed.device == parsed.device


def test_gateway_flags_match_the_wiring(case, render, k8s):
    manifests = render(case)
    values = manifests.values
    workload = manifests.workload("gateway")
    container = k8s.pod_spec(workload)["containers"][0]
    parsed = parse(k8s.expanded_args(manifests, workload, container))
    assert parsed.port == port_named(container, "grpc")
    assert parsed.http_port == port_named(container, "http")
    assert parsed.host == values.get("gateway", {}).get("listenHost", "0.0.0.0")
    target_service = manifests.get("Service", manifests.name("target"))
    target_args = parse(k8s.expanded_args(manifests, manifests.workload("target"),
                                          k8s.pod_spec(manifests.workload("target"))["containers"][0]))
    assert parsed.block_size == target_args.block_size, "prefix hashing must use the engine's block size"
    if values.get("gateway", {}).get("discovery", "kubernetes") == "kubernetes":
        assert parsed.discovery == "kubernetes"
        assert parsed.namespace == k8s.NAMESPACE
        assert parsed.service == target_service["metadata"]["name"]
        assert parsed.target_port == target_service["spec"]["ports"][0]["port"] == target_args.port
    else:
        targets = parsed.targets if isinstance(parsed.targets, list) else [parsed.targets]
        flat = [t for item in targets for t in (item if isinstance(item, list) else [item])]
        assert flat == values["gateway"]["staticTargets"]
    redis_mode = values.get("redis", {}).get("mode", "bundled")
    if redis_mode == "none":
        assert not parsed.redis_url
    elif redis_mode == "external" and values["redis"]["external"].get("urlSecret", {}).get("name"):
        assert parsed.redis_url == k8s.FAKE_SECRET  # the whole URL comes from the Secret
    else:
        assert re.match(r"^rediss?://", parsed.redis_url)
        if redis_mode == "bundled":
            redis_service = manifests.get("Service", manifests.name("redis"))
            host = f"{redis_service['metadata']['name']}.{k8s.NAMESPACE}.svc.cluster.local"
            auth = values.get("redis", {}).get("bundled", {}).get("auth", {}).get("enabled", False)  # off by default
            userinfo = f":{k8s.FAKE_SECRET}@" if auth else ""
            assert parsed.redis_url == f"redis://{userinfo}{host}:{redis_service['spec']['ports'][0]['port']}/0"
    tls = values.get("gateway", {}).get("tls", {}).get("enabled", False)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    if tls:
        assert parsed.tls_cert == "/etc/saguaro/tls/tls.crt" and parsed.tls_key == "/etc/saguaro/tls/tls.key"
        assert "/etc/saguaro/tls" in mounts
    else:
        assert not parsed.tls_cert
    if values.get("gateway", {}).get("apiKeys", {}).get("existingSecret"):
        assert parsed.api_keys_file.startswith("/etc/saguaro/api-keys/") and "/etc/saguaro/api-keys" in mounts
    assert parsed.max_streams_per_key == values.get("gateway", {}).get("maxStreamsPerKey", 0)


def test_environment_variables_are_known(case, render, k8s):
    """OTEL_* names come from the OpenTelemetry specification; SAGUARO_* are only the chart's own
    plumbing for $(VAR) references and must all be used."""
    manifests = render(case)
    for workload, container in containers(manifests, k8s):
        env = k8s.container_environment(manifests, workload, container)
        unknown = {name for name in env if name.startswith("OTEL_")} - OTEL_SPEC_VARIABLES
        assert not unknown, unknown
        referenced = set(re.findall(r"\$\(([A-Z_][A-Z0-9_]*)\)", " ".join(container["args"]) + " " +
                                    " ".join(v.get("value", "") for v in container.get("env", []))))
        assert referenced <= set(env), f"undefined: {referenced - set(env)}"
        defined_by_chart = {name for name in env if name.startswith("SAGUARO_")}
        unused = defined_by_chart - referenced
        # The colocated ConfigMap of a role may carry a value only another mode references.
        assert unused <= {"SAGUARO_MODE", "SAGUARO_DRAFT_MODEL", "SAGUARO_DRAFT_WORKERS", "SAGUARO_DRAFT_TIMEOUT",
                          "SAGUARO_WAIT_FOR_DRAFT",
                          "SAGUARO_K", "SAGUARO_FAN_OUT", "SAGUARO_BACKUP", "SAGUARO_JIT_MAX_BATCH",
                          "SAGUARO_SAGUARO_C", "SAGUARO_MAX_MODEL_LEN", "SAGUARO_METRICS_PORT",
                          "SAGUARO_TARGET_SERVICE", "SAGUARO_TARGET_PORT", "SAGUARO_MODEL_NAME",
                          "SAGUARO_REDIS_PASSWORD"}, unused


def test_probe_commands_use_the_service_ports(case, render, k8s):
    """gRPC and exec probes check the port the service was told to use (exec: with the chart's
    probe script)."""
    manifests = render(case)
    for workload, container in containers(manifests, k8s):
        args = parse(k8s.expanded_args(manifests, workload, container))
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            command = container[probe].get("exec", {}).get("command")
            if command:
                assert command[:2] == ["python", "/etc/saguaro/probe/saguaro-probe.py"]
                assert int(command[command.index("--port") + 1]) == args.port
            elif "grpc" in container[probe]:
                assert container[probe]["grpc"]["port"] == args.port
            elif "tcpSocket" in container[probe]:
                assert port_named(container, container[probe]["tcpSocket"]["port"]) == args.port
            else:
                assert container[probe]["httpGet"]["port"] == "http" and args.command == "gateway"


PROMQL_METRIC = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def exported_metric_names() -> set[str]:
    """Every sample name the services export: target/draft definitions and the gateway registry."""
    from saguaro.services.gateway.metrics import GatewayMetrics
    from saguaro.telemetry.metrics import exported_samples

    names = set(exported_samples())
    for family in GatewayMetrics().registry.collect():
        names |= {sample.name for sample in family.samples} | {family.name}
    return names


def test_autoscaling_metrics_are_exported_by_the_services(render, chart_values):
    """The metric names in the default KEDA queries and HPA metrics are ones the services export
    (the HPA names are the custom-metrics adapter's: ':' becomes '_')."""
    exported = exported_metric_names()
    values = {"autoscaling": {"keda": {"enabled": True}}, "target": {"autoscaling": {"enabled": True}}}
    queries = [t["metadata"]["query"] for o in render(values).objects if o["kind"] == "ScaledObject"
               for t in o["spec"]["triggers"] if t["type"] == "prometheus"]
    assert queries
    for query in queries:
        for name in PROMQL_METRIC.findall(query):
            assert name in exported, f"{name} (in {query}) is not exported by any service"
    adapter_names = {name.replace(":", "_") for name in exported}
    hpa = [m["pods"]["metric"]["name"] for m in chart_values["target"]["autoscaling"]["hpaMetrics"]]
    hpa.append(chart_values["gateway"]["autoscaling"]["requestsMetric"]["name"])
    for name in hpa:
        assert name in adapter_names, name
