"""Every test module has a basename of its own.

The suite imports test modules with ``--import-mode=importlib``, so two ``test_cli.py`` files
would still both run; but a failure report, ``--durations`` or ``-k`` line naming just
``test_cli.py`` would be ambiguous, and a change to the import mode would break collection.
A unique, descriptive name says which part of the system a module tests.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename():
    patterns = ("test_*.py", "*_test.py")  # pytest's default python_files
    modules = {path for pattern in patterns for path in TESTS.rglob(pattern)}
    by_name: defaultdict[str, list[str]] = defaultdict(list)
    for path in modules:
        by_name[path.name].append(str(path.relative_to(TESTS)))
    assert len(by_name) > 50  # the walk found the suite
    duplicates = {name: sorted(paths) for name, paths in by_name.items() if len(paths) > 1}
    assert duplicates == {}, f"rename these test modules so each basename is unique: {duplicates}"
