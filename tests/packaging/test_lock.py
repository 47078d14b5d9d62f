"""The lock (constraints.txt) covers what pyproject.toml asks for, and this environment matches it.

CI and ``scripts/setup`` install from the lock, so the suite runs on the dependency set that was
tested; ``scripts/venv_sync.py`` is how setup tells a stale venv from a broken build.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "constraints.txt"


def _venv_sync():
    spec = importlib.util.spec_from_file_location("venv_sync", REPO / "scripts" / "venv_sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _declared_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = _venv_sync().locked_pins(LOCK)
    for requirement in _declared_requirements():
        name = _venv_sync().canonical(requirement.name)
        assert name in pins, f"{requirement.name} is in pyproject.toml but not in constraints.txt: run bash scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {requirement}: run bash scripts/lock")


def test_torch_is_locked_as_the_cpu_build():
    assert re.search(r"^torch==[\d.]+\+cpu$", LOCK.read_text(), re.M), "the lock pins torch's CPU build"


def test_this_environment_matches_the_lock():
    sync = _venv_sync()
    mismatched, _extras = sync.differences(sync.locked_pins(LOCK), sync.installed())
    assert mismatched == [], "the test environment drifted from constraints.txt (bash scripts/setup syncs it)"


def test_markers_choose_one_pin_per_interpreter(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text(
        "# generated\n"
        "numpy==2.4.6 ; python_full_version < '3.12'\n"
        "    # via saguaro\n"
        "numpy==2.5.5 ; python_full_version >= '3.12'\n"
        "PyYAML==6.0.4\n"
        "colorama==0.4.6 ; sys_platform == 'win32'\n")
    sync = _venv_sync()
    pins = sync.locked_pins(lock)
    assert pins["numpy"] == ("2.4.6" if sys.version_info < (3, 12) else "2.5.5")
    assert pins["pyyaml"] == "6.0.4"
    assert ("colorama" in pins) == (sys.platform == "win32")


def test_differences_name_drift_and_extras_but_not_the_installers():
    sync = _venv_sync()
    pins = {"numpy": "2.4.6", "pyyaml": "6.0.4", "scipy": "1.17.1"}
    have = {"numpy": "2.4.5", "pyyaml": "6.0.4", "leftover": "1.0", "pip": "23.2.1", "saguaro": "0.1.0"}
    mismatched, extras = sync.differences(pins, have)
    assert mismatched == ["numpy 2.4.5 (lock: 2.4.6)"]
    assert extras == ["leftover"]


def test_installing_on_a_gpu_machine_keeps_its_torch_and_triton():
    """`pip install saguaro[gpu]` next to a CUDA torch (2.11 on the device machine, docs/gpu.md)
    must not replace it: torch is a range that holds it, and the extra pins neither torch nor
    the triton that torch's CUDA wheels bring."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    torch_requirement = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch")
    assert torch_requirement.specifier.contains("2.11.0") and torch_requirement.specifier.contains("2.13.0")
    gpu = [Requirement(r).name for r in project["optional-dependencies"]["gpu"]]
    assert "torch" not in gpu and "triton" not in gpu and "flash-attn" in gpu
