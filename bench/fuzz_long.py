"""The fuzz tests under the ``long`` profile, with the examples each test executed.

Runs tests/fuzz one file at a time (so a time cap loses at most the file it interrupts) with
``SAGUARO_FUZZ_PROFILE=long`` and hypothesis' statistics, and prints per test: the examples run
(passing + failing, every phase), those hypothesis discarded as invalid, and the outcome; then the
total. atheris harnesses report libFuzzer runs. Exit status 1 when a test failed or the cap cut a
file short.

    nice -n 19 python bench/fuzz_long.py                       # capped at 20 minutes
    nice -n 19 python bench/fuzz_long.py --minutes 60 --json bench/results/fuzz_long.json
    nice -n 19 python bench/fuzz_long.py --files test_http_fuzz.py      # one file
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import markdown_table

ROOT = Path(__file__).resolve().parents[1]
# Pure parsers first: they hold most of the examples; then the live servers, then model loading.
ORDER = ["test_openai_parser.py", "test_speculation_codec.py", "test_config_fuzz.py", "test_atheris.py",
         "test_regressions.py", "test_draft_fuzz.py", "test_grpc_fuzz.py", "test_http_fuzz.py", "test_openapi.py"]
HEADER = re.compile(r"^tests/fuzz/\S+::\S+:\s*$")  # a test's block in --hypothesis-show-statistics
PHASE = re.compile(r"- (\d+) passing, (\d+) failing, and (\d+) invalid test cases")
RESULT = re.compile(r"^(PASSED|FAILED|ERROR) (tests/fuzz/\S+::\S+)", re.M)  # pytest -rA summary lines


def statistics(output: str) -> dict[str, dict[str, int]]:
    """Per test id (parametrized ids merged): examples run and invalid, from --hypothesis-show-statistics."""
    counts: dict[str, dict[str, int]] = {}
    current = None
    for line in output.splitlines():
        if HEADER.match(line):
            current = counts.setdefault(line.rstrip()[:-1], {"examples": 0, "invalid": 0})
        elif current is not None and (m := PHASE.search(line)):
            current["examples"] += int(m[1]) + int(m[2])
            current["invalid"] += int(m[3])
    return counts


def run_file(name: str, seconds: float) -> tuple[str, int | None]:
    """pytest's output and exit status (None: cut by the time cap)."""
    env = dict(os.environ, SAGUARO_FUZZ_PROFILE="long", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", f"tests/fuzz/{name}", "-p", "no:cacheprovider", "-rA", "-q",
           "--hypothesis-show-statistics"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, errors="replace",
                              timeout=seconds)
        return proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return out, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="cap on the whole run (default 20)")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-test counts here")
    parser.add_argument("--files", nargs="+", default=ORDER, metavar="TEST_FILE",
                        help="only these files of tests/fuzz (default: all, parsers first)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from fuzz.support import ATHERIS_RUNS

    deadline = time.monotonic() + args.minutes * 60
    rows, results, complete = [], {}, True
    for name in args.files:
        left = deadline - time.monotonic()
        if left < 30:
            print(f"{name}: not run (the {args.minutes:g}-minute cap is reached)", flush=True)
            complete = False
            continue
        started = time.monotonic()
        output, code = run_file(name, left)
        outcomes = {test: outcome for outcome, test in RESULT.findall(output)}
        finished = code is not None
        if finished and code not in (0, 1) or not outcomes:  # killed (a signal, the OOM killer) or no report
            outcomes[f"tests/fuzz/{name}"] = f"ERROR (exit status {code})"
        complete &= finished
        for test, count in statistics(output).items():
            rows.append([test.removeprefix("tests/fuzz/"), count["examples"], count["invalid"], "hypothesis"])
        for test, outcome in outcomes.items():
            results[test] = outcome
            if "atheris" in test:
                runs = ATHERIS_RUNS["long"] if outcome == "PASSED" else 0
                rows.append([test.removeprefix("tests/fuzz/"), runs, 0, "atheris (libFuzzer runs)"])
        state = "done" if finished else "cut by the time cap"
        print(f"{name}: {state} in {time.monotonic() - started:.0f} s, "
              f"{sum(v == 'PASSED' for v in outcomes.values())} passed, "
              f"{sum(v != 'PASSED' for v in outcomes.values())} failed", flush=True)
        if any(v != "PASSED" for v in outcomes.values()):
            print(output[-6000:], flush=True)
    hypothesis_total = sum(r[1] for r in rows if r[3] == "hypothesis")
    atheris_total = sum(r[1] for r in rows if r[3] != "hypothesis")
    print()
    print(markdown_table(["test", "examples", "invalid", "engine"], rows))
    print(f"\nhypothesis examples: {hypothesis_total:,}; atheris runs: {atheris_total:,}; "
          f"failed tests: {sum(v != 'PASSED' for v in results.values())}; complete: {complete}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "hypothesis_examples": hypothesis_total,
                                         "atheris_runs": atheris_total, "results": results, "complete": complete},
                                        indent=2))
    return 0 if complete and all(v == "PASSED" for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
