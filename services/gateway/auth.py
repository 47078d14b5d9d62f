"""Optional API keys: ``Authorization: Bearer <key>`` (HTTP header or gRPC metadata).

Keys come from a file (one per line; blank lines and ``#`` comments ignored) and/or the
``SAGUARO_API_KEYS`` environment variable (comma-separated). No keys: no authentication.
Comparison is constant-time (``hmac.compare_digest``) against every key, so neither timing nor
the position of the matching key leaks.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

import grpc

from saguaro.errors import ConfigError
from saguaro.services.gateway.errors import GatewayError

ENV_VAR = "SAGUARO_API_KEYS"


def load_api_keys(path: str | None, env: Mapping[str, str] = os.environ) -> frozenset[str]:
    keys: set[str] = set()
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the API keys file {path}: {exc.strerror}") from None
        keys.update(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
        if not keys:
            raise ConfigError(f"the API keys file {path} holds no key")
    keys.update(k.strip() for k in env.get(ENV_VAR, "").split(",") if k.strip())
    return frozenset(keys)


class ApiKeys:
    def __init__(self, keys: frozenset[str]):
        self._keys = [k.encode() for k in sorted(keys)]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> str | None:
        """Raise UNAUTHENTICATED unless ``authorization`` is ``Bearer <a configured key>``; return
        that key (per-key limits count against it), or None when no keys are configured."""
        if not self._keys:
            return None
        if not authorization:
            raise GatewayError(grpc.StatusCode.UNAUTHENTICATED,
                               "missing API key: send the header 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        presented = token.strip().encode()
        matched: bytes | None = None
        for key in self._keys:  # every key is compared, whichever matches
            if hmac.compare_digest(presented, key):
                matched = key
        if scheme.lower() != "bearer" or matched is None:
            raise GatewayError(grpc.StatusCode.UNAUTHENTICATED, "invalid API key")
        return matched.decode()
