"""TLS and mTLS on every internal hop, with real processes and certificates made here:

    client --TLS--> gateway --mTLS--> `saguaro target` --mTLS--> `saguaro draft`

The target and draft processes get only the command-line flags (`--tls-cert/--tls-key/
--tls-client-ca`, `--draft-tls-ca/--draft-tls-cert/--draft-tls-key`); each server refuses a peer
without a certificate signed by the deployment's CA, and a TLS draft link never falls back to
the unencrypted torch.distributed fast path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from saguaro.cli import main
from saguaro.client import Client, ServiceUnavailableError
from saguaro.errors import ConfigError
from saguaro.net import free_port
from saguaro.services.gateway import GatewayConfig, GatewayThread
from saguaro.tls import check_channel_flags, check_server_flags
from saguaro.v1 import speculation_pb2 as spb
from saguaro.v1 import speculation_pb2_grpc as spb_grpc
from tests_support import make_certificate, pem_of, write

pytestmark = pytest.mark.slow  # a TLS stack of child processes on every hop

SMALL_ARGS = ["--kv-cache-bytes", str(16 << 20), "--max-num-seqs", "8", "--metrics-port", "0"]


@dataclass
class Pki:
    """PEM files of one deployment's CA and its certificates, plus a stranger's."""

    ca: str
    files: dict[str, tuple[str, str]]  # name -> (certificate, key)
    rogue: tuple[str, str]  # a client certificate from another CA

    def cert(self, name: str) -> str:
        return self.files[name][0]

    def key(self, name: str) -> str:
        return self.files[name][1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = make_certificate("saguaro-ca", ca=True)
    files = {}
    for name, client in (("draft", False), ("target", False), ("target-client", True), ("gateway", False),
                         ("gateway-client", True), ("operator", True)):
        pem = pem_of(*make_certificate(name, issuer=ca, client=client))
        files[name] = (write(root, f"{name}.crt", pem.cert), write(root, f"{name}.key", pem.key))
    rogue = pem_of(*make_certificate("rogue", issuer=make_certificate("rogue-ca", ca=True), client=True))
    return Pki(write(root, "ca.crt", pem_of(*ca).cert), files,
               (write(root, "rogue.crt", rogue.cert), write(root, "rogue.key", rogue.key)))


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "saguaro.cli", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))


@dataclass
class TlsStack:
    target: str
    draft: str


@pytest.fixture(scope="module")
def stack(model_dirs, pki, tmp_path_factory):
    """`saguaro draft` and `saguaro target` with mTLS on both ports and on the link between them."""
    logs = tmp_path_factory.mktemp("tls-stack")
    draft_port, target_port = free_port(), free_port()
    draft = _spawn(["draft", "--model", model_dirs["llama_draft_perturbed"], "--port", str(draft_port), *SMALL_ARGS,
                    "--tls-cert", pki.cert("draft"), "--tls-key", pki.key("draft"), "--tls-client-ca", pki.ca],
                   logs / "draft.log")
    target = _spawn(["target", "--model", model_dirs["llama"], "--mode", "ssd", "--port", str(target_port),
                     "--draft-address", f"127.0.0.1:{draft_port}", "--wait-for-draft", "120", *SMALL_ARGS,
                     "--tls-cert", pki.cert("target"), "--tls-key", pki.key("target"), "--tls-client-ca", pki.ca,
                     "--draft-tls-ca", pki.ca, "--draft-tls-cert", pki.cert("target-client"),
                     "--draft-tls-key", pki.key("target-client")], logs / "target.log")
    address = f"127.0.0.1:{target_port}"
    try:
        with Client(address, timeout=10, retries=0, root_certificates=Path(pki.ca).read_bytes(),
                    client_certificate=Path(pki.cert("operator")).read_bytes(),
                    client_key=Path(pki.key("operator")).read_bytes()) as client:
            deadline = time.monotonic() + 240
            while True:
                assert target.poll() is None and draft.poll() is None, f"a service exited; see {logs}"
                try:
                    if client.health().draft_connected:
                        break
                except ServiceUnavailableError:
                    pass
                assert time.monotonic() < deadline, f"the target never connected to its draft over mTLS; see {logs}"
                time.sleep(0.2)
        yield TlsStack(address, f"127.0.0.1:{draft_port}")
    finally:
        for proc in (target, draft):
            proc.terminate()
        for proc in (target, draft):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_tls_on_every_hop(stack, pki):
    gateway = GatewayThread(GatewayConfig(
        targets=[stack.target], host="127.0.0.1", port=0, http_port=None, health_interval_s=0.1,
        tls_cert=pki.cert("gateway"), tls_key=pki.key("gateway"), target_tls_ca=pki.ca,
        target_tls_cert=pki.cert("gateway-client"), target_tls_key=pki.key("gateway-client"))).start()
    try:
        gateway.wait_ready()
        with Client(gateway.grpc_address, root_certificates=Path(pki.ca).read_bytes()) as client:
            out = client.generate([11, 42, 7, 300, 5, 18], max_tokens=12, ignore_eos=True)
    finally:
        gateway.stop()
    assert out.finish_reason == "length" and len(out.token_ids) == 12
    assert out.stats["mode"] == "ssd"
    assert out.stats["transport"] == "grpc"  # TLS to the draft: never the unencrypted fast path


def test_the_target_refuses_clients_without_a_trusted_certificate(stack, pki):
    ca = Path(pki.ca).read_bytes()
    strangers = [dict(root_certificates=ca),  # TLS, but no client certificate
                 dict(root_certificates=ca, client_certificate=Path(pki.rogue[0]).read_bytes(),
                      client_key=Path(pki.rogue[1]).read_bytes()),  # signed by another CA
                 {}]  # plaintext
    for credentials in strangers:
        with Client(stack.target, timeout=5, retries=0, **credentials) as client:
            with pytest.raises(ServiceUnavailableError):
                client.generate([3, 4], max_tokens=2)


def test_the_draft_refuses_clients_without_a_trusted_certificate(stack, pki):
    ca = Path(pki.ca).read_bytes()
    channels = [grpc.insecure_channel(stack.draft),
                grpc.secure_channel(stack.draft, grpc.ssl_channel_credentials(ca)),
                grpc.secure_channel(stack.draft, grpc.ssl_channel_credentials(
                    ca, Path(pki.rogue[1]).read_bytes(), Path(pki.rogue[0]).read_bytes()))]
    for channel in channels:
        with channel:
            with pytest.raises(grpc.RpcError) as refused:
                spb_grpc.SpeculationStub(channel).Handshake(spb.HandshakeRequest(), timeout=5)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def test_half_a_tls_configuration_is_refused_before_anything_loads(tmp_path, capsys):
    with pytest.raises(ConfigError, match="TLS needs both --tls-cert and --tls-key"):
        check_server_flags("a.crt", None)
    with pytest.raises(ConfigError, match="--tls-client-ca .* needs --tls-cert and --tls-key"):
        check_server_flags(None, None, "ca.crt")
    with pytest.raises(ConfigError, match="mTLS to the draft needs --draft-tls-ca"):
        check_channel_flags(None, "c.crt", "c.key", "--draft-tls", "draft")
    # The command line checks them before loading the model (a missing model folder is never reached).
    missing = str(tmp_path / "no-model")
    assert main(["target", "--model", missing, "--mode", "ar", "--draft-tls-cert", "c.crt"]) == 2
    assert "mTLS to the draft needs both --draft-tls-cert and --draft-tls-key" in capsys.readouterr().err
    assert main(["draft", "--model", missing, "--tls-key", "k.pem"]) == 2
    assert "TLS needs both --tls-cert and --tls-key" in capsys.readouterr().err
