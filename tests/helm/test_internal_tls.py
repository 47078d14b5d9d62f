"""Internal TLS (`internalTls`): gateway -> target and target -> draft over TLS or mTLS.

For every toggle combination, mode and example (`case`: the "tls" toggle turns internal mTLS on,
and conftest's INTERNAL_TLS_CASES add both pairing modes with mutual on and off, the plaintext
colocated hop, draft workers, sd/ar and static discovery), each Saguaro container's args are
expanded like the kubelet does and parsed by the real `saguaro` CLI parser:

* every hop carries its flags, pointing at files under the Secret's mount path, and nothing else
  does (no internal TLS: no such flag anywhere);
* the Secret is mounted read-only in exactly the containers that use it, in exactly the pods
  that hold them;
* where a gRPC port serves TLS its probes are exec health probes speaking TLS (mTLS) like its
  clients (the kubelet's grpc: probe cannot); elsewhere the kubelet's grpc: probes;
* inconsistent values are refused, by the schema and by the templates;
* a colocated pod and a gateway, run from their rendered commands with a real certificate where
  the Secret would be mounted, serve a request over mTLS on every hop and pass their probes.
"""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import helm_python
import pytest
from tests_support import parse_cli as parse

MOUNT = "/etc/saguaro/internal-tls"
VOLUME = "internal-tls"
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def _get(values: dict, *path, default=None):
    node = values
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def settings(values: dict) -> dict:
    """What the chart should do for these values."""
    enabled = bool(_get(values, "internalTls", "enabled", default=False))
    mode = _get(values, "target", "mode", default="ssd")
    remote = _get(values, "pairing", "mode", default="colocated") == "remote"
    return {
        "enabled": enabled,
        "mutual": enabled and _get(values, "internalTls", "mutual", default=True),
        "draft_tls": enabled and mode == "ssd"
        and (remote or _get(values, "internalTls", "colocatedDraft", default=True)),
    }


def saguaro_containers(manifests, k8s):
    for workload in manifests.workloads():
        for container in k8s.pod_spec(workload)["containers"]:
            if k8s.role_of(container) in ("gateway", "target", "draft"):
                yield workload, container


def tls_paths(parsed) -> dict[str, str]:
    """Every TLS file flag the parsed command line sets (internal hops and the gateway's public TLS)."""
    names = ("tls_cert", "tls_key", "tls_client_ca", "draft_tls_ca", "draft_tls_cert", "draft_tls_key",
             "target_tls_ca", "target_tls_cert", "target_tls_key")
    return {name: getattr(parsed, name) for name in names if getattr(parsed, name, None)}


def test_every_hop_carries_its_tls_flags(case, render, k8s):
    manifests = render(case)
    expected = settings(manifests.values)
    public_tls = bool(_get(manifests.values, "gateway", "tls", "enabled", default=False))
    for workload, container in saguaro_containers(manifests, k8s):
        parsed = parse(k8s.expanded_args(manifests, workload, container))
        where = f"{workload['metadata']['name']}/{container['name']}"
        role = k8s.role_of(container)
        paths = tls_paths(parsed)
        if role == "gateway":
            # the public ports have their own Secret (gateway.tls); the internal one is for the targets
            internal = {k: v for k, v in paths.items() if k.startswith("target_tls")}
            assert bool(parsed.tls_cert) == public_tls, where
            want = {}
            if expected["enabled"]:
                want["target_tls_ca"] = f"{MOUNT}/ca.crt"
                if expected["mutual"]:
                    want |= {"target_tls_cert": f"{MOUNT}/tls.crt", "target_tls_key": f"{MOUNT}/tls.key"}
            assert internal == want, where
            # one name for every target, whatever the gateway dials (pod IPs cannot be in a shared certificate)
            service = next(o["metadata"]["name"] for o in manifests.of_kind("Service") if k8s.component_of(o) == "target")
            server_name = f"{service}.{k8s.NAMESPACE}.svc.cluster.local" if expected["enabled"] else None
            assert parsed.target_tls_server_name == server_name, where
            continue
        want = {}
        if expected["enabled"] and (role == "target" or (role == "draft" and expected["draft_tls"])):
            want = {"tls_cert": f"{MOUNT}/tls.crt", "tls_key": f"{MOUNT}/tls.key"}
            if expected["mutual"]:
                want["tls_client_ca"] = f"{MOUNT}/ca.crt"
        if role == "target" and expected["draft_tls"]:
            want["draft_tls_ca"] = f"{MOUNT}/ca.crt"
            if expected["mutual"]:
                want |= {"draft_tls_cert": f"{MOUNT}/tls.crt", "draft_tls_key": f"{MOUNT}/tls.key"}
        assert paths == want, where
        if role == "target" and parsed.mode == "ssd" and expected["enabled"] and not expected["draft_tls"]:
            # internalTls.colocatedDraft=false: the pod-local hop stays on loopback, in plaintext
            assert all(address.startswith("127.0.0.1:") for address in parsed.draft_address), where


def mounts_of(container: dict) -> dict[str, dict]:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def test_the_secret_is_mounted_read_only_where_it_is_used(case, render, k8s):
    """The volume is in exactly the pods with a container that uses it, mounted read-only in
    exactly those containers, and holds exactly the Secret's three files."""
    manifests = render(case)
    expected = settings(manifests.values)
    pods_with_volume = set()
    for workload in manifests.workloads():
        spec = k8s.pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        users = []
        for container in spec["containers"] + spec.get("initContainers", []):
            text = " ".join(container.get("args", []) + [" ".join(container.get(p, {}).get("exec", {}).get(
                "command", [])) for p in ("startupProbe", "livenessProbe", "readinessProbe")])
            uses = MOUNT in text
            mount = mounts_of(container).get(VOLUME)
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert bool(mount) == uses, f"{where}: mounted {bool(mount)}, used {uses}"
            if mount:
                assert mount["mountPath"] == MOUNT and mount["readOnly"] is True, where
                assert "subPath" not in mount, f"{where}: a subPath mount would never see a renewed certificate"
                users.append(container["name"])
        if VOLUME in volumes:
            pods_with_volume.add(k8s.component_of(workload))
            assert users, f"{workload['metadata']['name']}: the volume is mounted by no container"
            secret = volumes[VOLUME]["secret"]
            assert secret["secretName"] == k8s.INTERNAL_TLS_SECRET
            assert secret["defaultMode"] == 0o440, "readable by the pod's group (fsGroup) only"
            assert sorted(item["key"] for item in secret["items"]) == ["ca.crt", "tls.crt", "tls.key"]
            assert all(item["key"] == item["path"] for item in secret["items"])
        else:
            assert not users, workload["metadata"]["name"]
    if expected["enabled"]:
        components = {k8s.component_of(w) for w in manifests.workloads()}
        assert pods_with_volume == components & {"gateway", "target", "draft"}
        assert "redis" not in pods_with_volume
    else:
        assert not pods_with_volume


def test_probes_speak_tls_where_the_port_does(case, render, k8s):
    """The kubelet's grpc: probe can neither trust a private CA nor present a client certificate:
    a target or draft whose gRPC port serves TLS has exec health probes carrying the CA (and, with
    mTLS, the pod's certificate), its startup probe a TCP connect (no handshake needed) unless it
    listens on loopback; the gateway's public TLS keeps its HTTPS probes. Every other port gets the
    kubelet's grpc: probes, except a colocated draft's (loopback: probed from inside, in plaintext)."""
    manifests = render(case)
    expected = settings(manifests.values)
    want_tls = {}
    if expected["enabled"]:
        want_tls["--tls-ca"] = f"{MOUNT}/ca.crt"
        if expected["mutual"]:
            want_tls |= {"--tls-cert": f"{MOUNT}/tls.crt", "--tls-key": f"{MOUNT}/tls.key"}
    for workload, container in saguaro_containers(manifests, k8s):
        parsed = parse(k8s.expanded_args(manifests, workload, container))
        where = f"{workload['metadata']['name']}/{container['name']}"
        serves_tls, loopback = bool(parsed.tls_cert), parsed.host == "127.0.0.1"
        if k8s.role_of(container) == "gateway" and serves_tls:
            assert all("httpGet" in container[probe] for probe in PROBES), where
            continue
        if not (serves_tls or loopback):
            assert all(container[probe]["grpc"]["port"] == parsed.port for probe in PROBES), where
            continue
        assert ("exec" if loopback else "tcpSocket") in container["startupProbe"], where
        for probe in PROBES[not loopback:]:
            command = container[probe]["exec"]["command"]
            assert command[2] == "health" and int(command[command.index("--port") + 1]) == parsed.port, where
            flags = {command[i]: command[i + 1] for i in range(3, len(command) - 1) if command[i].startswith("--tls")}
            assert flags == (want_tls if serves_tls else {}), f"{where} {probe}"


@pytest.mark.parametrize("values", [
    {"internalTls": {"enabled": True}},
    {"internalTls": {"enabled": True, "existingSecret": ""}, "pairing": {"mode": "remote"}},
], ids=["enabled-without-secret", "enabled-with-empty-secret-remote"])
def test_inconsistent_internal_tls_values_are_refused(chart, k8s, values, tmp_path):
    """The schema refuses them at install time; the templates refuse them too, with a message
    naming the fix, when the schema is not applied (`helm install --skip-schema-validation`,
    here: the chart copied without values.schema.json)."""
    with pytest.raises(helm_python.HelmValuesError, match="internalTls"):
        chart.render(values, name=k8s.RELEASE, namespace=k8s.NAMESPACE)
    report = helm_python.lint(k8s.CHART, values, strict=True, namespace=k8s.NAMESPACE)
    assert report["errors"], "helm lint must report it"
    unchecked = tmp_path / "saguaro"
    shutil.copytree(k8s.CHART, unchecked)
    (unchecked / "values.schema.json").unlink()
    with helm_python.Chart.load(unchecked) as loaded, pytest.raises(helm_python.HelmRenderError) as refused:
        loaded.render(values, name=k8s.RELEASE, namespace=k8s.NAMESPACE)
    assert "internalTls.enabled needs internalTls.existingSecret" in str(refused.value)
    assert "tls.crt, tls.key and ca.crt" in str(refused.value)


def test_internal_tls_off_ignores_its_other_values(render, k8s):
    """A Secret named while internalTls.enabled is false mounts nothing and adds no flag."""
    manifests = render({"internalTls": {"enabled": False, "existingSecret": "left-over", "mutual": True}})
    for workload in manifests.workloads():
        assert VOLUME not in {v["name"] for v in k8s.pod_spec(workload).get("volumes", [])}
    for workload, container in saguaro_containers(manifests, k8s):
        assert not tls_paths(parse(k8s.expanded_args(manifests, workload, container)))


def test_notes_name_what_the_certificate_must_carry(render, k8s):
    on = render({"internalTls": {"enabled": True, "existingSecret": k8s.INTERNAL_TLS_SECRET}}).notes
    assert "Internal TLS (mutual)" in on and "fast path" in on
    assert f"against the name {k8s.RELEASE}-saguaro-target.{k8s.NAMESPACE}.svc.cluster.local" in on
    named = render({"internalTls": {"enabled": True, "existingSecret": k8s.INTERNAL_TLS_SECRET,
                                    "targetServerName": "targets.internal"}}).notes
    assert "against the name targets.internal" in named
    assert "Internal TLS" not in render({}).notes


# ------------------------------------------------------------------------------------------
# The rendered commands, run for real over mTLS
# ------------------------------------------------------------------------------------------

def make_pki(folder: Path) -> Path:
    """What a cert-manager Certificate's Secret holds (tls.crt, tls.key, ca.crt): one certificate
    for server and client auth, naming 127.0.0.1 and the target Service (as the chart's README
    asks), from a throwaway CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject: str, key, issuer_name, signer, ca: bool):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = (builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("demo-saguaro-draft.llm.svc.cluster.local"),
                 x509.DNSName("demo-saguaro-target.llm.svc.cluster.local"),  # the gateway's --target-tls-server-name
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "saguaro-internal-ca")])
    ca = build("saguaro-internal-ca", ca_key, ca_name, ca_key, ca=True)
    cert = build("saguaro", key, ca_name, ca_key, ca=False)
    folder.mkdir()
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder


def mounted_at(container: dict, folder: Path) -> dict:
    """``container`` as if the Secret were mounted at ``folder``: its args and probe commands
    read the files from there (the kubelet would mount them at MOUNT)."""
    def move(items):
        return [item.replace(MOUNT, str(folder)) if isinstance(item, str) else item for item in items]

    moved = {**container, "args": move(container["args"])}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if "exec" in container.get(probe, {}):
            moved[probe] = {**container[probe], "exec": {"command": move(container[probe]["exec"]["command"])}}
    return moved


def probe_test_helpers():
    """test_probe.py's helpers (run a rendered container as a process, run its probes); loaded by
    path, since tests import in importlib mode."""
    spec = importlib.util.spec_from_file_location("saguaro_helm_probe_helpers",
                                                  Path(__file__).with_name("test_probe.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rendered_pods_serve_over_mtls_on_every_hop(render, k8s, tmp_path):
    """Colocated pairing with internalTls.mutual: draft, target and gateway run from their
    rendered commands with a real certificate where the Secret is mounted; the target's TLS
    health probes pass (a plaintext one does not), the pair talks gRPC over mTLS (not the fast
    path), and a request goes through the gateway, the target and the draft."""
    from saguaro.net import free_port
    from saguaro.tiny_models import build_tiny_model

    helpers = probe_test_helpers()
    Service, cpu_values, passes, run_probe, wait_until = (
        helpers.Service, helpers.cpu_values, helpers.passes, helpers.run_probe, helpers.wait_until)

    model = str(build_tiny_model(tmp_path / "model" / "tiny", family="llama"))
    pki = make_pki(tmp_path / "internal-tls")
    values = cpu_values(model, pairing={"mode": "colocated"}, redis={"mode": "none"},
                        internalTls={"enabled": True, "existingSecret": k8s.INTERNAL_TLS_SECRET, "mutual": True})
    values["gateway"] = {"discovery": "static", "staticTargets": [f"127.0.0.1:{values['target']['port']}"],
                         "grpcPort": free_port(), "httpPort": free_port(), "listenHost": "127.0.0.1"}
    manifests = render(values)
    workload = manifests.workload("target")
    target_spec, draft_spec = (mounted_at(c, pki) for c in k8s.pod_spec(workload)["containers"])
    gateway_workload = manifests.workload("gateway")
    gateway_spec = mounted_at(k8s.pod_spec(gateway_workload)["containers"][0], pki)
    draft = Service(manifests, workload, draft_spec, k8s, tmp_path / "draft.log")
    target = Service(manifests, workload, target_spec, k8s, tmp_path / "target.log")
    gateway = Service(manifests, gateway_workload, gateway_spec, k8s, tmp_path / "gateway.log")
    try:
        draft.wait_listening()
        assert run_probe(draft_spec["readinessProbe"], k8s).returncode == 0
        target.wait_listening()
        assert wait_until(lambda: run_probe(target_spec["readinessProbe"], k8s).returncode == 0), \
            run_probe(target_spec["readinessProbe"], k8s).stderr
        assert run_probe(target_spec["livenessProbe"], k8s).returncode == 0
        strict = mounted_at(helpers.strict_readiness(render, k8s, values), pki)["readinessProbe"]
        assert "saguaro.undegraded" in strict["exec"]["command"]
        assert wait_until(lambda: run_probe(strict, k8s).returncode == 0), \
            "the target never reached SERVING over mTLS to its draft"
        # the same probe without the certificate: the TLS port refuses it
        plain = target_spec["readinessProbe"]["exec"]["command"]
        plain = plain[:plain.index("--tls-ca")]
        assert run_probe({"exec": {"command": plain}}, k8s).returncode != 0
        no_client_cert = target_spec["readinessProbe"]["exec"]["command"]
        no_client_cert = no_client_cert[:no_client_cert.index("--tls-cert")]
        assert run_probe({"exec": {"command": no_client_cert}}, k8s).returncode != 0, \
            "mTLS: a client certificate is required"
        metrics_port = next(p["containerPort"] for p in target_spec["ports"] if p["name"] == "metrics")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            body = response.read().decode()
        # TLS to the draft: the rounds go over the mTLS gRPC stream, never the (unencrypted) fast path
        transports = [line for line in body.splitlines() if line.startswith("saguaro_draft_transport_info")]
        assert transports and all('transport="grpc"' in line for line in transports), transports

        gateway.wait_listening()
        assert wait_until(lambda: passes(gateway_spec, "readinessProbe", k8s)), \
            "the gateway never saw its target healthy over mTLS"
        from saguaro.client import Client

        grpc_port = next(p["containerPort"] for p in gateway_spec["ports"] if p["name"] == "grpc")
        with Client(f"127.0.0.1:{grpc_port}", timeout=60) as client:
            out = client.generate("def add(a, b):", max_tokens=8, ignore_eos=True)
        assert len(out.token_ids) == 8
    finally:
        gateway.stop()
        target.stop()
        draft.stop()


def test_probe_script_refuses_half_a_tls_configuration(k8s):
    script = str(k8s.CHART / "files" / "saguaro-probe.py")
    for extra in (["--tls-cert", "a.crt"], ["--tls-ca", "ca.crt", "--tls-key", "a.key"],
                  ["--tls-cert", "a.crt", "--tls-key", "a.key"]):
        result = subprocess.run([sys.executable, script, "health", "--port", "1", *extra], capture_output=True,
                                text=True, timeout=30, check=False)
        assert result.returncode == 2 and "--tls-" in result.stderr, (extra, result.stderr)
    missing = subprocess.run([sys.executable, script, "health", "--port", "1", "--tls-ca", "/nonexistent/ca.crt"],
                             capture_output=True, text=True, timeout=30, check=False)
    assert missing.returncode == 1 and "/nonexistent/ca.crt" in missing.stderr


def _yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)


def _san_matches(pattern: str, host: str) -> bool:
    """RFC 6125 matching as gRPC does it: a leading "*." covers exactly one label."""
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def test_readme_example_certificate_names_every_dialled_address(chart, k8s):
    """helm/saguaro/README.md "Internal TLS": its values render, and its cert-manager Certificate
    names every address those values make a pod dial (127.0.0.1, the draft pods of remote
    pairing) and the one name the gateway verifies targets against."""
    import yaml

    blocks = [yaml.safe_load(b) for b in _yaml_blocks((k8s.CHART / "README.md").read_text())]
    values = next(b for b in blocks if isinstance(b, dict) and "internalTls" in b)
    certificate = next(b for b in blocks if isinstance(b, dict) and b.get("kind") == "Certificate")
    namespace = certificate["metadata"]["namespace"]
    assert values["internalTls"]["existingSecret"] == certificate["spec"]["secretName"]
    assert {"server auth", "client auth"} <= set(certificate["spec"]["usages"])
    ips = set(certificate["spec"].get("ipAddresses", []))
    dns = certificate["spec"].get("dnsNames", [])
    for pairing in ({}, {"pairing": {"mode": "remote"}, "target": {"replicas": 2}}):
        case = {**values, **pairing}
        manifests = k8s.parse_rendered(chart.render(case, name="saguaro", namespace=namespace), case)
        gateway = manifests.workload("gateway")
        gateway_args = parse(k8s.expanded_args(manifests, gateway, k8s.pod_spec(gateway)["containers"][0]))
        assert gateway_args.target_tls_server_name == f"saguaro-target.{namespace}.svc.cluster.local"
        dialled = {"127.0.0.1", gateway_args.target_tls_server_name}
        target = manifests.workload("target")
        container = k8s.pod_spec(target)["containers"][0]
        for index in range(_get(case, "target", "replicas", default=1)):
            env = {e["name"]: e["value"].replace("$(POD_INDEX)", str(index))
                   for e in container["env"] if e["name"].startswith("SAGUARO_DRAFT_ADDRESS")}
            dialled |= {address.rsplit(":", 1)[0] for address in env.values()}
        for host in dialled:
            assert host in ips or any(_san_matches(pattern, host) for pattern in dns), \
                f"{host} is not in the certificate"
