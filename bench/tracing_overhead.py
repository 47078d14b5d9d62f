"""What observability costs a decode round: baseline vs metrics (tracing off) vs full tracing.

Three configurations of the same SSD target (this process, core 0) talking to one draft
service (a ``saguaro draft`` process, core 1), same prompts, greedy, exactly ``--new-tokens``
each:

* ``baseline``  — no telemetry hook on the engine (``engine.telemetry = None``): the code path
  of an uninstrumented round;
* ``metrics``   — the hook a ``saguaro target`` runs by default: Prometheus counters per round,
  tracing off (no OTEL_* environment);
* ``traced``    — tracing on at sampling 1.0: every request span sampled, an ``ssd.round`` span
  every round on the target and an ``ssd.speculate`` span with its five phase children on the
  draft, exported over OTLP/gRPC (batch processor) to a receiver in a third process.

Configurations are interleaved trial by trial (A B C, B C A, ...) and medians are reported.
Wall-clock tokens/s on a shared machine moves by more than the effect measured, so each run also
reports numbers its neighbours barely disturb:

* hook CPU µs/round — thread CPU time of the engine's hook calls (``start_round`` +
  ``end_round``): what a round pays on the target's critical path;
* target / draft CPU ms per round — CPU time of every thread of each process
  (/proc/<pid>/task/*/schedstat), span export included (the run flushes the target's exporter
  and waits for the draft's before reading the counters).

    python bench/tracing_overhead.py                           # raw CPU timings, batch 1 and 4
    python bench/tracing_overhead.py --regime emulated --trials 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import DEFAULT_MODELS, load_prompts, markdown_table, pin_threads
from saguaro.net import free_port

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("baseline", "metrics", "traced")
DRAFT_EXPORT_WAIT_S = 0.3


def start(cmd: list[str], env: dict, core: int | None, ready: str) -> subprocess.Popen:
    cores = {core} if core is not None else None
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    line = proc.stdout.readline()
    if ready not in line:
        proc.kill()
        raise SystemExit(f"{' '.join(cmd[:4])} failed to start: {line!r}")
    return proc


def timed(rounds_cls):
    """A RoundTelemetry that also accumulates the CPU time its own hook calls take.

    Thread CPU time, not wall time: the engine thread shares the GIL with the draft channel's
    and the span exporter's threads, and waiting for them is not the hook's cost.
    """

    class Timed(rounds_cls):
        hook_s = 0.0
        hook_calls = 0

        def start_round(self, seqs):
            t = time.thread_time()
            out = super().start_round(seqs)
            self.hook_s += time.thread_time() - t
            return out

        def end_round(self, *args):
            t = time.thread_time()
            super().end_round(*args)
            self.hook_s += time.thread_time() - t
            self.hook_calls += 1

    return Timed


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, ns (/proc/<pid>/task/*/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            pass
    return total


def run(engine, config: str, prompts, new_tokens: int, tracer, draft_pid: int) -> dict[str, float]:
    """Generate every prompt in one batch. Tokens/s; the hook's CPU per round; CPU per round of
    the target process and of the draft process (all threads, span export included)."""
    from prometheus_client import CollectorRegistry

    from saguaro import SamplingParams
    from saguaro.services.target.request_telemetry import RequestTelemetry
    from saguaro.services.target.round_telemetry import RoundTelemetry
    from saguaro.telemetry import tracing
    from saguaro.telemetry.metrics import TargetMetrics

    rounds = None
    if config != "baseline":  # (tracing is configured in this process, but only "traced" binds requests)
        rounds = timed(RoundTelemetry)(TargetMetrics(CollectorRegistry(), "target"), tracer, 1.0)
    engine.telemetry = rounds
    requests = RequestTelemetry("target", None, tracer)
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    target_cpu, draft_cpu = cpu_ns(os.getpid()), cpu_ns(draft_pid)
    start_t = time.perf_counter()
    records, seqs = [], []
    for prompt in prompts:
        seqs.append(engine.add_request(prompt, params))
        if config == "traced":  # a sampled request span per request, its rounds traced under it
            records.append(requests.start("bench", (), time.perf_counter()))
            rounds.bind(seqs[-1].seq_id, records[-1].span_context)
    while engine.has_work():
        engine.step()
    seconds = time.perf_counter() - start_t
    for record in records:
        record.span.end()
    tracing.force_flush()  # this run's export work is counted in this run
    time.sleep(DRAFT_EXPORT_WAIT_S)  # and the draft's (its batch processor exports every 100 ms)
    tokens = sum(s.num_output_tokens for s in seqs)
    n_rounds = max(s.stats.rounds for s in seqs)
    return {
        "tokens_per_s": tokens / seconds,
        "hook_us": rounds.hook_s / max(rounds.hook_calls, 1) * 1e6 if rounds is not None else 0.0,
        "rounds": n_rounds,
        "target_cpu_ms": (cpu_ns(os.getpid()) - target_cpu) / 1e6 / n_rounds,
        "draft_cpu_ms": (cpu_ns(draft_pid) - draft_cpu) / 1e6 / n_rounds,
    }


def draft_trace_cost(batch: int, k: int, n: int = 2000) -> float:
    """CPU µs of one draft round's tracing (span, five phase children, attributes), in a hot
    loop with a batch span processor: a lower bound for the in-place cost (cold caches after
    the model's forwards multiply small Python costs; compare the target's hook, measured in place)."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from saguaro.telemetry import attributes as A
    from saguaro.telemetry import tracing
    from saguaro.services.draft.telemetry import round_trace
    from saguaro.v1 import speculation_pb2 as pb

    exporter = InMemorySpanExporter()
    tracing.configure_tracing("saguaro-draft", exporters=[exporter])
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    reply = pb.SpeculateReply(rows=[pb.SpeculateRowReply(seq_id=i, hit=i % 2 == 0, backup=0 if i % 2 == 0 else 1,
                                                         tokens=list(range(k))) for i in range(batch)],
                              timings=pb.DraftTimings(lookup_us=100, backup_us=200, idle_us=50))
    fan = [3] * (k + 1)
    t = time.thread_time()
    for _ in range(n):
        trace = round_trace(carrier, k)
        for phase in (A.LOOKUP_SPAN, A.BACKUP_SPAN):
            trace.mark(phase)
        trace.replied(reply, batch)
        trace.mark(None)
        for phase in (A.GLUE_SPAN, A.FORK_SPAN, A.TREE_SPAN):
            trace.mark(phase)
        trace.end(fan, fan, sum(fan))
    cost = (time.thread_time() - t) / n * 1e6
    tracing.shutdown_tracing()
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=Path, default=DEFAULT_MODELS / "target")
    parser.add_argument("--draft", type=Path, default=DEFAULT_MODELS / "draft")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_MODELS / "prompts.jsonl")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--regime", choices=["raw", "emulated"], default="raw")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--fan-out", type=int, default=3)
    parser.add_argument("--transport", choices=["grpc", "unix", "torch.distributed"], default="unix")
    args = parser.parse_args()
    pin_threads(1)
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[0]})

    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    from saguaro.config import EngineConfig
    from saguaro.emulation import engine_fields
    from saguaro.speculative.settings import DraftSettings
    from saguaro.services.target.local import speculative_engine
    from saguaro.telemetry import tracing
    from saguaro.tokenizer import load_tokenizer

    emulate = "h100-70b-1b" if args.regime == "emulated" else None
    rx_port, draft_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OMP_NUM_THREADS"] = "1"
    receiver = start([sys.executable, "-m", "saguaro.telemetry.receiver", "--port", str(rx_port), "--quiet"], env,
                     None, "OTLP trace receiver")
    endpoint = f"http://127.0.0.1:{rx_port}"
    draft_cmd = [sys.executable, "-m", "saguaro.cli", "draft", "--model", str(args.draft), "--port", str(draft_port),
                 "--k", str(args.k), "--fan-out", str(args.fan_out), "--kv-cache-bytes", str(1 << 28),
                 "--metrics-port", "0"]
    if emulate:
        draft_cmd += ["--emulate", emulate]
    draft = start(draft_cmd, dict(env, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="100"), cores[-1],
                  "listening")
    tracing.configure_tracing("saguaro-target", exporters=[OTLPSpanExporter(endpoint=endpoint, insecure=True)])
    tracer = tracing.tracer()
    prompts = load_prompts(args.prompts, load_tokenizer(args.target), max(args.batch_sizes))
    rows = []
    try:
        for batch in args.batch_sizes:
            config = EngineConfig(model=str(args.target), max_num_seqs=batch, kv_cache_bytes=1 << 28,
                                  show_progress=False, **engine_fields(emulate, "target"))
            engine = speculative_engine(config, "ssd", None, DraftSettings(k=args.k, fan_out=args.fan_out),
                                        draft_address=f"127.0.0.1:{draft_port}",
                                        fast_path=None if args.transport == "grpc" else args.transport)
            run(engine, "baseline", prompts[:1], 16, tracer, draft.pid)  # warm-up
            results: dict[str, list[dict[str, float]]] = {c: [] for c in CONFIGS}
            for trial in range(args.trials):
                order = CONFIGS[trial % 3:] + CONFIGS[:trial % 3]
                for c in order:
                    results[c].append(run(engine, c, prompts[:batch], args.new_tokens, tracer, draft.pid))
            engine.proposer.close()

            def median(c: str, key: str) -> float:
                return statistics.median(r[key] for r in results[c])

            base = {key: median("baseline", key) for key in ("tokens_per_s", "target_cpu_ms", "draft_cpu_ms")}
            for c in CONFIGS:
                tps, hook = median(c, "tokens_per_s"), median(c, "hook_us")
                target_cpu, draft_cpu = median(c, "target_cpu_ms"), median(c, "draft_cpu_ms")
                round_ms = batch * args.new_tokens / base["tokens_per_s"] / results[c][0]["rounds"] * 1000
                rows.append([args.regime, batch, c, round(tps, 1), f"{(tps / base['tokens_per_s'] - 1) * 100:+.1f} %",
                             round(round_ms, 1), round(hook, 1), f"{hook / 10 / round_ms:.2f} %",
                             round(target_cpu, 2), f"{(target_cpu / base['target_cpu_ms'] - 1) * 100:+.1f} %",
                             round(draft_cpu, 2), f"{(draft_cpu / base['draft_cpu_ms'] - 1) * 100:+.1f} %"])
            print(f"done: batch {batch}", file=sys.stderr, flush=True)
    finally:
        tracing.shutdown_tracing()
        for proc in (draft, receiver):
            proc.kill()
            proc.wait()
    print(markdown_table(["regime", "batch", "config", "tokens/s", "vs base", "round ms", "hook CPU µs/round",
                          "hook / round", "target CPU ms/round", "vs base", "draft CPU ms/round", "vs base"], rows))
    draft_costs = [f"batch {b}: {draft_trace_cost(b, args.k):.0f} µs" for b in args.batch_sizes]
    print(f"\ndraft-side tracing per round (hot loop, thread CPU, a lower bound): {', '.join(draft_costs)}")
    print(f"{args.trials} interleaved trials per config, {args.new_tokens} new tokens per request, SSD K={args.k} "
          f"F={args.fan_out}, transport {args.transport}, target core {cores[0]}, draft core {cores[-1]}.")


if __name__ == "__main__":
    main()
