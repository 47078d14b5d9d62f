"""What a failed call raises: one ``ServiceError`` subclass per way a caller can react.

gRPC reports failures as ``grpc.RpcError`` with a status code; the SDK turns them into errors
whose message names the server and says what happened, so that callers catch by meaning
(refused, unreachable, unauthenticated) rather than by status code.
"""

from __future__ import annotations

import grpc

from saguaro.errors import InvalidRequestError, SaguaroError


class ServiceError(SaguaroError):
    """A call to a Saguaro service failed; ``code`` is the gRPC status name and ``retry_after``
    the seconds the server asked to wait before retrying (None when it did not say)."""

    def __init__(self, message: str, code: str = "UNKNOWN", retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class InvalidArgumentError(ServiceError, InvalidRequestError):
    """The server refused the request (INVALID_ARGUMENT): the message says why."""


class ServiceUnavailableError(ServiceError):
    """The service cannot be reached, is overloaded, or did not answer in time."""


class AuthenticationError(ServiceError):
    """The server wants a (different) API key (UNAUTHENTICATED)."""


def retry_after(exc: grpc.RpcError) -> float | None:
    """The seconds the server's ``retry-after`` trailer asks to wait (None: it did not say)."""
    try:
        trailers = exc.trailing_metadata() or ()
    except Exception:  # not a call error (no trailers)
        return None
    for key, value in trailers:
        if key == "retry-after":
            try:
                return float(value)
            except ValueError:
                return None
    return None


def service_error(exc: grpc.RpcError, address: str, timeout: float | None) -> ServiceError:
    """The ``ServiceError`` for a failed call to ``address`` (``timeout``: its deadline, named
    when it ran out)."""
    code, details = exc.code(), exc.details() or ""
    hint = retry_after(exc)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(details, code.name)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(f"{address} refused the credentials: {details}", code.name)
    if code is grpc.StatusCode.UNAVAILABLE:
        return ServiceUnavailableError(f"cannot reach the Saguaro service at {address}: {details}", code.name, hint)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServiceUnavailableError(f"no complete answer from {address} within {timeout} s", code.name)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ServiceUnavailableError(f"the service at {address} is overloaded: {details}", code.name, hint)
    return ServiceError(f"{code.name} from {address}: {details}", code.name)
