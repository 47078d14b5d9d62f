"""scripts/gpu-check, the prepared device check, in its dry run: every step on this CPU with tiny
shapes, so the script that runs when GPU time comes is known to work end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saguaro import emulation
from saguaro.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_dry_run_passes_every_step_and_writes_a_loadable_profile(tmp_path, monkeypatch):
    results = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu-check"), "--dry-run", str(results)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    steps = {s["name"]: s for s in json.loads((results / "results.json").read_text())}
    assert list(steps) == ["environment", "exactness", "graphs", "kernels", "calibration", "peer"]
    assert all(s["status"] == "passed" for s in steps.values()), steps
    exact = steps["exactness"]["findings"]
    assert len(exact) == 2 * 2 * 3  # llama and qwen3, fp32 and bf16, AR, SD and SSD
    assert all(v == "3/3 prompts identical" for key, v in exact.items() if "float32" in key), exact
    assert "passed" in steps["kernels"]["findings"]["pytest tests/kernels"]
    assert steps["peer"]["findings"]["ours, batch 1, tok/s"] > 0
    summary = (results / "summary.md").read_text()
    assert "| calibration | passed |" in summary
    # the fitted profile is what --emulate reads from saguaro/assets/profiles
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "h100-measured.json").write_text((results / "h100-measured.json").read_text())
    monkeypatch.setattr(emulation, "MEASURED_PROFILES", profiles)
    profile, dilation = emulation.parse_emulate("h100-measured:x2")
    assert dilation == 2 and profile.target.base_s > 0 and profile.draft.base_s > 0


def test_measured_profiles_join_the_built_in_ones(tmp_path, monkeypatch):
    measured = emulation.Profile(emulation.StepCost(0.012, 280), emulation.StepCost(0.0015, None))
    (tmp_path / "h100-test.json").write_text(emulation.profile_json(measured, "NVIDIA H100 80GB HBM3"))
    monkeypatch.setattr(emulation, "MEASURED_PROFILES", tmp_path)
    assert emulation.parse_emulate("h100-test") == (measured, 1.0)
    assert "h100-70b-1b" in emulation.known_profiles()
    fields = emulation.engine_fields("h100-test:x3", "draft")
    assert fields["emulate_forward_s"] == pytest.approx(0.0045) and fields["emulate_knee_tokens"] is None


def test_a_malformed_profile_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(emulation, "MEASURED_PROFILES", tmp_path)
    (tmp_path / "broken.json").write_text('{"target": {"base_s": 0.01}}')
    with pytest.raises(ConfigError, match="broken.json is not a measured profile"):
        emulation.parse_emulate("h100-70b-1b")
    (tmp_path / "broken.json").write_text('{"target": {"base_s": -1, "knee": 3}, "draft": {"base_s": 0.1, "knee": null}}')
    with pytest.raises(ConfigError, match="base_s must be a positive number"):
        emulation.parse_emulate("broken")
