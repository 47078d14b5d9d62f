"""Health probes for Saguaro containers: Kubernetes exec probes and Docker HEALTHCHECK.

    python saguaro-probe.py health --port 50051 [--service NAME | --live]
                                   [--tls-ca ca.crt [--tls-cert tls.crt --tls-key tls.key]]
    python saguaro-probe.py tcp --port 50061
    python saguaro-probe.py http --url http://127.0.0.1:8000/healthz

`health` calls the standard grpc.health.v1.Health/Check on 127.0.0.1 with the stub of
grpcio-health-checking, whose generated modules import only grpc and protobuf: the probe does
not import the saguaro package (which loads torch: seconds of CPU per probe on a GPU node).
Exit status 0 means healthy; otherwise the reason is printed.

The chart uses it only where the kubelet's own `grpc:` probe cannot: a TLS port (the kubelet
neither trusts a private CA nor presents a client certificate) and a colocated draft, which
listens on the pod's loopback. With --tls-ca the call is made over TLS, verifying the server
against that CA; with --tls-cert/--tls-key too it presents that client certificate (mTLS). The
server's certificate must name 127.0.0.1, the address dialled.

Health names (saguaro/standard_services.py): "" (the default) is SERVING while the server takes
requests; "saguaro.undegraded" only while it also is not degraded (a target decoding without its
draft); "saguaro.live" while the process serves at all.

Readiness (default) passes when --service is SERVING. Liveness (--live, the name saguaro.live)
must not fail merely because the server is busy: a RESOURCE_EXHAUSTED answer (every RPC slot
held) still proves the process serves; NOT_SERVING (the engine loop died), a refused connection
or no answer within the timeout fail.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.request

LIVE_SERVICE = "saguaro.live"


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


def check_health(port: int, timeout: float, service: str, live: bool, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if live:
        service = LIVE_SERVICE
    with _channel(f"127.0.0.1:{port}", tls_ca, tls_cert, tls_key) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                               timeout=timeout)
        except grpc.RpcError as exc:
            if live and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return None
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return f"the server reports no health for {service!r}"
            return f"Health check failed: {exc.code().name}"
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return None
    return f"{service or 'the server'}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"


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
    health = sub.add_parser("health", help="grpc.health.v1.Health/Check on 127.0.0.1:PORT")
    health.add_argument("--port", type=int, required=True)
    name = health.add_mutually_exclusive_group()
    name.add_argument("--service", default="", help="the health name that must be SERVING (default: the server)")
    name.add_argument("--live", action="store_true", help=f"liveness: {LIVE_SERVICE}, and busy is alive")
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
        problem = check_health(args.port, args.timeout, args.service, args.live, args.tls_ca, args.tls_cert,
                               args.tls_key)
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
