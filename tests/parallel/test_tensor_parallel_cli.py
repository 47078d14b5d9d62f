"""``--tensor-parallel-size`` from the command line: ``generate``, and ``up`` (target sharded,
draft not), token-identical to the single-rank Python API; the followers end with the target."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from saguaro import LLM, SamplingParams
from saguaro.cli import main
from saguaro.net import free_port

ARGS = ["--kv-cache-bytes", str(16 << 20), "--max-num-seqs", "4"]
PROMPTS = ["--prompt", "def add(a, b):", "--prompt", "import os", "--max-tokens", "8", "--json"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def saguaro(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saguaro.cli", *args], capture_output=True, text=True, timeout=300,
                          env=ENV)


def token_ids(stdout: str) -> list[list[int]]:
    return [json.loads(line)["token_ids"] for line in stdout.splitlines()]


def spawned_children(pid: int) -> list[int]:
    """Processes started by ``pid`` through multiprocessing's spawn (the TP followers)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().split(")")[-1].split()[1])
            if ppid == pid and "spawn_main" in (entry / "cmdline").read_text():
                found.append(int(entry.name))
        except (ValueError, OSError):
            continue
    return found


@pytest.fixture(scope="module")
def expected(model_dirs) -> list[list[int]]:
    llm = LLM(model_dirs["llama"], kv_cache_bytes=16 << 20, show_progress=False)
    return [o.token_ids for o in llm.generate(["def add(a, b):", "import os"], SamplingParams(max_tokens=8))]


def test_generate_with_two_ranks(model_dirs, expected):
    proc = saguaro("generate", "--model", model_dirs["llama"], "--tensor-parallel-size", "2", *ARGS, *PROMPTS)
    assert proc.returncode == 0, proc.stderr
    assert token_ids(proc.stdout) == expected


def test_up_shards_the_target_only(model_dirs, expected):
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "saguaro.cli", "up", "--target", model_dirs["llama"], "--draft",
         model_dirs["llama_draft_perturbed"], "--port", str(port), "--draft-port", str(free_port()), "--http-port", str(free_port()),
         "--metrics-port", "0", "--tensor-parallel-size", "2", *ARGS],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
    )
    lines: list[str] = []
    try:
        for line in up.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C") or up.poll() is not None:
                break
        target = int(re.search(r"target \(internal\).*? pid (\d+)", "".join(lines)).group(1))
        followers = spawned_children(target)
        assert len(followers) == 1
        remote = saguaro("generate", "--endpoint", f"127.0.0.1:{port}", *PROMPTS)
        assert remote.returncode == 0, remote.stderr
        assert token_ids(remote.stdout) == expected
        assert json.loads(remote.stdout.splitlines()[0])["stats"]["mode"] == "ssd"
    finally:
        up.send_signal(signal.SIGTERM)
        rest, _ = up.communicate(timeout=60)
    assert up.returncode == 0, "".join(lines) + rest
    assert not any(Path(f"/proc/{pid}").exists() for pid in followers)


def test_the_draft_takes_no_tensor_parallel_size(model_dirs):
    with pytest.raises(SystemExit) as exit_info:
        main(["draft", "--model", model_dirs["llama"], "--tensor-parallel-size", "2"])
    assert exit_info.value.code == 2
