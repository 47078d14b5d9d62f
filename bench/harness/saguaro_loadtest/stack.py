"""The stack under test: redis-server, N (draft, SSD target) pairs and a gateway, as child processes.

Every service is a ``saguaro.supervisor.ServiceProcess`` (the supervisor ``saguaro up`` uses) on
fixed loopback ports, its output in a log file per service, so killing one and starting the same
command again is what a pod restart looks like to the others (docs/reliability.md).
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from saguaro.net import free_port
from saguaro.supervisor import ServiceProcess


def role(name: str) -> str:
    """``target1`` -> ``target``: what a service of the stack is."""
    return name.rstrip("0123456789")


class Service(ServiceProcess):
    """A service of the stack that a fault can also freeze (SIGSTOP) and thaw (SIGCONT).

    Its parent-death signal is SIGKILL, not the supervisor's SIGTERM: a frozen service would
    hold a SIGTERM until thawed, so a killed test run would leave it behind."""

    def __init__(self, name: str, cmd: list[str], address: str, log_path: Path):
        super().__init__(name, cmd, address, log_path=log_path, death_signal=signal.SIGKILL,
                         env={"TOKENIZERS_PARALLELISM": "false"})
        self.paused = False

    def start(self) -> Service:
        super().start()
        self.paused = False
        return self

    def kill(self) -> None:
        super().kill()
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the process freezes with its sockets open (a hung pod, a long GC, a VM stall)."""
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive() and self.paused:
            self.resume()  # a frozen process cannot act on SIGTERM
        super().stop(timeout)


@dataclass
class StackSpec:
    """What to run. Defaults are small: tiny models on a shared CPU."""

    target_model: str
    draft_model: str
    log_dir: Path
    pairs: int = 2  # (draft, target) pairs behind the gateway
    redis: bool = True  # prefix index in a real redis-server (else in the gateway)
    k: int = 3
    fan_out: int = 2
    kv_cache_bytes: int = 16 << 20
    target_kv_cache_bytes: int | None = None  # the targets' own budget (memory pressure); None: kv_cache_bytes
    max_num_seqs: int = 8
    max_model_len: int | None = None  # None: the model's
    draft_timeout_s: float = 1.0  # a stalled draft costs the target this long per round before it falls back
    max_queue: int = 256
    target_metrics: bool = False  # serve the targets' Prometheus metrics (``metrics_url``)


class Stack:
    """redis-server, ``pairs`` × (draft, SSD target) and a gateway in front, as child processes.

    Names: ``redis``, ``draft0``, ``target0``, ``draft1``, ``target1`` …, ``gateway``. The public
    endpoint is ``endpoint`` (gRPC) and ``http_url`` (OpenAI HTTP, ``/metrics``)."""

    def __init__(self, spec: StackSpec):
        self.spec = spec
        spec.log_dir.mkdir(parents=True, exist_ok=True)
        python = [sys.executable, "-m", "saguaro.cli"]
        limits = ["--max-num-seqs", str(spec.max_num_seqs)]
        if spec.max_model_len:
            limits += ["--max-model-len", str(spec.max_model_len)]
        engine = ["--kv-cache-bytes", str(spec.kv_cache_bytes), *limits]
        speculation = ["--k", str(spec.k), "--fan-out", str(spec.fan_out)]
        self.services: dict[str, Service] = {}
        self.metrics_ports: dict[str, int] = {}
        redis_url = None
        if spec.redis:
            binary = shutil.which("redis-server")
            if binary is None:
                raise RuntimeError("redis-server is not installed: run scripts/setup (apt-get install redis-server)")
            port = free_port()
            redis_url = f"redis://127.0.0.1:{port}/0"
            self._add("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(spec.log_dir)], port)
        targets = []
        for i in range(spec.pairs):
            draft_port, target_port = free_port(), free_port()
            metrics_port = free_port() if spec.target_metrics else 0
            self.metrics_ports[f"target{i}"] = metrics_port
            self._add(f"draft{i}", [*python, "draft", "--model", spec.draft_model, "--port", str(draft_port),
                                    "--metrics-port", "0", *engine, *speculation], draft_port)
            target_engine = ["--kv-cache-bytes", str(spec.target_kv_cache_bytes or spec.kv_cache_bytes), *limits]
            self._add(f"target{i}", [*python, "target", "--model", spec.target_model, "--mode", "ssd",
                                     "--draft-address", f"127.0.0.1:{draft_port}", "--wait-for-draft", "120",
                                     "--draft-timeout", str(spec.draft_timeout_s), "--port", str(target_port),
                                     "--metrics-port", str(metrics_port), *target_engine, *speculation],
                      target_port)
            targets.append(f"127.0.0.1:{target_port}")
        grpc_port, self.http_port = free_port(), free_port()
        self._add("gateway", [*python, "gateway", "--port", str(grpc_port), "--http-port", str(self.http_port),
                              "--targets", *targets, "--max-queue", str(spec.max_queue),
                              *(["--redis-url", redis_url] if redis_url else [])], grpc_port)
        self.endpoint = f"127.0.0.1:{grpc_port}"
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.redis_url = redis_url

    def _add(self, name: str, cmd: list[str], port: int) -> None:
        self.services[name] = Service(name, cmd, f"127.0.0.1:{port}", self.spec.log_dir / f"{name}.log")

    def names(self, kind: str) -> list[str]:
        return [n for n in self.services if role(n) == kind]

    def start(self, timeout: float = 180.0) -> Stack:
        """Start everything at once (they load in parallel), then wait until the gateway serves
        through every target."""
        deadline = time.monotonic() + timeout
        try:
            for service in self.services.values():
                service.start()
            for service in self.services.values():
                service.wait_ready(deadline)
            self.wait_serving(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_serving(self, deadline: float) -> None:
        """Until the gateway reports every live target healthy, and every live target whose
        draft lives has it connected again (a killed service stays down unless restarted)."""
        from saguaro.client import Client, ServiceError

        pairs = [(self.services[f"target{i}"], self.services[f"draft{i}"]) for i in range(self.spec.pairs)]
        live = [(t, d.alive()) for t, d in pairs if t.alive()]
        want = f"{len(live)} of {self.spec.pairs} targets healthy"
        clients = [(Client(t.address, timeout=10), draft) for t, draft in live]
        gateway = Client(self.endpoint, timeout=10)
        try:
            while True:
                try:
                    drafts = all(c.health(timeout=2).draft_connected for c, draft in clients if draft)
                    if drafts and gateway.health(timeout=2).message == want:
                        return
                except ServiceError:
                    pass
                for name, service in self.services.items():
                    if service.starts and not service.alive() and service.proc.returncode != -signal.SIGKILL:
                        raise RuntimeError(f"{name} exited ({service.proc.returncode}); see {service.log_path}:\n"
                                           f"{service.tail(20)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the stack did not serve again in time ({want}?); logs in {self.spec.log_dir}")
                time.sleep(0.1)
        finally:
            for client, _ in clients:
                client.close()
            gateway.close()

    def targets(self) -> list[Service]:
        return [self.services[n] for n in self.names("target")]

    def restart(self, name: str, timeout: float = 120.0) -> None:
        """Start a killed service again with the same command line (a pod restart) and wait until
        the whole stack serves again."""
        deadline = time.monotonic() + timeout
        self.services[name].kill()
        self.services[name].start().wait_ready(deadline)
        self.wait_serving(deadline)

    def metrics_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def pids(self) -> dict[str, int]:
        return {name: s.pid for name, s in self.services.items() if s.alive()}

    def stop(self) -> None:
        for name in ("gateway", *self.names("target"), *self.names("draft"), "redis"):
            if name in self.services:
                self.services[name].stop()
