"""Chaos: every fault of ``saguaro_loadtest.faults.FAULT_PLAN`` under load, counted per fault.

What ``tests/chaos/test_faults.py`` runs once, ``--rounds`` times, each round on a fresh stack
(redis-server, two draft + SSD target pairs, a gateway; all child processes) with its own seeds
(round 0 uses the test's). Per fault: SIGKILL or SIGSTOP/SIGCONT of one service at a random
moment while ``--concurrency`` clients stream greedy requests through the gateway; every output
is compared token by token with target-only greedy decoding. Reported per fault: requests and
their outcomes (completed exactly / failed retryably before the first token / failed otherwise /
corrupted), requests in flight and mid-stream when it hit, the fault windows, and whether a
request right after it completed. Exit status 1 if anything failed non-retryably, was corrupted,
or the stack did not recover.

    python bench/chaos.py --rounds 5 --json chaos.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import markdown_table, pin_threads

sys.path.insert(0, str(Path(__file__).resolve().parent / "harness"))  # saguaro_loadtest (docs/reliability.md)

from saguaro_loadtest.faults import FAULT_PLAN, fault_name, run_fault  # noqa: E402
from saguaro_loadtest.load import OUTCOMES  # noqa: E402
from saguaro_loadtest.stack import Stack, StackSpec  # noqa: E402
from saguaro_loadtest.workload import Workload, prompt_pool, reference_outputs, tiny_pair  # noqa: E402

TEST_SEED = 20260  # tests/chaos/test_faults.py
MAX_TOKENS = 24
PROMPTS = 16


def run(args: argparse.Namespace, scratch: Path) -> dict[str, dict]:
    from saguaro.config import ModelConfig

    target, draft = (args.target, args.draft) if args.target else tiny_pair(scratch / "models")
    prompts = prompt_pool(PROMPTS, ModelConfig.from_dir(target).vocab_size, seed=9)
    workload = Workload(prompts, reference_outputs(target, prompts, MAX_TOKENS), MAX_TOKENS)
    faults = {fault_name(*f): {"runs": [], **{kind: 0 for kind in OUTCOMES}} for f in FAULT_PLAN}
    for round_ in range(args.rounds):
        log_dir = (Path(args.log_dir) if args.log_dir else scratch / "logs") / f"round{round_}"
        stack = Stack(StackSpec(target, draft, log_dir)).start()
        try:
            for i, (service, fault) in enumerate(FAULT_PLAN):
                result = run_fault(stack, workload, service, fault, seed=TEST_SEED + 1000 * round_ + i,
                                   concurrency=args.concurrency)
                entry = faults[fault_name(service, fault)]
                entry["runs"].append(result.as_dict())
                for kind in OUTCOMES:
                    entry[kind] += result.counts[kind]
                print(f"round {round_} {fault_name(service, fault)}: {result.counts}, recovered {result.recovered}",
                      flush=True)
        finally:
            stack.stop()
    return faults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh stacks, each through the whole plan (default: 3)")
    parser.add_argument("--concurrency", type=int, default=4, help="streaming clients (default: 4, as the test)")
    parser.add_argument("--target", default=None, help="target model folder (default: a tiny random Llama built here)")
    parser.add_argument("--draft", default=None, help="draft model folder (default: a perturbed copy of the target)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every run's result here")
    parser.add_argument("--log-dir", default=None, help="the services' logs (default: a temporary folder)")
    args = parser.parse_args()
    if (args.target is None) != (args.draft is None):
        parser.error("give both --target and --draft, or neither")
    pin_threads(1)
    with tempfile.TemporaryDirectory(prefix="saguaro-chaos-") as scratch:
        faults = run(args, Path(scratch))
    rows, clean = [], True
    for name, entry in faults.items():
        runs = entry["runs"]
        windows = [r["window_s"] for r in runs if r["window_s"] is not None]
        recovered = sum(r["recovered"] for r in runs)
        clean &= entry["failed"] == entry["corrupted"] == 0 and recovered == len(runs)
        gateway = [r for r in runs if r["gateway_retries"] is not None]  # not when the gateway itself restarted
        rows.append([name, len(runs), sum(r["counts"][k] for r in runs for k in OUTCOMES), entry["completed"],
                     entry["failed_retryable"], entry["failed"], entry["corrupted"],
                     sum(r["inflight_at_fault"] for r in runs), sum(r["midstream_at_fault"] for r in runs),
                     sum(r["gateway_retries"] for r in gateway) if gateway else "-",
                     sum(r["gateway_migrations"] for r in gateway) if gateway else "-",
                     f"{min(windows):.1f}-{max(windows):.1f}" if windows else "stays down",
                     f"{recovered}/{len(runs)}"])
    print(markdown_table(["fault", "runs", "requests", "completed", "failed retryable", "failed", "corrupted",
                          "in flight at fault", "mid-stream at fault", "gateway retries", "migrations", "window s",
                          "recovered"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": "python bench/chaos.py " + " ".join(sys.argv[1:]),
                                               "faults": faults}, indent=2) + "\n")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
