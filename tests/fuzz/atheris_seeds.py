"""The shared start of the atheris harnesses: seed inputs, checked, then written to the corpus."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path


def seed_corpus(flags: list[str], seeds: list[bytes], one_input: Callable[[bytes], None]) -> None:
    """Run each seed once (they must pass) and add it to the corpus folder, the first non-flag
    argument, if any: libFuzzer mutates valid messages instead of starting from empty input."""
    folders = [Path(arg) for arg in flags if not arg.startswith("-")]
    for seed in seeds:
        one_input(seed)
        if folders:
            folders[0].mkdir(parents=True, exist_ok=True)
            (folders[0] / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
