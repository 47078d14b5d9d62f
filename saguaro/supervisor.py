"""Service processes that never outlive their parent: ``saguaro up``'s stack and the load harness.

Both ``saguaro up`` (``saguaro.local_stack``) and the chaos/soak harness (``bench/harness``) run
the gateway, target and draft services as child processes of one supervisor, so a service starts
the same way under both:

* through an exec shim, not ``preexec_fn``: the parent holds live gRPC threads (``saguaro up``
  polls its gateway and restarts drafts; the harness streams load while it restarts services),
  and running Python between fork and exec in such a process can crash the child. The shim is a
  fresh interpreter that asks Linux for ``death_signal`` when its parent dies
  (PR_SET_PDEATHSIG, kept across exec), pins itself to its cores, then execs the service;
* in its own session, so a terminal's Ctrl-C reaches only the parent, which stops them in order;
* with one OpenMP thread and unbuffered output.

Its output goes to a log file (appended across restarts) or, line by line, to this process's
stdout with a ``[name]`` prefix; the last lines are kept for the error that reports its exit.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from saguaro.errors import SaguaroError

# argv: death signal, comma-separated cores (may be empty), then the service's command line.
_SHIM = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, int(sys.argv[1])); "
         "sys.argv[2] and os.sched_setaffinity(0, {int(c) for c in sys.argv[2].split(',')}); "
         "os.execvp(sys.argv[3], sys.argv[3:])")
TAIL_LINES = 40  # output lines kept for the error that reports an exit


def _launch_argv(cmd: list[str], cpus: set[int] | None, death_signal: int) -> list[str]:
    """``cmd`` behind the shim on Linux; as it is elsewhere (no parent-death signal, no pinning)."""
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-c", _SHIM, str(int(death_signal)), ",".join(map(str, sorted(cpus or ()))), *cmd]


class ServiceProcess:
    """One service, started from a fixed command line: ``start`` again after it exited (or was
    killed) is a restart that the rest of the stack sees as the same pod coming back.

    ``address`` (host:port) is where it listens once it can serve; ``log_path``: its output is
    appended there, else read on a thread and printed with a ``[name]`` prefix when ``echo``."""

    def __init__(self, name: str, cmd: list[str], address: str, cpus: set[int] | None = None,
                 log_path: Path | None = None, echo: bool = False, death_signal: int = signal.SIGTERM,
                 env: Mapping[str, str] | None = None):
        self.name, self.cmd, self.address = name, cmd, address
        self.cpus, self.log_path, self.echo = cpus, log_path, echo
        self.death_signal = death_signal
        self.env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.started = 0.0  # time.monotonic() of the last start
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def start(self) -> ServiceProcess:
        self.starts += 1
        argv = _launch_argv(self.cmd, self.cpus, self.death_signal)
        if self.log_path is not None:
            with open(self.log_path, "a") as log:  # restarts append: one log per service
                log.write(f"--- start {self.starts}: {' '.join(self.cmd)}\n")
                log.flush()
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             env=self.env, start_new_session=True)
        else:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, env=self.env, start_new_session=True)
            self._reader = threading.Thread(target=self._read, args=(self.proc,), name=f"{self.name}-output",
                                            daemon=True)
            self._reader.start()
        self.started = time.monotonic()
        return self

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            line = line.rstrip("\n")
            self._tail.append(line)
            if self.echo:
                print(f"[{self.name}] {line}", flush=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = TAIL_LINES) -> str:
        """Its last output lines (from the log file, or as read)."""
        if self.log_path is None:
            return "\n".join(list(self._tail)[-lines:])
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_running(self) -> None:
        """Raise if it exited, with its last output."""
        code = self.proc.poll() if self.proc is not None else None
        if code is None:
            return
        if self._reader is not None:
            self._reader.join(timeout=2)
        log = "\n".join(f"  {line}" for line in self.tail().splitlines())
        detail = f"; its last output:\n{log}" if log else ""
        where = f" (log: {self.log_path})" if self.log_path is not None else ""
        raise SaguaroError(f"the {self.name} service exited with code {code}{where}{detail}")

    def wait_ready(self, deadline: float, others: Iterable[ServiceProcess] = ()) -> None:
        """Until its port accepts connections (every service binds it once it can serve); raise
        if it, or one of ``others`` started with it, exits meanwhile."""
        host, port = self.address.rsplit(":", 1)
        while True:
            for service in (self, *others):
                service.check_running()
            try:
                with socket.create_connection((host, int(port)), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    where = f"; see {self.log_path}" if self.log_path is not None else ""
                    raise SaguaroError(f"the {self.name} service did not start listening in time{where}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no goodbye, sockets reset, in-flight work lost."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM; SIGKILL if it still runs after ``timeout``."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._reader is not None:
            self._reader.join(timeout=2)
