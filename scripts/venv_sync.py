#!/usr/bin/env python3
"""Compare the running environment with the lock (constraints.txt), and optionally prune it.

    .venv/bin/python scripts/venv_sync.py            # exit 0 in sync, 1 naming each difference
    .venv/bin/python scripts/venv_sync.py --prune    # uninstall what the lock no longer lists

``scripts/setup`` runs this to tell a stale venv (made from an older lock, or changed by hand)
apart from a broken build: a stale one is named and synced before anything runs, so a failure
after setup is the code's, not the environment's. Only packages that the lock lists for this
interpreter (their environment markers hold) are compared; the project itself and the installer
tools (pip, uv, wheel) are never counted as extras.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
NEVER_PRUNED = {"pip", "uv", "wheel", "saguaro"}
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;]+)\s*(?:;\s*(.+))?$")


def canonical(name: str) -> str:
    """PEP 503 name normalisation: the lock writes ``pyyaml``, metadata says ``PyYAML``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(lock: Path) -> dict[str, str]:
    """Name -> exact version for every lock line whose environment marker holds here."""
    from packaging.markers import Marker  # a dependency of transformers, so present after install

    pins: dict[str, str] = {}
    for raw in lock.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        match = _PIN.match(line)
        if match is None:
            raise SystemExit(f"{lock.name}: cannot read the line {raw!r} (expected NAME==VERSION [; marker])")
        name, version, marker = match.groups()
        if marker is None or Marker(marker).evaluate():
            pins[canonical(name)] = version
    return pins


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def differences(pins: dict[str, str], have: dict[str, str]) -> tuple[list[str], list[str]]:
    """(version mismatches, extras). A locked package that is not installed is no mismatch:
    the lock constrains, and only what pyproject.toml asks for gets installed."""
    mismatched = [f"{name} {have[name]} (lock: {want})" for name, want in sorted(pins.items())
                  if name in have and have[name] != want]
    extras = sorted(name for name in have if name not in pins and name not in NEVER_PRUNED)
    return mismatched, extras


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prune", action="store_true", help="uninstall installed packages the lock does not list")
    args = parser.parse_args()
    try:
        pins = locked_pins(LOCK)
    except ImportError:
        print("venv-sync: packaging is not installed yet", file=sys.stderr)
        return 1
    mismatched, extras = differences(pins, installed())
    if args.prune and extras:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *extras], check=True)
        print(f"venv-sync: removed {len(extras)} package(s) the lock does not list: {', '.join(extras)}", file=sys.stderr)
        extras = []
    for line in mismatched:
        print(f"venv-sync: {line}", file=sys.stderr)
    for name in extras:
        print(f"venv-sync: {name} is installed but not in {LOCK.name}", file=sys.stderr)
    return 1 if mismatched or extras else 0


if __name__ == "__main__":
    sys.exit(main())
