"""A real Prometheus server for tests, started the way the gateway's tests start ``redis-server``.

The chart ships PromQL (dashboard panels, autoscaling triggers, recording rules) whose only
proof of life is a query that returns data. Reading expressions against a list of metric names
misses a counter read without ``rate()``, a label the relabelling never produces or a typo in a
function name; evaluating them in the real engine, on series scraped from running services,
does not. ``scripts/setup`` installs the Debian ``prometheus`` package (which brings
``promtool``) when it is absent.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from saguaro.net import free_port

PROMETHEUS = "prometheus"
PROMTOOL = "promtool"


class PrometheusError(RuntimeError):
    """A query Prometheus refused (a PromQL syntax or evaluation error), with its message."""


class PrometheusServer:
    """One ``prometheus`` process on a free port, scraping ``scrape_configs`` every second."""

    def __init__(self, workdir: Path, scrape_configs: list[dict], rule_groups: list[dict] | None = None):
        if shutil.which(PROMETHEUS) is None:
            raise RuntimeError("prometheus is not installed: run `bash scripts/setup` (it installs Debian's package)")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                        "scrape_configs": scrape_configs}
        if rule_groups:
            rules = workdir / "rules.yaml"
            rules.write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
            check_rules(rules)
            config["rule_files"] = [str(rules)]
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> PrometheusServer:
        log = self.log_path.open("w")
        self._proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self._proc.returncode}): {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout} s: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _get(self, path: str, params: list[tuple[str, str]]) -> object:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # 400/422: the expression is wrong; say why
            body = json.load(error)
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')} (query params {params})") from None
        if body["status"] != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """Instant query: (labels, value) per series of the result (a scalar is one unlabelled value)."""
        data = self._get("/api/v1/query", [("query", expr)])
        if data["resultType"] in ("scalar", "string"):
            return [({}, float(data["result"][1]))]
        if data["resultType"] == "matrix":
            return [(series["metric"], float(series["values"][-1][1])) for series in data["result"]]
        return [(series["metric"], float(series["value"][1])) for series in data["result"]]

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """Grafana's ``label_values(metric, label)``: the label's values on the series ``match`` selects."""
        return sorted(self._get(f"/api/v1/label/{label}/values", [("match[]", match)] if match else []))

    def targets(self) -> list[dict]:
        """The active scrape targets with their labels after relabelling and their last scrape's health."""
        return self._get("/api/v1/targets", [("state", "active")])["activeTargets"]

    def wait_for(self, expr: str, timeout: float = 60) -> list[tuple[dict[str, str], float]]:
        """Poll ``expr`` until it returns a finite value (scrapes are asynchronous)."""
        deadline = time.monotonic() + timeout
        result: list = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if any(math.isfinite(value) for _, value in result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{expr} returned no finite value in {timeout} s (last: {result}); "
                             f"targets: {self.targets()}")


def check_rules(path: Path) -> None:
    """``promtool check rules``: the rule file Prometheus would load parses and its expressions are valid."""
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"promtool check rules {path} failed:\n{done.stdout}{done.stderr}")
