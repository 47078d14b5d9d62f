"""API keys (file and environment, HTTP and gRPC), TLS on the public ports and mTLS from the
gateway to a target, with certificates made here by `cryptography`."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import urllib.error
from dataclasses import dataclass

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from saguaro.client import AuthenticationError, Client, ServiceUnavailableError
from saguaro.errors import ConfigError
from saguaro.services.gateway.auth import load_api_keys


@dataclass
class Pem:
    cert: bytes
    key: bytes


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem(cert: x509.Certificate, key) -> Pem:
    return Pem(cert.public_bytes(serialization.Encoding.PEM),
               key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()))


def make_certificate(name: str, issuer: tuple[x509.Certificate, object] | None = None, ca: bool = False,
                     client: bool = False) -> tuple[x509.Certificate, object]:
    """A certificate for ``name`` valid for 127.0.0.1 and localhost; self-signed without ``issuer``."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


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
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert http(gateway.http_url + probe).status == 200

    with Client(gateway.grpc_address) as anonymous:
        with pytest.raises(AuthenticationError, match="missing API key"):
            anonymous.generate([3, 4], max_tokens=2)
        assert anonymous.health()["status"] == "serving"  # probes need no key
    with Client(gateway.grpc_address, api_key="key-one") as client:
        assert client.generate([3, 4], max_tokens=2).finish_reason == "length"
        assert client.model_info()["model_name"] == "llama"


# -- TLS on the public ports -----------------------------------------------------------------------
def test_tls_on_the_public_grpc_and_http_ports(target, start_gateway, http, tmp_path):
    cert, key = make_certificate("gateway")
    pem = _pem(cert, key)
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
    server_pem = _pem(*make_certificate("target", issuer=ca))
    credentials = grpc.ssl_server_credentials([(server_pem.key, server_pem.cert)],
                                              root_certificates=_pem(*ca).cert, require_client_auth=True)
    address, _ = wired_target(model_dirs["llama"], credentials=credentials)
    return address, ca


def test_mtls_from_the_gateway_to_a_target(mtls_target, start_gateway, tmp_path):
    address, ca = mtls_target
    ca_pem = _pem(*ca)
    client_pem = _pem(*make_certificate("gateway", issuer=ca, client=True))
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
