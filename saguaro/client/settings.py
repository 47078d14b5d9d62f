"""What the sync and async clients share: their options, address, credentials, deadlines and
retry policy.

One base class and one settings object for both, so the two clients cannot differ in the options
they take, how they authenticate, which trace context they send, or when they retry.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import grpc

from saguaro.client.errors import retry_after
from saguaro.v1 import inference_pb2_grpc as pb_grpc

# Before the first token, these mean "not served": sending the request again is safe.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
# After it, this means the connection to the server was lost: the stream may be resumed.
RESUMABLE = (grpc.StatusCode.UNAVAILABLE,)


def _read_pem(value: bytes | str | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _trace_context() -> list[tuple[str, str]]:
    """``traceparent`` / ``tracestate`` of the current OpenTelemetry context (none without it)."""
    try:
        from opentelemetry import propagate
    except ImportError:
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` instant; None: no deadline)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _channel_credentials(tls: bool, root_certificates: bytes | str | None, client_certificate: bytes | str | None,
                         client_key: bytes | str | None) -> grpc.ChannelCredentials | None:
    """TLS credentials for the client's TLS options (None: plaintext)."""
    if tls or root_certificates or client_certificate:
        return grpc.ssl_channel_credentials(_read_pem(root_certificates), _read_pem(client_key),
                                            _read_pem(client_certificate))
    return None


@dataclass
class ClientSettings:
    """A client's connection options and retry policy (see ``Client``)."""

    address: str
    timeout: float | None
    call_timeout: float
    api_key: str | None
    retries: int
    retry_backoff_s: float
    max_retry_delay_s: float
    resumes: int

    def metadata(self) -> list[tuple[str, str]]:
        out = [("authorization", f"Bearer {self.api_key}")] if self.api_key else []
        return out + _trace_context()

    def retry_delay(self, exc: grpc.RpcError, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None: do not retry."""
        if exc.code() not in RETRYABLE or attempt > self.retries:
            return None
        delay = self.retry_backoff_s * 2 ** (attempt - 1)
        hint = retry_after(exc)
        if hint is not None:
            delay = max(delay, hint)
        delay = min(delay, self.max_retry_delay_s)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay


class ClientBase(ABC):
    """What ``Client`` and ``AsyncClient`` share: their options (documented on ``Client``), the
    settings built from them and the channel's stub. Each subclass opens its own kind of channel
    (blocking or asyncio)."""

    def __init__(self, address: str, timeout: float | None = 600.0, call_timeout: float = 10.0, *,
                 api_key: str | None = None, tls: bool = False, root_certificates: bytes | str | None = None,
                 client_certificate: bytes | str | None = None, client_key: bytes | str | None = None,
                 retries: int = 2, retry_backoff_s: float = 0.1, max_retry_delay_s: float = 5.0, resumes: int = 2):
        self._settings = ClientSettings(address, timeout, call_timeout, api_key, retries, retry_backoff_s,
                                        max_retry_delay_s, resumes)
        self.address = address
        self.timeout = timeout
        self.call_timeout = call_timeout
        credentials = _channel_credentials(tls, root_certificates, client_certificate, client_key)
        self._channel = self._open_channel(address, credentials)
        self._stub = pb_grpc.InferenceStub(self._channel)

    @staticmethod
    @abstractmethod
    def _open_channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel | grpc.aio.Channel:
        """A channel to ``address``: TLS with ``credentials``, plaintext without them."""
