"""What the gateway costs: added latency and CPU per request and per streamed token, and the
requests/s it sustains on one core, against calling the target directly.

One ``saguaro target`` (AR, tiny random Llama: forwards of about a millisecond, so the gateway
is not hidden behind model time) and one ``saguaro gateway`` (prefix policy, in-process index,
or Redis with ``--redis``) run as separate processes, each pinned to one core with one thread;
this process is the client. Direct and gateway requests alternate, so drift hits both alike.

* per request: non-streaming requests for 1 token; added p50 / p99 latency (gRPC SDK, and the
  OpenAI HTTP API vs the same request over gRPC to the target);
* per streamed token: requests for ``--stream-tokens`` tokens, one message (or SSE chunk) per
  token; (added latency to the last token - added latency per request) / tokens, and the
  gateway's CPU time per forwarded token (from /proc, the cost that bounds its throughput);
* requests/s: ``--concurrency`` asyncio clients for ``--seconds``, 1-token requests, through the
  gateway; with the gateway's CPU use, and the capacity its CPU time per request implies;
* baseline: the same measurements through a bare ``grpc.aio`` pass-through proxy (bytes in,
  bytes out, no routing, no parsing) on the gateway's core — the floor any Python gRPC hop costs,
  so the gateway's own share is the difference.

    python bench/gateway_overhead.py                  # ~1 minute
    python bench/gateway_overhead.py --redis          # prefix index in a local redis-server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common import markdown_table, pin_threads
from saguaro.net import free_port

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Service:
    """A ``saguaro`` child process pinned to one core, ready once it prints its listening line."""

    def __init__(self, args: list[str], core: int | None, log: Path):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.log = open(log, "w")
        prefix = ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "saguaro.cli", *args], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        wait_listening(self.proc, log)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


class BareProxy:
    """``--bare-proxy PORT TARGET`` (run by this script as a child): forwards Generate as bytes."""

    @staticmethod
    async def serve(port: int, target: str) -> None:
        import grpc

        channel = grpc.aio.insecure_channel(target)
        upstream = channel.unary_stream("/saguaro.v1.Inference/Generate")

        async def generate(request: bytes, context):
            async for message in upstream(request):
                yield message

        handler = grpc.method_handlers_generic_handler(
            "saguaro.v1.Inference", {"Generate": grpc.unary_stream_rpc_method_handler(generate)})
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(f"bare proxy listening on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    def __init__(self, port: int, target: str, core: int | None, log: Path):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.log = open(log, "w")
        prefix = ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []
        self.proc = subprocess.Popen([*prefix, sys.executable, __file__, "--bare-proxy", str(port), target],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_listening(self.proc, log)

    stop = lambda self: Service.stop(self)  # noqa: E731


def wait_listening(proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while " listening on " not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"a service did not start; see {log}")
        time.sleep(0.1)


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def http_completion(url: str, prompt: list[int], max_tokens: int, stream: bool) -> None:
    body = json.dumps({"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": stream}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        for _ in response:  # every SSE line (or the JSON body)
            pass


def alternate(direct, via_gateway, count: int) -> tuple[list[float], list[float]]:
    a, b = [], []
    for _ in range(count):
        a.append(timed(direct))
        b.append(timed(via_gateway))
    return a, b


def added(direct: list[float], gateway: list[float]) -> tuple[float, float]:
    """Added p50 and p99 latency in ms."""
    return ((percentile(gateway, 0.5) - percentile(direct, 0.5)) * 1e3,
            (percentile(gateway, 0.99) - percentile(direct, 0.99)) * 1e3)


async def sustained(address: str, prompt: list[int], concurrency: int, seconds: float) -> int:
    from saguaro.client import AsyncClient

    done = 0
    async with AsyncClient(address, retries=0) as client:
        deadline = time.monotonic() + seconds

        async def worker():
            nonlocal done
            while time.monotonic() < deadline:
                await client.generate(prompt, max_tokens=1)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def main() -> int:
    if sys.argv[1:2] == ["--bare-proxy"]:
        asyncio.run(BareProxy.serve(int(sys.argv[2]), sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="1-token requests per path (default: 400)")
    parser.add_argument("--streams", type=int, default=30, help="streamed requests per path (default: 30)")
    parser.add_argument("--stream-tokens", type=int, default=200, help="tokens per streamed request (default: 200)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients of the throughput run (default: 32)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the throughput run (default: 8)")
    parser.add_argument("--redis", action="store_true", help="prefix index in a local redis-server")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    pin_threads(1)
    from saguaro.client import Client
    from saguaro.tiny_models import build_tiny_model

    cores = sorted(os.sched_getaffinity(0))
    target_core, gateway_core = cores[0], cores[-1]
    work = Path(tempfile.mkdtemp(prefix="saguaro-gateway-bench-"))
    model = build_tiny_model(work / "bench", family="llama")
    services: list[Service] = []
    redis = None
    try:
        target_port, grpc_port, http_port = free_port(), free_port(), free_port()
        services.append(Service(["target", "--model", str(model), "--mode", "ar", "--port", str(target_port),
                                 "--metrics-port", "0", "--max-num-seqs", "64", "--kv-cache-bytes", str(64 << 20)],
                                target_core, work / "target.log"))
        gateway_args = ["gateway", "--port", str(grpc_port), "--http-port", str(http_port),
                        "--targets", f"127.0.0.1:{target_port}", "--max-queue", "4096"]
        if args.redis:
            redis_port = free_port()
            redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL)
            gateway_args += ["--redis-url", f"redis://127.0.0.1:{redis_port}/0"]
        gateway = Service(gateway_args, gateway_core, work / "gateway.log")
        services.append(gateway)
        bare_port = free_port()
        services.append(BareProxy(bare_port, f"127.0.0.1:{target_port}", gateway_core, work / "bare.log"))
        bare_proxy = services[-1]
        target_address, gateway_address = f"127.0.0.1:{target_port}", f"127.0.0.1:{grpc_port}"
        http_url = f"http://127.0.0.1:{http_port}"
        direct, via = Client(target_address, retries=0), Client(gateway_address, retries=0)
        bare = Client(f"127.0.0.1:{bare_port}", retries=0)
        via.wait_until_ready(60)
        prompt = list(range(3, 35))  # 32 tokens: two KV blocks to hash and look up
        for _ in range(50):  # warm up every path (connections, caches, the target's prefix cache)
            direct.generate(prompt, max_tokens=1)
            via.generate(prompt, max_tokens=1)
            bare.generate(prompt, max_tokens=1)
            http_completion(http_url, prompt, 1, False)

        rows = []
        # -- per request ---------------------------------------------------------------------
        cpu0 = cpu_seconds(gateway.proc.pid)
        a, b = alternate(lambda: direct.generate(prompt, max_tokens=1), lambda: via.generate(prompt, max_tokens=1),
                         args.requests)
        cpu_per_request = (cpu_seconds(gateway.proc.pid) - cpu0) / args.requests
        grpc_p50, grpc_p99 = added(a, b)
        rows.append(["per request, gateway, gRPC", f"{percentile(a, .5) * 1e3:.2f}", f"{percentile(b, .5) * 1e3:.2f}",
                     f"{grpc_p50:.3f}", f"{grpc_p99:.3f}", f"{cpu_per_request * 1e3:.3f}"])
        cpu0 = cpu_seconds(bare_proxy.proc.pid)
        a, b = alternate(lambda: direct.generate(prompt, max_tokens=1), lambda: bare.generate(prompt, max_tokens=1),
                         args.requests)
        bare_cpu = (cpu_seconds(bare_proxy.proc.pid) - cpu0) / args.requests
        bare_p50, bare_p99 = added(a, b)
        rows.append(["per request, bare grpc.aio proxy (baseline)", f"{percentile(a, .5) * 1e3:.2f}",
                     f"{percentile(b, .5) * 1e3:.2f}", f"{bare_p50:.3f}", f"{bare_p99:.3f}", f"{bare_cpu * 1e3:.3f}"])
        a, b = alternate(lambda: direct.generate(prompt, max_tokens=1),
                         lambda: http_completion(http_url, prompt, 1, False), args.requests)
        http_p50, http_p99 = added(a, b)
        rows.append(["per request, gateway, HTTP JSON", f"{percentile(a, .5) * 1e3:.2f}", f"{percentile(b, .5) * 1e3:.2f}",
                     f"{http_p50:.3f}", f"{http_p99:.3f}", ""])

        # -- per streamed token --------------------------------------------------------------
        n = args.stream_tokens

        def stream(client):
            for _ in client.stream(prompt, max_tokens=n, ignore_eos=True, stream_tokens_individually=True):
                pass

        def token_row(what: str, hop: Callable[[], None], per_request: tuple[float, float],
                      hop_pid: int | None = None, request_cpu: float = 0.0) -> list[str]:
            """The per-token row of ``what``: ``hop`` streams the prompt through the hop, alternating
            with the direct stream; its added latency less the hop's ``per_request`` (p50, p99), and
            with ``hop_pid`` that process's CPU time less ``request_cpu`` (a request's), per token."""
            cpu0 = cpu_seconds(hop_pid) if hop_pid is not None else 0.0
            a, b = alternate(lambda: stream(direct), hop, args.streams)
            cpu = ""
            if hop_pid is not None:
                cpu = f"{((cpu_seconds(hop_pid) - cpu0) / args.streams - request_cpu) / n * 1e3:.4f}"
            p50, p99 = added(a, b)
            return [f"{what} ({n} tokens)", f"{percentile(a, .5) * 1e3 / n:.3f}", f"{percentile(b, .5) * 1e3 / n:.3f}",
                    f"{(p50 - per_request[0]) / n:.4f}", f"{(p99 - per_request[1]) / n:.4f}", cpu]

        rows.append(token_row("per streamed token, gateway, gRPC", lambda: stream(via), (grpc_p50, grpc_p99),
                              gateway.proc.pid, cpu_per_request))
        rows.append(token_row("per streamed token, bare grpc.aio proxy", lambda: stream(bare), (bare_p50, bare_p99),
                              bare_proxy.proc.pid, bare_cpu))
        rows.append(token_row("per streamed token, gateway, HTTP SSE",
                              lambda: http_completion(http_url, prompt, n, True), (http_p50, http_p99)))

        # -- sustained requests/s through the gateway ------------------------------------------
        cpu0, started = cpu_seconds(gateway.proc.pid), time.perf_counter()
        completed = asyncio.run(sustained(gateway_address, prompt, args.concurrency, args.seconds))
        elapsed = time.perf_counter() - started
        busy = (cpu_seconds(gateway.proc.pid) - cpu0) / elapsed
        throughput = [["requests/s through the gateway", f"{completed / elapsed:.0f}"],
                      ["gateway CPU use during that run (1.0 = one core)", f"{busy:.2f}"],
                      ["gateway CPU per request in that run (ms)", f"{busy * elapsed / completed * 1e3:.3f}"],
                      ["requests/s one gateway core could sustain (1 / CPU per request)",
                       f"{completed / (busy * elapsed):.0f}" if busy else "n/a"]]

        print(f"\nGateway overhead ({'Redis' if args.redis else 'in-process'} prefix index, target and gateway "
              f"pinned to cores {target_core} and {gateway_core}, {os.cpu_count()} CPUs)\n")
        print(markdown_table(["what", "direct p50 (ms)", "through the hop p50 (ms)", "added p50 (ms)",
                              "added p99 (ms)", "hop CPU (ms)"], rows))
        print()
        print(markdown_table(["throughput", "value"], throughput))
        if args.json:
            args.json.write_text(json.dumps({"latency": rows, "throughput": throughput}, indent=2))
        for client in (direct, via, bare):
            client.close()
    finally:
        for service in reversed(services):
            service.stop()
        if redis is not None:
            redis.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
