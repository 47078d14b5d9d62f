"""``saguaro up``: the whole stack on this host (``saguaro.local_stack``), supervised until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json

from saguaro.cli_options import engine_argv, speculation_argv, speculation_settings
from saguaro.telemetry.exposition import parse_metrics_labels


# The label that names a process's pool, as the Helm chart sets it on every pod's series
# (helm/saguaro/templates/_helpers.tpl, saguaro.metricsLabelArgs), so the chart's autoscaling
# queries select a local stack's series the way they select a release's.
POOL_LABEL = "saguaro_pool"


class _Terminate(Exception):
    """SIGTERM received."""


def metrics_label_argv(labels: list[str], pool: str) -> list[str]:
    """``--metrics-label`` arguments for one child: the stack's labels plus its pool."""
    return [arg for label in [*labels, f"{POOL_LABEL}={pool}"] for arg in ("--metrics-label", label)]


def openai_argv(args: argparse.Namespace) -> list[str]:
    """The gateway's OpenAI API flags, passed through as given."""
    argv = ["--generation-config", args.generation_config]
    if args.chat_template:
        argv += ["--chat-template", args.chat_template]
    if args.served_model_name:
        argv += ["--served-model-name", *args.served_model_name]
    return argv


def cmd_up(args: argparse.Namespace) -> int:
    import signal
    import time

    from saguaro.local_stack import LocalStack

    if args.mode != "ar":
        speculation_settings(args)  # refuse bad K / fan-out before starting anything
    parse_metrics_labels(args.metrics_label)  # and bad labels
    spec = speculation_argv(args) if args.mode != "ar" else []
    gateway_args = (["--block-size", str(args.block_size)] + (["--redis-url", args.redis_url] if args.redis_url else [])
                    + metrics_label_argv(args.metrics_label, "gateway") + openai_argv(args))
    stack = LocalStack(args.target, args.draft, mode=args.mode, host=args.host, port=args.port,
                       http_port=args.http_port or None, target_port=args.target_port, gateway_args=gateway_args,
                       draft_port=args.draft_port, extra_args=engine_argv(args) + spec,
                       target_args=["--draft-timeout", str(args.draft_timeout), "--metrics-port", str(args.metrics_port),
                                    "--draft-soft-deadline" if args.draft_soft_deadline else "--no-draft-soft-deadline",
                                    "--fast-path", args.fast_path,
                                    "--speculation-policy", args.speculation_policy,
                                    "--log-format", args.log_format,
                                    "--tensor-parallel-size", str(args.tensor_parallel_size),
                                    *metrics_label_argv(args.metrics_label, "target")],
                       draft_args=["--log-format", args.log_format, *metrics_label_argv(args.metrics_label, "draft")],
                       draft_workers=args.draft_workers,
                       draft_metrics_port=args.metrics_port + 1 if args.metrics_port else 0,
                       verbose=args.verbose)

    def terminate(signum, frame):
        raise _Terminate()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        stack.start(timeout=args.startup_timeout)
        gateway = stack.children["gateway"]
        rows = [("public API (gRPC)", stack.endpoint, gateway)]
        if stack.http_url:
            rows.append(("OpenAI API (HTTP)", stack.http_url, gateway))
        rows.append(("target (internal)", stack.target_address, stack.children["target"]))
        for name, address in zip(stack.draft_cmds, stack.draft_addresses):
            rows.append((f"{name} (Speculation)", address, stack.children[name]))
        print(f"ready: saguaro stack serving, mode {args.mode}", flush=True)
        for label, address, child in rows:
            core = f"core {min(child.cpus)}" if child.cpus else "unpinned"
            print(f"  {label:<24} {address:<22} {child.name} pid {child.proc.pid}, {core}", flush=True)
        print(f'try: saguaro generate --endpoint {stack.endpoint} --prompt "def add(a, b):" --json', flush=True)
        if stack.http_url:
            from pathlib import Path

            model = args.served_model_name[0] if args.served_model_name else Path(args.target).name
            body = json.dumps({"model": model, "prompt": "def add(a, b):", "max_tokens": 16})
            print(f"     curl {stack.http_url}/v1/completions -H 'Content-Type: application/json' -d '{body}'", flush=True)
        print("Ctrl-C stops all services.", flush=True)
        while True:
            stack.check()
            time.sleep(0.5)
    except (_Terminate, KeyboardInterrupt):
        print("stopping the stack ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
