"""The chart's command lines start real services, and its probes judge them correctly.

The chart is rendered for CPU (gpu.enabled=false) with a tiny model; the target and draft
commands it renders are expanded like the kubelet does and run as real `saguaro` processes on
127.0.0.1, then the rendered probes run against them: a `grpc:` probe as the kubelet runs it
(grpc.health.v1 Check of its service, SERVING passes), an exec probe as its command
(files/saguaro-probe.py, the script the chart mounts):

* colocated pairing: draft + target from the chart's pod spec: the target reports SERVING over
  the fast path, so its startup, readiness and liveness probes pass; the gateway's probes pass
  and a request goes through gateway, target and draft;
* a target whose draft never comes: DEGRADED, ready only while readyWhenDegraded is true;
* two colocated draft workers (draft.workers=2): the containers draft and draft-1 listen on their
  own ports, each passes its probes and takes a session from the target, which is SERVING;
* after the process is gone every probe fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from saguaro.net import free_port, free_port_run
from saguaro.tiny_models import build_tiny_model

PROBE_SCRIPT = "/etc/saguaro/probe/saguaro-probe.py"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("probe-model") / "tiny", family="llama"))


def cpu_values(model: str, **overrides) -> dict:
    engine = {"dtype": "float32", "maxNumSeqs": 4, "kvCacheBytes": 16 << 20}
    values = {
        "gpu": {"enabled": False},
        "models": {"source": "hostPath", "mountPath": str(Path(model).parent)},
        "target": {"model": model, "listenHost": "127.0.0.1", "port": free_port(), "metricsPort": free_port(),
                   "engine": engine},
        "draft": {"model": model, "port": free_port(), "metricsPort": free_port(), "engine": dict(engine)},
    }
    for key, value in overrides.items():
        values[key] = {**values.get(key, {}), **value}
    return values


class Service:
    """One container's rendered command, run as a process of this machine."""

    def __init__(self, manifests, workload, container, k8s, log: Path):
        self.container = container
        self.args = k8s.expanded_args(manifests, workload, container)
        env = {**os.environ, **k8s.container_environment(manifests, workload, container), "OMP_NUM_THREADS": "1"}
        env.pop("HOME", None)  # /tmp in the pod; keep this user's
        self.log_path = log
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "saguaro.cli", *self.args], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)

    def wait_listening(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while "listening on" not in self.log_path.read_text():
            if self.proc.poll() is not None:
                pytest.fail(f"`saguaro {' '.join(self.args)}` exited {self.proc.returncode}:\n{self.log_path.read_text()}")
            assert time.monotonic() < deadline, f"not listening after {timeout} s:\n{self.log_path.read_text()}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def run_probe(probe: dict, k8s) -> subprocess.CompletedProcess:
    command = list(probe["exec"]["command"])
    assert command[:2] == ["python", PROBE_SCRIPT]
    command[:2] = [sys.executable, str(k8s.CHART / "files" / "saguaro-probe.py")]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(check, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return check()


def http_probe(container: dict, probe: str) -> int:
    """The status an httpGet probe of ``container`` gets (0: no answer)."""
    handler = container[probe]["httpGet"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == handler["port"])
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{handler['path']}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def grpc_probe(container: dict, probe: str) -> str:
    """What the kubelet's grpc: probe of ``container`` gets: the Check status of its service
    (a status name, or the RPC's error code name)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    handler = container[probe]["grpc"]
    with grpc.insecure_channel(f"127.0.0.1:{handler['port']}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=handler.get("service", "")), timeout=5)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def passes(container: dict, probe: str, k8s) -> bool:
    """Whether ``container``'s ``probe`` passes, run the way the kubelet runs its kind."""
    handler = container[probe]
    if "grpc" in handler:
        return grpc_probe(container, probe) == "SERVING"
    if "exec" in handler:
        return run_probe(handler, k8s).returncode == 0
    if "httpGet" in handler:
        return 200 <= http_probe(container, probe) < 400
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == handler["tcpSocket"]["port"])
    return port_open(port)


def strict_readiness(render, k8s, values: dict, container: str = "target") -> dict:
    """The ``container`` of the target pod of the same release with target.readyWhenDegraded=false."""
    manifests = render(k8s.deep_merge(values, {"target": {"readyWhenDegraded": False}}))
    return next(c for c in k8s.pod_spec(manifests.workload("target"))["containers"] if c["name"] == container)


PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def test_rendered_pods_serve_and_pass_their_probes(render, k8s, tiny_model, tmp_path):
    """Draft, target (colocated pod) and gateway from the chart's pod specs, wired as rendered
    (the gateway with static discovery: there is no API server here), serve a request."""
    values = cpu_values(tiny_model, pairing={"mode": "colocated"}, redis={"mode": "none"})
    values["gateway"] = {"discovery": "static", "staticTargets": [f"127.0.0.1:{values['target']['port']}"],
                         "grpcPort": free_port(), "httpPort": free_port(), "listenHost": "127.0.0.1"}
    manifests = render(values)
    workload = manifests.workload("target")
    target_spec, draft_spec = k8s.pod_spec(workload)["containers"]
    gateway_workload = manifests.workload("gateway")
    gateway_spec = k8s.pod_spec(gateway_workload)["containers"][0]
    draft = Service(manifests, workload, draft_spec, k8s, tmp_path / "draft.log")
    target = Service(manifests, workload, target_spec, k8s, tmp_path / "target.log")
    gateway = Service(manifests, gateway_workload, gateway_spec, k8s, tmp_path / "gateway.log")
    strict_spec = strict_readiness(render, k8s, values)
    assert "grpc" in target_spec["readinessProbe"] and "grpc" in gateway_spec["readinessProbe"]
    assert "exec" in draft_spec["readinessProbe"], "a colocated draft listens on loopback: probed from inside"
    try:
        draft.wait_listening()
        assert all(passes(draft_spec, probe, k8s) for probe in PROBES)
        target.wait_listening()
        assert passes(target_spec, "startupProbe", k8s)
        # the handshake completes in the background: SERVING once the draft session is up
        assert wait_until(lambda: passes(target_spec, "readinessProbe", k8s)), grpc_probe(target_spec, "readinessProbe")
        assert passes(target_spec, "livenessProbe", k8s)
        assert wait_until(lambda: passes(strict_spec, "readinessProbe", k8s)), "target never SERVING undegraded"
        metrics_port = next(p["containerPort"] for p in target_spec["ports"] if p["name"] == "metrics")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert "vllm:num_requests_waiting" in body and "saguaro_draft_connected" in body
        # same pod, same host: the pair negotiated the fast path, not gRPC
        assert 'transport="unix"' in body, [l for l in body.splitlines() if "transport" in l]

        gateway.wait_listening()
        assert passes(gateway_spec, "startupProbe", k8s) and passes(gateway_spec, "livenessProbe", k8s)
        assert wait_until(lambda: passes(gateway_spec, "readinessProbe", k8s)), "gateway never ready"
        from saguaro.client import Client

        grpc_port = next(p["containerPort"] for p in gateway_spec["ports"] if p["name"] == "grpc")
        with Client(f"127.0.0.1:{grpc_port}", timeout=60) as client:
            out = client.generate("def add(a, b):", max_tokens=8, ignore_eos=True)
        assert len(out.token_ids) == 8
    finally:
        gateway.stop()
        target.stop()
        draft.stop()
    for probe in PROBES:
        assert grpc_probe(target_spec, probe) == "UNAVAILABLE"
        failed = run_probe(draft_spec[probe], k8s)
        assert failed.returncode != 0 and "UNAVAILABLE" in failed.stderr


def test_target_without_its_draft_is_degraded(render, k8s, tiny_model, tmp_path):
    values = cpu_values(tiny_model, pairing={"mode": "colocated"}, target={"waitForDraftSeconds": 0, "draftTimeoutSeconds": 1})
    values["target"] = {**values["target"], "waitForDraftSeconds": 0, "draftTimeoutSeconds": 1}
    manifests = render(values)
    workload = manifests.workload("target")
    target_spec = k8s.pod_spec(workload)["containers"][0]
    strict_spec = strict_readiness(render, k8s, values)
    target = Service(manifests, workload, target_spec, k8s, tmp_path / "target.log")  # its draft is never started
    try:
        target.wait_listening()
        assert passes(target_spec, "readinessProbe", k8s), grpc_probe(target_spec, "readinessProbe")
        assert passes(target_spec, "livenessProbe", k8s)
        assert strict_spec["readinessProbe"]["grpc"]["service"] == "saguaro.undegraded"
        assert grpc_probe(strict_spec, "readinessProbe") == "NOT_SERVING"
        # the exec probe (TLS ports) reads the same names and says why it fails
        script = str(k8s.CHART / "files" / "saguaro-probe.py")
        port = str(values["target"]["port"])
        exec_strict = subprocess.run([sys.executable, script, "health", "--port", port, "--service",
                                      "saguaro.undegraded"], capture_output=True, text=True, timeout=30)
        assert exec_strict.returncode == 1 and "saguaro.undegraded: NOT_SERVING" in exec_strict.stderr
        exec_ready = subprocess.run([sys.executable, script, "health", "--port", port], capture_output=True,
                                    text=True, timeout=30)
        assert exec_ready.returncode == 0, exec_ready.stderr
        unknown = subprocess.run([sys.executable, script, "health", "--port", port, "--service", "nope"],
                                 capture_output=True, text=True, timeout=30)
        assert unknown.returncode == 1 and "no health for 'nope'" in unknown.stderr
    finally:
        target.stop()


def test_probe_script_checks(k8s):
    script = str(k8s.CHART / "files" / "saguaro-probe.py")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert subprocess.run([sys.executable, script, "tcp", "--port", str(port)], timeout=30).returncode == 0
    closed = subprocess.run([sys.executable, script, "tcp", "--port", str(port)], capture_output=True, text=True,
                            timeout=30)
    assert closed.returncode == 1 and str(port) in closed.stderr
    down = subprocess.run([sys.executable, script, "http", "--url", f"http://127.0.0.1:{port}/healthz"],
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1


def test_probe_script_imports_neither_saguaro_nor_torch(k8s):
    """An exec probe runs every period: it must load only the standard library, grpcio and the
    generated grpc.health.v1 modules, not the saguaro package (which imports torch)."""
    script = str(k8s.CHART / "files" / "saguaro-probe.py")
    code = (f"import runpy, sys\nsys.argv = [{script!r}, 'health', '--port', '{free_port()}', '--timeout', '1']\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as exc:\n"
            "    print(exc.code, sorted({m.split('.')[0] for m in sys.modules} & {'saguaro', 'torch', 'numpy'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.stdout.split(maxsplit=1) == ["1", "[]\n"], result.stdout + result.stderr
    assert "UNAVAILABLE" in result.stderr


def test_probe_configmap_carries_the_script_verbatim(render, k8s):
    """Pods run the ConfigMap's copy; the tests above run the file: they must be the same bytes."""
    data = render({}).get("ConfigMap", "demo-saguaro-probe")["data"]["saguaro-probe.py"]
    assert data == (k8s.CHART / "files" / "saguaro-probe.py").read_text().rstrip("\n")


def metric_value(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
              if line.startswith(name) and not line.startswith("#")]
    return sum(values)


def test_two_colocated_draft_workers_serve_one_target(render, k8s, tiny_model, tmp_path):
    """draft.workers=2, colocated: the pod's three containers, run as rendered, pair up — the
    target dials both drafts (one --draft-address item each) and reports SERVING."""
    values = cpu_values(tiny_model, pairing={"mode": "colocated"}, redis={"mode": "none"})
    values["draft"] = {**values["draft"], "workers": 2, "port": free_port_run(2), "metricsPort": free_port_run(2)}
    manifests = render(values)
    workload = manifests.workload("target")
    target_spec, *draft_specs = k8s.pod_spec(workload)["containers"]
    assert [c["name"] for c in draft_specs] == ["draft", "draft-1"]
    drafts = [Service(manifests, workload, spec, k8s, tmp_path / f"{spec['name']}.log") for spec in draft_specs]
    target = None
    try:
        for draft, spec in zip(drafts, draft_specs):
            draft.wait_listening()
            assert all(passes(spec, probe, k8s) for probe in PROBES)
        draft_ports = [d.args[d.args.index("--port") + 1] for d in drafts]
        assert draft_ports == [str(values["draft"]["port"]), str(values["draft"]["port"] + 1)]
        target = Service(manifests, workload, target_spec, k8s, tmp_path / "target.log")
        start = target.args.index("--draft-address") + 1
        assert target.args[start:start + 2] == [f"127.0.0.1:{port}" for port in draft_ports]
        target.wait_listening()
        strict_spec = strict_readiness(render, k8s, values)
        assert wait_until(lambda: passes(strict_spec, "readinessProbe", k8s)), \
            grpc_probe(strict_spec, "readinessProbe")
        # each worker took a session from the target (its own metrics port: draft.metricsPort + i)
        for i in range(2):
            port = values["draft"]["metricsPort"] + i
            assert wait_until(lambda: metric_value(port, "saguaro_draft_sessions_total") >= 1), f"draft worker {i}"
        from saguaro.client import Client

        with Client(f"127.0.0.1:{values['target']['port']}", timeout=60) as client:
            out = client.generate("def add(a, b):", max_tokens=8, ignore_eos=True)
        assert len(out.token_ids) == 8
    finally:
        if target is not None:
            target.stop()
        for draft in drafts:
            draft.stop()
    for spec in draft_specs:
        assert not passes(spec, "readinessProbe", k8s)
