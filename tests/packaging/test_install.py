"""``pip install .`` (not editable) into a fresh venv gives a working ``saguaro`` command."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_install_in_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Dependencies (torch is GBs) come from this environment; the package itself is installed fresh.
    Path(site, "_saguaro_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--quiet", str(REPO)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr

    help_run = subprocess.run([str(venv / "bin" / "saguaro"), "--help"], capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0, help_run.stderr
    assert "generate" in help_run.stdout

    probe = subprocess.run(
        [str(py), "-c",
         "import saguaro, saguaro.services.draft, saguaro.services.target, saguaro.kernels, saguaro.v1.speculation_pb2;"
         "print(saguaro.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(site), "saguaro must import from the fresh venv, not the source tree"
    installed = {p.name for p in Path(site).iterdir()}
    assert not {"services", "kernels", "proto", "tests"} & installed, "no generic top-level names in site-packages"
