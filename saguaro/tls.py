"""TLS material for every hop: the gateway's public ports, gateway -> target, target -> draft.

One set of helpers so every server and client reads PEM files, checks its flags and reports a
missing file the same way (docs/security.md). A server given a client CA requires every client
to present a certificate signed by it (mTLS).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from saguaro.errors import ConfigError


def read_pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


def check_server_flags(cert: str | None, key: str | None, client_ca: str | None = None, flag: str = "--tls") -> None:
    """Refuse half a configuration (``flag``: the flags' common prefix, for the message)."""
    if bool(cert) != bool(key):
        raise ConfigError(f"TLS needs both {flag}-cert and {flag}-key")
    if client_ca and not cert:
        raise ConfigError(f"{flag}-client-ca (mTLS: require client certificates) needs {flag}-cert and {flag}-key too")


def check_channel_flags(ca: str | None, cert: str | None, key: str | None, flag: str, peer: str) -> None:
    """Refuse half a client configuration (``peer``: "targets", "draft", for the message)."""
    if bool(cert) != bool(key):
        raise ConfigError(f"mTLS to the {peer} needs both {flag}-cert and {flag}-key")
    if cert and not ca:
        raise ConfigError(f"mTLS to the {peer} needs {flag}-ca (the CA that signed the {peer} certificate)")


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS with this certificate; with ``client_ca``, mTLS: clients without a certificate signed
    by it are refused during the handshake."""
    return grpc.ssl_server_credentials(
        [(read_pem(key, "TLS key"), read_pem(cert, "TLS certificate"))],
        root_certificates=read_pem(client_ca, "client CA certificate") if client_ca else None,
        require_client_auth=bool(client_ca))


def channel_credentials(ca: str | None, cert: str | None, key: str | None,
                        peer: str) -> grpc.ChannelCredentials | None:
    """None: plaintext to ``peer``. With a CA: TLS verifying the peer; with a certificate and key
    too: mTLS (this process presents its client certificate)."""
    if not ca:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, f"{peer} CA certificate"),
        private_key=read_pem(key, "client key") if key else None,
        certificate_chain=read_pem(cert, "client certificate") if cert else None,
    )


def http_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from None
    return context
