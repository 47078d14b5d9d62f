"""What a run measures besides its requests: process memory, Prometheus counters, the JSON report."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saguaro_loadtest.stack import Stack


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def scrape_metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` (with these labels) at a Prometheus ``/metrics`` URL."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


class RssSampler:
    """Samples the resident memory of the stack's processes (and this one) every ``interval_s``;
    keeps the first, peak and last value per service name (across restarts)."""

    def __init__(self, stack: Stack, interval_s: float = 0.5):
        self.stack = stack
        self.interval_s = interval_s
        self.first: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def start(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        for name, pid in {**self.stack.pids(), "client": os.getpid()}.items():
            rss = rss_bytes(pid)
            if rss:
                self.first.setdefault(name, rss)
                self.peak[name] = max(self.peak.get(name, 0), rss)
                self.last[name] = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> dict[str, dict[str, float]]:
        """MiB per service: first, peak and last sample."""
        self._stop.set()
        self._thread.join()
        self.sample()
        mib = lambda b: round(b / (1 << 20), 1)
        return {n: {"first_mib": mib(self.first[n]), "peak_mib": mib(self.peak[n]), "last_mib": mib(self.last[n])}
                for n in self.peak}


def write_report(path: str | os.PathLike, key: str, value: dict) -> None:
    """Merge ``{key: value}`` into the JSON object at ``path`` (created if missing)."""
    target = Path(path)
    data = json.loads(target.read_text()) if target.is_file() and target.stat().st_size else {}
    data[key] = value
    target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
