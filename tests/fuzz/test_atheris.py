"""Short, bounded runs of the atheris (libFuzzer, coverage-guided) harnesses next to this file.

Each harness runs in its own process (libFuzzer exits the process when done); a crash (any
exception the parser should not raise) makes it exit non-zero with the input that caused it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.support import ATHERIS_RUNS, PROFILE

HERE = Path(__file__).parent
RUNS = ATHERIS_RUNS[PROFILE]


@pytest.mark.parametrize("harness", ["atheris_http_body.py", "atheris_speculation.py"])
def test_a_bounded_atheris_run_finds_no_crash(model_dirs, tmp_path, harness):
    args = [model_dirs["llama"]] if harness == "atheris_http_body.py" else []
    proc = subprocess.run(
        [sys.executable, str(HERE / harness), *args, f"-runs={RUNS}", "-max_total_time=600", "-seed=1",
         str(tmp_path / "corpus")],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert f"Done {RUNS} runs" in output, output[-2000:]
