"""TLS material for the public ports and for the connections to the targets."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from saguaro.errors import ConfigError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


def grpc_server_credentials(cert: str, key: str) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(_read(key, "TLS key"), _read(cert, "TLS certificate"))])


def http_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from None
    return context


def target_channel_credentials(ca: str | None, cert: str | None, key: str | None) -> grpc.ChannelCredentials | None:
    """None: plaintext to the targets. With a CA: TLS; with a certificate and key too: mTLS."""
    if not ca:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "target CA certificate"),
        private_key=_read(key, "gateway client key") if key else None,
        certificate_chain=_read(cert, "gateway client certificate") if cert else None,
    )
