"""Starting, stopping and losing tensor-parallel ranks: STOP joins the followers, a dead follower
is a clear error on rank 0 (not a hang), a dead rank 0 takes its followers with it."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saguaro.cache import BlockTable
from saguaro.errors import ConfigError
from saguaro.model_runner import CausalChunk, ModelRunner
from saguaro.parallel.launch import TensorParallelError

REPO = Path(__file__).resolve().parents[2]


def step(runner: ModelRunner) -> None:
    table = BlockTable()
    runner.blocks.allocate_prompt(table, [5, 6, 7])
    runner.run_causal([CausalChunk(table.blocks, 0, [5, 6, 7])])


def test_close_stops_followers_cleanly(tp_config):
    runner = ModelRunner(tp_config("llama", tp=2))
    step(runner)
    followers = runner.parallel.followers
    runner.close()
    runner.close()  # idempotent
    assert [p.exitcode for p in followers] == [0]


def test_garbage_collected_runner_stops_its_followers(tp_config):
    runner = ModelRunner(tp_config("llama", tp=2))
    followers = runner.parallel.followers
    del runner
    gc.collect()
    assert [p.exitcode for p in followers] == [0]


def test_dead_follower_is_a_clear_error_on_rank_0(tp_config):
    runner = ModelRunner(tp_config("llama", tp=2))
    try:
        step(runner)
        follower = runner.parallel.followers[0]
        os.kill(follower.pid, signal.SIGKILL)
        follower.join()
        with pytest.raises(TensorParallelError, match=rf"rank 1 \(pid {follower.pid}\) was killed by SIGKILL"):
            step(runner)
        with pytest.raises(TensorParallelError, match="killed by SIGKILL"):  # stays failed, no new collective
            step(runner)
    finally:
        runner.close()


def test_custom_attention_is_refused_under_tensor_parallelism(tp_config):
    from saguaro.attention import causal_metadata

    runner = ModelRunner(tp_config("llama", tp=2))
    try:
        meta, positions = causal_metadata([[0]], [1], [1], 4)
        with pytest.raises(ConfigError, match="tensor_parallel_size 1"):
            runner.forward(positions + 5, positions, meta, attention=runner.rank.attention)
        step(runner)  # the refusal happened before any command: the ranks are still in step
    finally:
        runner.close()


RANK0_DIES = """
import os, signal, sys
from saguaro.config import EngineConfig
from saguaro.model_runner import ModelRunner
if __name__ == "__main__":
    runner = ModelRunner(EngineConfig(model=sys.argv[1], kv_cache_bytes=1 << 22, show_progress=False,
                                      tensor_parallel_size=2))
    print(runner.parallel.followers[0].pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def exited(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def test_followers_exit_when_rank_0_dies(tp_model_dirs, tmp_path):
    script = tmp_path / "rank0.py"
    script.write_text(RANK0_DIES)
    proc = subprocess.run([sys.executable, str(script), tp_model_dirs["llama"]], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pid = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 60  # a bound so a regression fails instead of hanging the suite
    while not exited(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert exited(pid), f"follower {pid} outlived its rank 0"
