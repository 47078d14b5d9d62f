"""API keys (file and environment, HTTP and gRPC), the per-key limit on concurrent streams, TLS
on the public ports and mTLS from the gateway to a target, with certificates made here by
`cryptography`."""

from __future__ import annotations

import re
import ssl
import urllib.error
from pathlib import Path

import grpc
import pytest

from saguaro.client import AuthenticationError, Client, ServiceUnavailableError
from saguaro.errors import ConfigError
from saguaro.services.gateway import GatewayConfig
from saguaro.services.gateway.auth import load_api_keys
from tests_support import make_certificate, pem_of, write


@pytest.fixture(scope="module")
def target(model_dirs, module_targets):
    return module_targets(model_dirs["llama"])


# -- API keys ------------------------------------------------------------------------------------
def test_api_keys_come_from_a_file_and_the_environment(tmp_path):
    path = write(tmp_path, "keys", b"# team keys\nkey-one\n\n  key-two  \n")
    assert load_api_keys(path, env={"SAGUARO_API_KEYS": "key-three, key-four,"}) == {
        "key-one", "key-two", "key-three", "key-four"}
    assert load_api_keys(None, env={}) == frozenset()
    with pytest.raises(ConfigError, match="holds no key"):
        load_api_keys(write(tmp_path, "empty", b"# nothing\n"), env={})
    with pytest.raises(ConfigError, match="cannot read the API keys file"):
        load_api_keys(str(tmp_path / "missing"), env={})


def test_api_keys_guard_both_apis_but_not_the_probes(target, start_gateway, http):
    gateway = start_gateway([target.address], api_keys=frozenset({"key-one", "key-two"}))
    body = {"model": "llama", "prompt": [3, 4], "max_tokens": 2}
    url = gateway.http_url + "/v1/completions"
    assert http(url, body).status == 401
    wrong = http(url, body, headers={"Authorization": "Bearer key-three"})
    assert wrong.status == 401 and wrong.json()["error"]["message"] == "invalid API key"
    assert http(url, body, headers={"Authorization": "Basic key-one"}).status == 401
    assert http(url, body, headers={"Authorization": "Bearer key-two"}).status == 200
    assert http(gateway.http_url + "/v1/models").status == 401
    assert http(gateway.http_url + "/v1/models/llama").status == 401
    for path in ("/tokenize", "/detokenize"):
        assert http(gateway.http_url + path, {"prompt": "x", "tokens": [3]}).status == 401
    keyed = http(gateway.http_url + "/tokenize", {"prompt": "x"}, headers={"Authorization": "Bearer key-one"})
    assert keyed.status == 200
    for probe in ("/healthz", "/readyz", "/metrics", "/health", "/version"):
        assert http(gateway.http_url + probe).status == 200

    with Client(gateway.grpc_address) as anonymous:
        with pytest.raises(AuthenticationError, match="missing API key"):
            anonymous.generate([3, 4], max_tokens=2)
        assert anonymous.health().status == "serving"  # probes need no key
    with Client(gateway.grpc_address, api_key="key-one") as client:
        assert client.generate([3, 4], max_tokens=2).finish_reason == "length"
        assert client.model_info().model_name == "llama"


# -- TLS on the public ports -----------------------------------------------------------------------
def test_tls_on_the_public_grpc_and_http_ports(target, start_gateway, http, tmp_path):
    cert, key = make_certificate("gateway")
    pem = pem_of(cert, key)
    gateway = start_gateway([target.address], tls_cert=write(tmp_path, "gw.crt", pem.cert),
                            tls_key=write(tmp_path, "gw.key", pem.key))
    assert gateway.http_url.startswith("https://")
    with Client(gateway.grpc_address, root_certificates=pem.cert) as client:
        assert client.generate([3, 4], max_tokens=2).finish_reason == "length"
    with Client(gateway.grpc_address, timeout=5, retries=0) as plaintext:
        with pytest.raises(ServiceUnavailableError):
            plaintext.generate([3, 4], max_tokens=2)
    context = ssl.create_default_context(cadata=pem.cert.decode())
    reply = http(gateway.http_url + "/v1/completions", {"model": "llama", "prompt": [3, 4], "max_tokens": 2},
                 context=context)
    assert reply.status == 200 and reply.json()["usage"]["completion_tokens"] == 2
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        http(gateway.http_url + "/healthz", context=ssl.create_default_context())  # not a trusted certificate


# -- mTLS from the gateway to a target ----------------------------------------------------------------
@pytest.fixture
def mtls_target(model_dirs, wired_target):
    """A target whose port requires a client certificate signed by its CA."""
    ca = make_certificate("saguaro-ca", ca=True)
    server_pem = pem_of(*make_certificate("target", issuer=ca))
    credentials = grpc.ssl_server_credentials([(server_pem.key, server_pem.cert)],
                                              root_certificates=pem_of(*ca).cert, require_client_auth=True)
    address, _ = wired_target(model_dirs["llama"], credentials=credentials)
    return address, ca


def test_mtls_from_the_gateway_to_a_target(mtls_target, start_gateway, tmp_path):
    address, ca = mtls_target
    ca_pem = pem_of(*ca)
    client_pem = pem_of(*make_certificate("gateway", issuer=ca, client=True))
    gateway = start_gateway([address], target_tls_ca=write(tmp_path, "ca.crt", ca_pem.cert),
                            target_tls_cert=write(tmp_path, "gw.crt", client_pem.cert),
                            target_tls_key=write(tmp_path, "gw.key", client_pem.key))
    with Client(gateway.grpc_address) as client:
        out = client.generate("def add(a, b):", max_tokens=3)
    assert out.finish_reason == "length" and len(out.token_ids) == 3

    # Without the client certificate the target refuses the gateway: never healthy, so no traffic.
    refused = start_gateway([address], wait=False, target_tls_ca=write(tmp_path, "ca2.crt", ca_pem.cert))
    with Client(refused.grpc_address, timeout=10, retries=0) as client:
        with pytest.raises(ServiceUnavailableError, match="no healthy target"):
            client.generate([3, 4], max_tokens=2)


def test_target_certificates_can_name_a_service_instead_of_the_dialled_address(model_dirs, wired_target,
                                                                                start_gateway, tmp_path):
    """Kubernetes discovery dials pod IPs; one shared certificate names the Service instead, and
    ``--target-tls-server-name`` verifies targets against that name."""
    ca = make_certificate("saguaro-ca", ca=True)
    server_pem = pem_of(*make_certificate("target", issuer=ca, dns_names=("saguaro-target.internal",)))
    address, _ = wired_target(model_dirs["llama"],
                              credentials=grpc.ssl_server_credentials([(server_pem.key, server_pem.cert)]))
    ca_file = write(tmp_path, "ca.crt", pem_of(*ca).cert)
    gateway = start_gateway([address], target_tls_ca=ca_file, target_tls_server_name="saguaro-target.internal")
    with Client(gateway.grpc_address) as client:
        assert client.generate([3, 4], max_tokens=2).finish_reason == "length"

    # Verified against the dialled 127.0.0.1, the certificate does not match: never healthy.
    mismatched = start_gateway([address], wait=False, target_tls_ca=ca_file)
    with Client(mismatched.grpc_address, timeout=10, retries=0) as client:
        with pytest.raises(ServiceUnavailableError, match="no healthy target"):
            client.generate([3, 4], max_tokens=2)


# -- concurrent streams per API key ----------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_target(model_dirs, module_targets):
    """Every forward takes 0.3 s (emulated accelerator): a long stream stays open while we look."""
    return module_targets(model_dirs["llama"], emulate_forward_s=0.3)


def test_concurrent_streams_are_limited_per_api_key(slow_target, start_gateway, http, wait_until):
    gateway = start_gateway([slow_target.address], api_keys=frozenset({"alice", "bob"}), max_streams_per_key=1)
    url, body = gateway.http_url + "/v1/completions", {"model": "llama", "prompt": [3, 4], "max_tokens": 1}
    with Client(gateway.grpc_address, api_key="alice", retries=0) as alice:
        stream = alice.stream([8, 9, 10], max_tokens=500, ignore_eos=True)
        for _ in stream:  # alice's one stream is open (its first token arrived)
            with pytest.raises(ServiceUnavailableError) as error:
                alice.generate([3, 4], max_tokens=1)
            assert error.value.code == "RESOURCE_EXHAUSTED" and error.value.retry_after == 1
            refused = http(url, body, headers={"Authorization": "Bearer alice"})
            assert refused.status == 429 and refused.headers["retry-after"] == "1"
            assert "--max-streams-per-key 1" in refused.json()["error"]["message"]
            assert http(url, body, headers={"Authorization": "Bearer bob"}).status == 200  # other keys unaffected
            stream.cancel()
        wait_until(lambda: gateway.call(lambda: gateway.gateway.streams.open) == {},
                   what="alice's cancelled stream to be given back")
        assert alice.generate([3, 4], max_tokens=1).finish_reason == "length"  # room again
    batch = http(url, {**body, "prompt": [[3, 4], [5, 6]]}, headers={"Authorization": "Bearer bob"})
    assert batch.status == 400 and batch.json()["error"]["param"] == "prompt"  # more prompts than the limit


def test_one_api_key_can_neither_abort_nor_detect_another_keys_requests(slow_target, start_gateway, wait_until):
    """Request ids live in each key's own namespace: bob's Abort of alice's live id finds
    nothing and leaves her stream running, bob may use the same id himself (no "already used"
    that would reveal hers), and alice's own Abort ends her stream; answers carry the id the
    client gave."""
    gateway = start_gateway([slow_target.address], api_keys=frozenset({"alice", "bob"}))
    with Client(gateway.grpc_address, api_key="alice", retries=0) as alice, \
            Client(gateway.grpc_address, api_key="bob", retries=0) as bob:
        stream = alice.stream([8, 9, 10], max_tokens=500, ignore_eos=True, request_id="shared-id")
        deltas = iter(stream)
        first = next(deltas)
        assert first.request_id == "shared-id"
        assert bob.abort("shared-id") is False
        out = bob.generate([3, 4], max_tokens=1, request_id="shared-id")  # same id, bob's namespace
        assert out.request_id == "shared-id" and out.finish_reason == "length"
        assert next(deltas).request_id == "shared-id"  # alice's stream is still running
        assert alice.abort("shared-id") is True
        for _ in deltas:
            pass
        assert stream.result.finish_reason == "abort"
    wait_until(lambda: gateway.call(lambda: gateway.gateway.dispatcher.live) == {}, what="no live request left")


def test_the_stream_limit_needs_api_keys():
    with pytest.raises(ConfigError, match="--max-streams-per-key counts streams per API key"):
        GatewayConfig(targets=["127.0.0.1:1"], max_streams_per_key=2).validate()


def test_a_target_server_name_needs_tls_to_the_targets():
    with pytest.raises(ConfigError, match="--target-tls-server-name .* needs TLS to the targets"):
        GatewayConfig(targets=["127.0.0.1:1"], target_tls_server_name="saguaro-target").validate()


def test_every_test_docs_security_names_exists():
    """docs/security.md proves each claim with a pytest node id: each must name a real test."""
    root = Path(__file__).resolve().parents[3]
    named = set(re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", (root / "docs" / "security.md").read_text()))
    assert len(named) > 20
    for path, name in named:
        source = (root / path).read_text()
        assert not name or re.search(rf"^def {name}\(", source, re.M), f"docs/security.md names {path}::{name}"
