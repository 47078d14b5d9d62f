"""Health probes for Saguaro containers: Kubernetes exec probes and Docker HEALTHCHECK.

    python saguaro-probe.py health --port 50051 [--ready-statuses 1,2] [--live]
                                   [--tls-ca ca.crt [--tls-cert tls.crt --tls-key tls.key]]
    python saguaro-probe.py tcp --port 50061
    python saguaro-probe.py http --url http://127.0.0.1:8000/healthz

`health` calls saguaro.v1.Inference/Health on 127.0.0.1. It needs only the standard library and
grpcio and builds the empty HealthRequest and reads HealthResponse.status (field 1, a varint)
from the wire bytes, so it does not import the saguaro package (which loads torch: seconds of
CPU per probe on a GPU node). Exit status 0 means healthy; otherwise the reason is printed.

With --tls-ca the call is made over TLS, verifying the server against that CA (a TLS port
refuses plaintext, and the kubelet's own gRPC probe cannot present a client certificate); with
--tls-cert/--tls-key too it presents that client certificate (mTLS). The server's certificate
must name 127.0.0.1, the address dialled.

ServingStatus: 0 UNSPECIFIED, 1 SERVING, 2 DEGRADED (decoding without the draft), 3 NOT_SERVING.

Readiness (default) passes on --ready-statuses. Liveness (--live) must not fail merely because
the server is busy: a RESOURCE_EXHAUSTED answer (every RPC slot held by streams) still proves the
process serves; NOT_SERVING (the engine loop died), a refused connection or no answer within the
timeout fail.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.request

HEALTH_METHOD = "/saguaro.v1.Inference/Health"
STATUS_NAMES = {0: "UNSPECIFIED", 1: "SERVING", 2: "DEGRADED", 3: "NOT_SERVING"}


def read_status(reply: bytes) -> int:
    """HealthResponse.status from its serialised bytes (0 when the field is absent)."""
    pos = 0
    while pos < len(reply):
        key, pos = _varint(reply, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(reply, pos)
            if field == 1:
                return value
        elif wire_type == 2:
            length, pos = _varint(reply, pos)
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire_type}")
    return 0


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise SystemExit(f"cannot read the {what} {path}: {exc.strerror}") from None


def _channel(address: str, tls_ca: str | None, tls_cert: str | None, tls_key: str | None):
    import grpc

    if not tls_ca:
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(tls_ca, "CA certificate"),
        private_key=_read(tls_key, "client key") if tls_key else None,
        certificate_chain=_read(tls_cert, "client certificate") if tls_cert else None)
    return grpc.secure_channel(address, credentials)


def check_health(port: int, timeout: float, ready_statuses: set[int], live: bool, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> str | None:
    import grpc

    with _channel(f"127.0.0.1:{port}", tls_ca, tls_cert, tls_key) as channel:
        try:
            reply = channel.unary_unary(HEALTH_METHOD)(b"", timeout=timeout)
        except grpc.RpcError as exc:
            if live and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return None
            return f"Health RPC failed: {exc.code().name}"
    status = read_status(reply)
    accepted = {1, 2} if live else ready_statuses
    if status in accepted:
        return None
    return f"status {STATUS_NAMES.get(status, status)}"


def check_tcp(port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return None
    except OSError as exc:
        return f"port {port}: {exc}"


def check_http(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (local probe URL)
            return None if 200 <= response.status < 400 else f"HTTP {response.status}"
    except OSError as exc:
        return f"{url}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="check", required=True)
    health = sub.add_parser("health", help="saguaro.v1.Inference/Health on 127.0.0.1:PORT")
    health.add_argument("--port", type=int, required=True)
    health.add_argument("--ready-statuses", default="1,2", help="comma-separated ServingStatus numbers that pass")
    health.add_argument("--live", action="store_true", help="liveness semantics (busy is alive)")
    health.add_argument("--tls-ca", default=None, metavar="PEM",
                        help="call over TLS, verifying the server against this CA")
    health.add_argument("--tls-cert", default=None, metavar="PEM", help="mTLS: client certificate (with --tls-key)")
    health.add_argument("--tls-key", default=None, metavar="PEM", help="mTLS: client key")
    tcp = sub.add_parser("tcp", help="a TCP connect to 127.0.0.1:PORT")
    tcp.add_argument("--port", type=int, required=True)
    http = sub.add_parser("http", help="an HTTP GET answered 2xx/3xx")
    http.add_argument("--url", required=True)
    for command in (health, tcp, http):
        command.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.check == "health":
        if bool(args.tls_cert) != bool(args.tls_key):
            parser.error("--tls-cert and --tls-key go together")
        if args.tls_cert and not args.tls_ca:
            parser.error("--tls-cert needs --tls-ca (the CA that signed the server's certificate)")
        statuses = {int(s) for s in args.ready_statuses.split(",") if s.strip()}
        problem = check_health(args.port, args.timeout, statuses, args.live, args.tls_ca, args.tls_cert, args.tls_key)
    elif args.check == "tcp":
        problem = check_tcp(args.port, args.timeout)
    else:
        problem = check_http(args.url, args.timeout)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
