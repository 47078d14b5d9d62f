"""The CI soak: ``bench/soak.py`` for exactly 30 s of load (4 streaming clients) against a real
local stack, run as the script it is (the long runs, 10 minutes and more, are in
docs/reliability.md; this short variant keeps the harness and its guarantees checked in CI).
No faults, so every request must complete with exactly the target-only greedy tokens, and
every service must still run at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SECONDS = 30
PROCESSES = {"redis", "draft0", "target0", "gateway", "client"}


def test_a_short_soak_completes_every_request_exactly(model_dirs, tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--seconds", str(SECONDS), "--concurrency", "4",
         "--max-tokens", "24", "--target", model_dirs["llama"], "--draft", model_dirs["llama_draft_perturbed"],
         "--json", str(out), "--log-dir", str(tmp_path / "logs")],
        check=False, capture_output=True, text=True, timeout=SECONDS + 240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert summary["requests"] > 0 and summary["completed"] == summary["requests"], result
    assert summary["failed_retryable"] == summary["failed"] == summary["corrupted"] == 0
    assert summary["tokens"] >= summary["requests"]  # every request streamed its tokens
    assert result["errors"] == [] and result["all_alive_at_end"]
    assert set(result["memory_mib"]) == PROCESSES
    assert all(m["peak_mib"] > 0 for m in result["memory_mib"].values())
