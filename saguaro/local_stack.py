"""``saguaro up``'s local stack: the gateway, target and draft services as child processes.

Used by ``saguaro up`` and the demo. Each child is a ``saguaro.supervisor.ServiceProcess``:
pinned to a core with one torch thread, in its own session, and dead with this process (Linux),
so no service outlives the command. What is particular to ``up`` lives here: the command lines,
the core plan, and restarting a draft that exits.
"""

from __future__ import annotations

import os
import sys
import time

from saguaro.errors import ConfigError, SaguaroError
from saguaro.net import free_port
from saguaro.supervisor import ServiceProcess
from saguaro.wire import MODES

RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # delays before restarting a draft that exited
STABLE_S = 60.0  # a draft up this long has recovered: its next exit restarts after the first delay


class LocalStack:
    """``saguaro up``: the gateway, target and draft services as child processes of this one.

    The gateway serves the public API on ``host:port`` (gRPC) and ``host:http_port`` (OpenAI
    HTTP; None: off) and routes to the target, which listens on 127.0.0.1:``target_port`` (0: a
    free port). Each child is pinned to a core (target: the first allowed CPU, draft: the
    second, gateway: the third, or the target's on a two-core machine: it works while the
    target waits for tokens) with one torch thread, runs in its own session (a terminal's
    Ctrl-C reaches only this process, which stops them in order) and receives SIGTERM if this
    process dies (Linux).

    A draft that exits is restarted (``check``), after 1, 2, 4 … up to 30 s: a draft fault never
    stops the stack, because the target decodes plainly (exactly) while its draft is away and
    reconnects to the new one. A gateway or target that exits is fatal: nothing serves without it.
    """

    def __init__(self, target: str, draft: str | None, mode: str = "ssd", host: str = "127.0.0.1",
                 port: int = 50050, draft_port: int = 50061, extra_args: list[str] | None = None,
                 target_args: list[str] | None = None, draft_args: list[str] | None = None,
                 echo: bool = True, verbose: bool = False, http_port: int | None = 8000, target_port: int = 0,
                 gateway_args: list[str] | None = None, draft_workers: int = 1, draft_metrics_port: int = 0):
        """``draft_workers`` draft processes (ssd) listen on ``draft_port``, ``draft_port + 1``, ...
        and serve metrics on ``draft_metrics_port + i`` (0: none)."""
        from saguaro.errors import ModelLoadError
        from pathlib import Path

        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; use ssd, sd or ar")
        if mode != "ar" and not draft:
            raise ConfigError(f"--mode {mode} needs --draft DIR (or use --mode ar)")
        for folder in (target, draft if mode != "ar" else None):
            if folder and not (Path(folder) / "config.json").is_file():
                raise ModelLoadError(f"model folder not found (no config.json): {folder}")
        self.mode, self.host, self.port, self.draft_port = mode, host, port, draft_port
        self.http_port = http_port
        self.target_port = target_port or free_port()
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.endpoint = f"{connect_host}:{port}"
        self.http_url = f"http://{connect_host}:{http_port}" if http_port is not None else ""
        self.target_address = f"127.0.0.1:{self.target_port}"
        if draft_workers < 1:
            raise ConfigError(f"--draft-workers must be at least 1, got {draft_workers}")
        self.draft_addresses = [f"127.0.0.1:{draft_port + i}" for i in range(draft_workers)] if mode == "ssd" else []
        self.draft_address = " ".join(self.draft_addresses)
        base = [sys.executable, "-m", "saguaro.cli"] + (["-v"] if verbose else [])
        extra = list(extra_args or [])
        self.gateway_cmd = base + ["gateway", "--host", host, "--port", str(port), "--targets", self.target_address,
                                   "--http-port", str(http_port if http_port is not None else 0), *(gateway_args or [])]
        self.target_cmd = base + ["target", "--model", target, "--mode", mode, "--host", "127.0.0.1",
                                  "--port", str(self.target_port), *extra, *(target_args or [])]
        if mode != "ar":
            self.target_cmd += ["--draft-model", draft]
        if mode == "ssd":
            self.target_cmd += ["--draft-address", *self.draft_addresses, "--wait-for-draft", "300"]
        elif mode == "sd":
            self.target_cmd += ["--draft-workers", str(draft_workers)]
        self.draft_cmds = {("draft" if i == 0 else f"draft-{i}"): base + [
            "draft", "--model", draft, "--host", "127.0.0.1", "--port", str(draft_port + i), *extra, *(draft_args or []),
            "--metrics-port", str(draft_metrics_port + i if draft_metrics_port else 0)]
            for i in range(len(self.draft_addresses))}
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        target_cpus = {cpus[0]} if len(cpus) >= 2 else None
        draft_cpus = {cpus[1]} if len(cpus) >= 2 else None
        gateway_cpus = {cpus[2]} if len(cpus) >= 3 else target_cpus
        # Started in this order (the target waits for its drafts), stopped in the reverse one.
        self.children: dict[str, ServiceProcess] = {
            **{name: ServiceProcess(name, cmd, address, draft_cpus, echo=echo)
               for (name, cmd), address in zip(self.draft_cmds.items(), self.draft_addresses)},
            "target": ServiceProcess("target", self.target_cmd, self.target_address, target_cpus, echo=echo),
            "gateway": ServiceProcess("gateway", self.gateway_cmd, self.endpoint, gateway_cpus, echo=echo),
        }
        self._restart_at: dict[str, float] = {}  # a draft that exited: when it restarts
        self._failures: dict[str, int] = {}  # per draft: exits in a row, for the backoff

    def start(self, timeout: float = 300.0) -> None:
        """Start the services (they load at once; the target waits for the draft before it
        connects); return once the gateway reports SERVING (a target serves behind it)."""
        from saguaro.client import Client, ServiceError

        deadline = time.monotonic() + timeout
        try:
            for child in self.children.values():
                child.start()
            for child in self.children.values():
                child.wait_ready(deadline, others=self.children.values())
            with Client(self.endpoint) as client:
                try:
                    client.wait_until_ready(max(1.0, deadline - time.monotonic()))
                except ServiceError as exc:
                    raise SaguaroError(f"the services started but the gateway is not serving: {exc}") from None
        except BaseException:
            self.stop()
            raise

    def check(self) -> None:
        """Raise if the gateway or the target exited on its own; restart a draft that did (with
        backoff), once its delay has passed. Call it every fraction of a second."""
        for name, child in list(self.children.items()):
            if name in self.draft_cmds:
                self._supervise_draft(name, child)
            else:
                child.check_running()

    def _supervise_draft(self, name: str, child: ServiceProcess) -> None:
        now = time.monotonic()
        code = child.proc.poll()
        if code is None:
            if now - child.started > STABLE_S:
                self._failures[name] = 0  # up long enough: the next exit starts the backoff over
            return
        if name not in self._restart_at:
            failures = self._failures.get(name, 0)
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            self._restart_at[name] = now + delay
            self._failures[name] = failures + 1
            print(f"[saguaro up] the {name} service exited with code {code}; restarting it in {delay:g} s "
                  f"(the target decodes without speculation meanwhile)", flush=True)
        elif now >= self._restart_at[name]:
            del self._restart_at[name]
            child.start()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the gateway, the target, then the drafts; SIGKILL what is still alive after ``timeout``."""
        for child in reversed(self.children.values()):
            child.stop(timeout)

    def __enter__(self) -> "LocalStack":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

