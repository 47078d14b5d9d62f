"""No top-level folder of this repository shadows an installed package.

transformers (>= 5.25) imports Hugging Face's ``kernels`` package whenever it loads a model or a
tokenizer. Python puts the current directory first on ``sys.path`` for ``python -c``,
``python -m`` and every service process started from the repository root, so a top-level
``kernels/__init__.py`` here once won that import and broke every model load. The folders stay
at the top level (the layout reads as the architecture) but are not regular packages; these tests
fail if that ever changes.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP_LEVEL_SOURCE_FOLDERS = ("kernels", "services")


def _run_from_repo_root(code: str) -> subprocess.CompletedProcess:
    """``python -c`` with the repository root as working directory: sys.path[0] is the root."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_transformers_loads_its_kernels_integration_from_the_repo_root():
    proc = _run_from_repo_root(
        "import transformers.integrations.hub_kernels; from transformers import AutoTokenizer; print('ok')")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_bare_kernels_import_resolves_outside_the_repository():
    if importlib.util.find_spec("kernels") is None:
        pytest.fail("Hugging Face's `kernels` package is not installed: transformers needs it to load models")
    proc = _run_from_repo_root("import kernels; print(kernels.__file__)")
    assert proc.returncode == 0, proc.stderr
    location = Path(proc.stdout.strip()).resolve()
    assert not location.is_relative_to(REPO / "kernels"), f"`import kernels` found this repository's folder: {location}"
    assert "site-packages" in location.parts


@pytest.mark.parametrize("folder", TOP_LEVEL_SOURCE_FOLDERS)
def test_top_level_source_folders_are_not_regular_packages(folder):
    """A folder without __init__.py is at most a namespace portion, and any installed regular
    package of the same name wins over it, wherever it stands on sys.path."""
    assert (REPO / folder).is_dir()
    assert not (REPO / folder / "__init__.py").exists(), f"{folder}/__init__.py would shadow installed `{folder}`"


@pytest.mark.parametrize("folder", TOP_LEVEL_SOURCE_FOLDERS)
def test_the_package_reaches_the_top_level_folders_through_links(folder):
    link = REPO / "saguaro" / folder
    assert link.is_symlink() and link.resolve() == (REPO / folder).resolve()


def test_saguaro_subpackages_import_from_the_repo_root():
    proc = _run_from_repo_root(
        "import saguaro.kernels.dispatch, saguaro.services.target.verifier, saguaro.services.draft.worker;"
        "import saguaro.kernels as k; print(list(k.__path__))")
    assert proc.returncode == 0, proc.stderr
    assert "kernels" in proc.stdout
