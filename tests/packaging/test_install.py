"""``pip install .`` and ``pip install -e .`` into a fresh venv give a working ``saguaro``."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds fresh virtual environments and installs into them

REPO = Path(__file__).resolve().parents[2]


SUBPACKAGES = "saguaro.services.draft.worker, saguaro.services.target.verifier, saguaro.kernels.dispatch, saguaro.v1.speculation_pb2"


def _fresh_venv(tmp_path: Path, *install_args: str) -> tuple[Path, str]:
    """A new venv with saguaro installed by pip; dependencies (torch is GBs) come from this one."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_saguaro_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--quiet", *install_args],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    return venv, site


def test_editable_install_in_fresh_venv(tmp_path):
    venv, _ = _fresh_venv(tmp_path, "-e", str(REPO))
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         f"import saguaro, {SUBPACKAGES}; print(saguaro.kernels.dispatch.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()).resolve().is_relative_to(REPO), "an editable install runs the source tree"
    bare = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('services'))"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bare.stdout.strip() == "None", "an editable install must not put the repository root on sys.path"


def test_wheel_install_in_fresh_venv(tmp_path):
    venv, site = _fresh_venv(tmp_path, str(REPO))
    py = venv / "bin" / "python"

    help_run = subprocess.run([str(venv / "bin" / "saguaro"), "--help"], capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0, help_run.stderr
    assert "generate" in help_run.stdout

    probe = subprocess.run(
        [str(py), "-c",
         f"import saguaro, {SUBPACKAGES}; print(saguaro.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(site), "saguaro must import from the fresh venv, not the source tree"
    installed = {p.name for p in Path(site).iterdir()}
    assert not {"services", "kernels", "proto", "tests"} & installed, "no generic top-level names in site-packages"
