"""One error type for both fronts: a gRPC status and the HTTP answer it becomes."""

from __future__ import annotations

import grpc

_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
}


class GatewayError(Exception):
    """A request the gateway answers with an error before any token was sent.

    ``param`` names the offending request field (OpenAI's ``error.param``); ``retry_after``
    (seconds) goes out as ``Retry-After`` / ``retry-after`` metadata.
    """

    def __init__(self, code: grpc.StatusCode, message: str, param: str | None = None,
                 retry_after: int | None = None, http_status: int | None = None):
        """``http_status``: the HTTP answer when it is not the code's usual one (415 for a body
        that is not declared JSON, which gRPC has no code for)."""
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self._http_status = http_status

    @property
    def http_status(self) -> int:
        return self._http_status or _HTTP.get(self.code, (500, "server_error"))[0]

    def openai_body(self) -> dict:
        kind = _HTTP.get(self.code, (500, "server_error"))[1]
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code.name.lower()}}


def invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message, param)
