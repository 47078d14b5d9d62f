"""``saguaro up`` / ``target`` / ``generate --endpoint``: the local stack from the command line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from saguaro.cli import main
from saguaro.net import free_port, free_port_run

pytestmark = pytest.mark.slow  # starts 'saguaro up' stacks of child processes

SMALL_ARGS = ["--kv-cache-bytes", str(16 << 20), "--max-num-seqs", "8"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def saguaro(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saguaro.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env or ENV)


class Output:
    """Lines of a child's stdout, collected on a thread; ``wait_for`` blocks until a line matches."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append(None)  # EOF
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 180) -> str:
        def found():
            return next((l for l in self.lines if l is not None and re.search(pattern, l)), None) or (None in self.lines)

        with self._changed:
            self._changed.wait_for(found, timeout)
        line = next((l for l in self.lines if l is not None and re.search(pattern, l)), None)
        assert line is not None, "\n".join(l for l in self.lines if l is not None)
        return line


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_serves_the_same_tokens_as_local_generation_and_stops_its_children(model_dirs):
    """Two draft workers (data parallelism): two draft processes, the target splits its batch."""
    port, draft_port, http_port = free_port(), free_port_run(2), free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "saguaro.cli", "up", "--target", model_dirs["llama"],
         "--draft", model_dirs["llama_draft_perturbed"], "--mode", "ssd", "--port", str(port),
         "--draft-port", str(draft_port), "--draft-workers", "2", "--http-port", str(http_port),
         "--served-model-name", "tiny", "tiny-alias",  # passed through to the gateway
         "--speculation-policy", "always",  # speculate from the first round (adaptive starts plain)
         *SMALL_ARGS],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
    )
    out = Output(up)
    prompts = ["--prompt", "def add(a, b):", "--prompt", "import os", "--max-tokens", "8", "--json"]
    local = subprocess.Popen([sys.executable, "-m", "saguaro.cli", "generate", "--model", model_dirs["llama"], *SMALL_ARGS,
                              *prompts], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        out.wait_for(r"^ready: saguaro stack serving, mode ssd")
        target_line = out.wait_for(rf"^  public API.*127\.0\.0\.1:{port}\b")
        draft_line = out.wait_for(rf"^  draft .*127\.0\.0\.1:{draft_port}\b")
        second_draft_line = out.wait_for(rf"^  draft-1 .*127\.0\.0\.1:{draft_port + 1}\b")
        pids = {name: int(re.search(r"pid (\d+)", line).group(1)) for name, line in
                (("target", target_line), ("draft", draft_line), ("draft-1", second_draft_line))}
        if len(os.sched_getaffinity(0)) >= 2:  # one core each
            cores = [os.sched_getaffinity(pids["target"]), os.sched_getaffinity(pids["draft"])]
            assert all(len(c) == 1 for c in cores) and cores[0] != cores[1]

        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/models", timeout=30) as models:
            assert [m["id"] for m in json.load(models)["data"]] == ["tiny", "tiny-alias"]
        remote = saguaro("generate", "--endpoint", f"127.0.0.1:{port}", *prompts)
        assert remote.returncode == 0, remote.stderr
        local_out, local_err = local.communicate(timeout=300)
        assert local.returncode == 0, local_err
        remote_rows = [json.loads(line) for line in remote.stdout.splitlines()]
        local_rows = [json.loads(line) for line in local_out.splitlines()]
        assert [r["token_ids"] for r in remote_rows] == [r["token_ids"] for r in local_rows]
        assert [r["text"] for r in remote_rows] == [r["text"] for r in local_rows]
        assert set(local_rows[0]) <= set(remote_rows[0])
        stats = remote_rows[0]["stats"]
        assert stats["mode"] == "ssd" and stats["transport"] not in ("", "inprocess")
        for key in ("rounds", "tokens_per_round", "acceptance_per_position", "cache_hit_rate", "backups_jit",
                    "backups_fast", "draft_time_s", "verify_time_s"):
            assert key in stats
        assert stats["rounds"] > 0 and len(stats["acceptance_per_position"]) == 4
    finally:
        if local.poll() is None:
            local.kill()
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
    assert code == 0, "\n".join(l for l in out.lines if l is not None)
    assert not any(alive(pid) for pid in pids.values())


def test_generate_needs_a_model_or_an_endpoint(capsys):
    assert main(["generate", "--prompt", "x"]) == 2
    assert "give --model DIR" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--endpoint", f"127.0.0.1:{free_port()}", "--timeout", "20"]) == 2
    assert "cannot reach the Saguaro service at 127.0.0.1:" in capsys.readouterr().err


def test_target_refuses_a_mode_without_its_draft(model_dirs, capsys):
    assert main(["target", "--model", model_dirs["llama"], "--mode", "sd"]) == 2
    assert "--mode sd runs the draft in this process: give --draft-model DIR" in capsys.readouterr().err
    assert main(["target", "--model", model_dirs["llama"], "--mode", "ssd"]) == 2
    assert "--mode ssd needs a draft" in capsys.readouterr().err
    assert main(["up", "--target", model_dirs["llama"], "--mode", "ssd"]) == 2
    assert "--mode ssd needs --draft DIR" in capsys.readouterr().err


def test_a_killed_draft_is_restarted_and_every_stream_completes_exactly(model_dirs):
    """SIGKILL the draft of a running `saguaro up` while long greedy streams run: every stream
    completes with the target's own tokens (as `mode=ar` gives them), the stack keeps serving,
    the draft is restarted, and speculation resumes with it."""
    from saguaro.client import Client

    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "saguaro.cli", "up", "--target", model_dirs["llama"],
         "--draft", model_dirs["llama_draft_perturbed"], "--mode", "ssd", "--port", str(port),
         "--draft-port", str(free_port()), "--http-port", str(free_port()), "--speculation-policy", "always",
         "--emulate-forward-ms", "10", *SMALL_ARGS],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
    )
    out = Output(up)
    try:
        out.wait_for(r"^ready: saguaro stack serving, mode ssd")
        target_address = re.search(r"target \(internal\)\s+(\S+)", out.wait_for(r"^  target \(internal\)")).group(1)
        draft_pid = int(re.search(r"pid (\d+)", out.wait_for(r"^  draft \(Speculation\)")).group(1))
        prompts = [[40 + i, 41, 42] for i in range(4)]
        results: dict[int, list[int]] = {}
        with Client(f"127.0.0.1:{port}", timeout=120) as client:
            def run(i: int) -> None:
                results[i] = client.generate(prompts[i], max_tokens=120, ignore_eos=True).token_ids

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
            for thread in threads:
                thread.start()
            time.sleep(1.0)  # the streams are decoding with the draft
            os.kill(draft_pid, signal.SIGKILL)
            for thread in threads:
                thread.join(120)
            plain = [client.generate(p, max_tokens=120, ignore_eos=True, mode="ar").token_ids for p in prompts]
        assert [results[i] for i in range(len(prompts))] == plain
        out.wait_for(r"the draft service exited with code -9; restarting it in 1 s")
        # the target reconnects when a round wants to speculate and its retry interval has passed
        with Client(f"127.0.0.1:{port}", timeout=120) as client, Client(target_address, timeout=30) as target:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                again = client.generate(prompts[0], max_tokens=16, ignore_eos=True)
                assert again.token_ids == plain[0][:16]
                if target.health().draft_connected and again.stats["spec_rounds"] > 0:
                    break
                time.sleep(0.5)
        assert again.stats["spec_rounds"] > 0, "\n".join(l for l in out.lines[-30:] if l is not None)
        assert up.poll() is None
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
    assert code == 0, "\n".join(l for l in out.lines if l is not None)
