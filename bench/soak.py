"""Soak: N concurrent streaming clients for M minutes against a local stack, every output checked.

The stack is real processes (``saguaro_loadtest.stack.Stack``, bench/harness): redis-server, ``--pairs`` ×
(``saguaro draft``, ``saguaro target --mode ssd``) and ``saguaro gateway`` in front, as
``saguaro up --redis-url`` runs them. ``--concurrency`` clients (the async SDK, one streamed
message per token) send greedy requests one after another for ``--minutes``; every output is
compared token by token with target-only greedy decoding (the in-process AR engine, computed
once), so a lost, repeated or wrong token is counted. Reported: requests, tokens, throughput,
p50/p99 latency and time to first token, outcome counts (anything but ``completed`` is an
error: there are no faults here), and the resident memory of every process (first sample, peak,
last, and at every progress line) sampled every second. Exit status 1 when any request was not completed exactly.

    python bench/soak.py --minutes 10 --concurrency 8          # tiny random models built here
    python bench/soak.py --seconds 60 --concurrency 4 --json out.json
    python bench/soak.py --target T_DIR --draft D_DIR --minutes 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import markdown_table, pin_threads

sys.path.insert(0, str(Path(__file__).resolve().parent / "harness"))  # saguaro_loadtest (docs/reliability.md)

from saguaro_loadtest.load import LoadGenerator, summary  # noqa: E402
from saguaro_loadtest.measure import RssSampler, scrape_metric  # noqa: E402
from saguaro_loadtest.stack import Stack, StackSpec  # noqa: E402
from saguaro_loadtest.workload import Workload, prompt_pool, reference_outputs, tiny_pair  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    duration = parser.add_mutually_exclusive_group()
    duration.add_argument("--minutes", type=float, default=None, help="length of the load (default: 10)")
    duration.add_argument("--seconds", type=float, default=None, help="length of the load, in seconds")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent streaming clients (default: 8)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request (default: 32)")
    parser.add_argument("--prompts", type=int, default=64, help="distinct prompts, 4-40 random tokens (default: 64)")
    parser.add_argument("--pairs", type=int, default=1, help="(draft, target) pairs behind the gateway (default: 1)")
    parser.add_argument("--no-redis", action="store_true", help="prefix index in the gateway instead of Redis")
    parser.add_argument("--target", default=None, help="target model folder (default: a tiny random Llama built here)")
    parser.add_argument("--draft", default=None, help="draft model folder (default: a perturbed copy of the target)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress-s", type=float, default=60.0, help="print a progress line this often")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    parser.add_argument("--log-dir", default=None, help="the services' logs (default: a temporary folder)")
    args = parser.parse_args(argv)
    args.duration_s = args.seconds if args.seconds is not None else 60.0 * (args.minutes or 10.0)
    if (args.target is None) != (args.draft is None):
        parser.error("give both --target and --draft, or neither")
    return args


def run(args: argparse.Namespace, scratch: Path) -> dict:
    from saguaro.config import ModelConfig

    target, draft = (args.target, args.draft) if args.target else tiny_pair(scratch / "models")
    prompts = prompt_pool(args.prompts, ModelConfig.from_dir(target).vocab_size, seed=args.seed)
    workload = Workload(prompts, reference_outputs(target, prompts, args.max_tokens), args.max_tokens)
    log_dir = Path(args.log_dir) if args.log_dir else scratch / "logs"
    stack = Stack(StackSpec(target, draft, log_dir, pairs=args.pairs, redis=not args.no_redis, target_metrics=True,
                            draft_timeout_s=5.0)).start()  # the command's default: no faults here
    try:
        memory = RssSampler(stack, interval_s=1.0).start()
        load = LoadGenerator(stack.endpoint, workload, args.concurrency, seed=args.seed, retries=0).start()
        next_report = args.progress_s
        timeline = []  # RSS of every process at each progress line: growth after warm-up shows here
        while load.elapsed() < args.duration_s:
            time.sleep(min(1.0, max(0.0, args.duration_s - load.elapsed())))
            dead = [name for name, service in stack.services.items() if not service.alive()]
            if dead:
                raise SystemExit(f"soak: {', '.join(dead)} exited; logs in {log_dir}")
            if load.elapsed() >= next_report:
                next_report += args.progress_s
                done = list(load.outcomes)
                errors = sum(o.kind != "completed" for o in done)
                now = {name: round(b / (1 << 20), 1) for name, b in dict(memory.last).items()}
                timeline.append({"s": round(load.elapsed()), "requests": len(done), "errors": errors, "rss_mib": now})
                print(f"  {load.elapsed():6.0f} s: {len(done)} requests, {errors} errors, RSS MiB {now}", flush=True)
        outcomes = load.stop()
        seconds = load.elapsed()
        rss = memory.stop()
        alive = {name: service.alive() for name, service in stack.services.items()}
        metrics = {name: {"preemptions": scrape_metric(stack.metrics_url(name), "vllm:num_preemptions_total"),
                          "draft_failures": scrape_metric(stack.metrics_url(name), "saguaro_draft_failures_total")}
                   for name in stack.names("target")}
    finally:
        stack.stop()
    return {
        "command": "python bench/soak.py " + " ".join(sys.argv[1:]),
        "config": {"duration_s": args.duration_s, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
                   "prompts": args.prompts, "pairs": args.pairs, "redis": not args.no_redis,
                   "target": args.target or "tiny random llama", "draft": args.draft or "perturbed copy"},
        "summary": summary(outcomes, seconds),
        "errors": sorted({o.error for o in outcomes if o.error})[:20],
        "memory_mib": rss,
        "timeline": timeline,
        "targets": metrics,
        "all_alive_at_end": all(alive.values()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin_threads(1)
    print(f"soak: {args.concurrency} streaming clients for {args.duration_s:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="saguaro-soak-") as scratch:
        result = run(args, Path(scratch))
    s = result["summary"]
    print(markdown_table(["requests", "completed", "errors", "tokens", "req/s", "tok/s", "p50 s", "p99 s",
                          "TTFT p50 s", "TTFT p99 s"],
                         [[s["requests"], s["completed"], s["requests"] - s["completed"], s["tokens"],
                           s["requests_per_s"], s["tokens_per_s"], s["latency_p50_s"], s["latency_p99_s"],
                           s["ttft_p50_s"], s["ttft_p99_s"]]]))
    print()
    print(markdown_table(["process", "first MiB", "peak MiB", "last MiB"],
                         [[name, m["first_mib"], m["peak_mib"], m["last_mib"]]
                          for name, m in result["memory_mib"].items()]))
    if result["errors"]:
        print("errors:", *result["errors"], sep="\n  ")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    clean = s["completed"] == s["requests"] > 0 and result["all_alive_at_end"]
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
