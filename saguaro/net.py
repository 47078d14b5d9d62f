"""Small networking helpers shared by the local stack, services, tests and benchmarks."""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Linux's default ephemeral range, used where /proc cannot be read.
_EPHEMERAL_DEFAULT = (32768, 60999)
_LOWEST_RUN_PORT = 10000


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """A port p with p .. p + count - 1 all free on ``host`` (draft worker i listens on base + i).

    The run is drawn below the kernel's ephemeral range. Inside it, the ports after an OS-picked one
    are exactly where the kernel puts the local end of the next outbound connections, so a run found
    free there is often taken by a client socket before the last worker binds.
    """
    low, _ = ephemeral_range()
    for _ in range(200):
        base = random.randint(_LOWEST_RUN_PORT, max(_LOWEST_RUN_PORT, low - count))
        if all(_bindable(host, base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no run of {count} free ports below {low} on {host}")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outbound connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
