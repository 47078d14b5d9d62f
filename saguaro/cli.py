"""The ``saguaro`` command line: its parser and entry point (``saguaro.cli:main``).

The shared flag groups are ``saguaro.cli_options``, the commands ``saguaro.cli_commands`` and
``saguaro.cli_up``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from saguaro.cli_commands import cmd_demo, cmd_draft, cmd_fetch_model, cmd_gateway, cmd_generate, cmd_target
from saguaro.cli_options import (FAST_PATH_HELP, SOFT_DEADLINE_HELP, SPECULATION_POLICY_HELP, ServiceCommand,
                                 add_draft_tls_args, add_engine_args, add_metrics_label_arg, add_sampling_args,
                                 add_speculation_args, add_telemetry_args, add_tls_server_args, service_parser)
from saguaro.cli_up import cmd_up
from saguaro.errors import SaguaroError

DRAFT_COMMAND = ServiceCommand(
    "draft", 50061, "the Speculation service",
    summary="serve a draft model (the Speculation gRPC service a target connects to)",
    description="Run the draft service: it owns the draft model, its KV cache and the speculation cache, "
    "and builds speculations for every likely verification outcome while the target verifies. "
    "K and fan-out are agreed per session at handshake; the values here size the initial cache.",
)
TARGET_COMMAND = ServiceCommand(
    "target", 50051, "the public API",
    summary="serve a target model: the public Inference gRPC API (ar, sd or ssd decoding)",
    description="Run the target service: it owns the target model, schedules requests with continuous batching "
    "and verifies the draft's speculations. --mode ssd talks to a draft service (`saguaro draft`) at "
    "--draft-address; --mode sd runs the draft synchronously in this process; --mode ar uses no draft.",
)


def _pod_namespace() -> str:
    """The namespace this pod runs in (service-account mount), else "default"."""
    from pathlib import Path

    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.is_file() else "default"


def add_gateway_parser(sub) -> None:
    gateway = sub.add_parser(
        "gateway",
        help="serve the public API in front of target pods: routing, prefix index, OpenAI HTTP",
        description="Run the gateway: the public Inference gRPC API and an OpenAI-compatible HTTP API, routing each "
        "request to a healthy target pod by load and by which pod holds the prompt's prefix in its KV cache "
        "(docs/gateway.md). Targets: a static --targets list, or --discovery kubernetes (EndpointSlices of --service).",
    )
    gateway.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    gateway.add_argument("--port", type=int, default=50050, help="public gRPC port (default: 50050)")
    gateway.add_argument("--http-port", type=int, default=8000, help="OpenAI-compatible HTTP port, also /healthz, "
                         "/readyz and /metrics (default: 8000; 0 disables)")
    group = gateway.add_argument_group("targets")
    group.add_argument("--targets", nargs="+", metavar="HOST:PORT", help="static list of target services")
    group.add_argument("--discovery", choices=["static", "kubernetes"], default="static",
                       help="static: --targets; kubernetes: watch the EndpointSlices of --service (default: static)")
    group.add_argument("--namespace", default=_pod_namespace(),
                       help="kubernetes: namespace of the target Service (default: this pod's, else default)")
    group.add_argument("--service", default=None, help="kubernetes: name of the target Service")
    group.add_argument("--target-port", type=int, default=50051, help="kubernetes: the targets' gRPC port (default: 50051)")
    group = gateway.add_argument_group("routing")
    group.add_argument("--policy", choices=["prefix", "least-load", "round-robin"], default="prefix",
                       help="prefix: prefix-cache hits, then load (default); least-load; round-robin")
    group.add_argument("--redis-url", default=None, metavar="URL",
                       help="keep the prefix index in Redis, shared by gateway replicas (default: in-process)")
    group.add_argument("--block-size", type=int, default=16, help="KV block size of the targets (must match; default: 16)")
    group.add_argument("--max-queue", type=int, default=256,
                       help="requests waiting for their first token; more get 429 / RESOURCE_EXHAUSTED (default: 256)")
    group.add_argument("--max-migrations", type=int, default=2,
                       help="times a request whose target fails mid-stream is resumed on another target; then its "
                            "stream ends with an error (default: 2; 0: never)")
    group.add_argument("--served-model-name", "--model-name", nargs="+", default=None, metavar="NAME",
                       dest="served_model_name",
                       help="model names clients use (OpenAI 'model'): requests may name any, responses carry the "
                            "first (default: the targets' model folder name)")
    group = gateway.add_argument_group("OpenAI API")
    group.add_argument("--generation-config", default="auto", metavar="auto|vllm|FOLDER",
                       help="sampling defaults for requests that leave temperature, top_p, top_k unset (and a bound "
                            "on max_tokens): auto, the model's generation_config.json (default); vllm, none; or "
                            "FOLDER's generation_config.json (as vLLM's flag)")
    group.add_argument("--chat-template", default=None, metavar="FILE",
                       help="Jinja chat template for chat requests, instead of the tokenizer's (without either, "
                            "chat requests are refused)")
    group = gateway.add_argument_group("security")
    group.add_argument("--api-keys-file", default=None, metavar="PATH",
                       help="require 'Authorization: Bearer <key>' with a key from this file (one per line); "
                            "keys in $SAGUARO_API_KEYS (comma-separated) count too")
    group.add_argument("--max-streams-per-key", type=int, default=0, metavar="N",
                       help="requests one API key may have in flight at once; more get 429 / RESOURCE_EXHAUSTED "
                            "(default: 0, no limit; needs API keys)")
    group.add_argument("--tls-cert", default=None, metavar="PEM", help="serve TLS on the public ports with this certificate")
    group.add_argument("--tls-key", default=None, metavar="PEM", help="... and this private key")
    group.add_argument("--target-tls-ca", default=None, metavar="PEM", help="TLS to the targets: CA of their certificates")
    group.add_argument("--target-tls-cert", default=None, metavar="PEM", help="mTLS to the targets: client certificate")
    group.add_argument("--target-tls-key", default=None, metavar="PEM", help="mTLS to the targets: client key")
    group.add_argument("--target-tls-server-name", default=None, metavar="NAME",
                       help="TLS to the targets: verify their certificates against NAME instead of the dialled "
                            "address (Kubernetes discovery dials pod IPs, which one shared certificate cannot list)")
    add_metrics_label_arg(gateway.add_argument_group("observability"))
    gateway.set_defaults(func=cmd_gateway)


def add_fetch_model_parser(sub) -> None:
    fetch = sub.add_parser(
        "fetch-model",
        help="download an hf://ORG/NAME[@REVISION] model into a folder (the Helm chart's init container)",
        description="Download a Hugging Face Hub model repository at a revision into DEST with huggingface_hub, "
        "logging progress as plain lines. Files already in DEST from an earlier run of the same revision are not "
        "fetched again, so a restarted init container resumes instead of starting over. A gated or private "
        "repository needs a read token in $HF_TOKEN (the chart takes it from a Secret); $HF_ENDPOINT points at "
        "a hub mirror. See docs/deploy.md, \"Model sources\".",
        epilog="Exit status 2 with a message naming the repository and revision if the source does not parse or "
        "the hub refuses it (401, 403, 404).",
    )
    fetch.add_argument("source", metavar="SOURCE", help="hf://ORG/NAME[@REVISION] (REVISION: branch, tag or commit; "
                       "default main; pin a commit for reproducible rollouts)")
    fetch.add_argument("dest", metavar="DEST", help="folder to download into (created if missing)")
    fetch.set_defaults(func=cmd_fetch_model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saguaro",
        description="Saguaro: LLM serving with speculative speculative decoding (SSD).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="generate text for prompts with a local model",
        description="Load a Hugging Face model folder and generate for each --prompt. Prints the text, "
        "or with --json one JSON object per prompt (token_ids, text, finish_reason, timings).",
    )
    gen.add_argument("--model", default=None, help="local Hugging Face model folder (config.json, safetensors, tokenizer)")
    gen.add_argument("--endpoint", default=None, metavar="HOST:PORT",
                     help="send the prompts to a running target service (e.g. `saguaro up`) instead of loading --model; "
                          "--json then also reports each request's speculation stats")
    gen.add_argument("--timeout", type=float, default=600.0, help="with --endpoint: deadline per request in seconds (default: 600)")
    gen.add_argument("--prompt", action="append", required=True, help="prompt text; repeat for several prompts")
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt instead of plain text")
    add_sampling_args(gen)
    add_engine_args(gen)
    gen.set_defaults(func=cmd_generate)

    draft = service_parser(sub, DRAFT_COMMAND)
    draft.add_argument("--no-tree", action="store_true", help="answer with JIT drafts only (synchronous SD served remotely)")
    add_speculation_args(draft)
    add_engine_args(draft, tensor_parallel=False)
    add_telemetry_args(draft)
    add_tls_server_args(draft)
    draft.set_defaults(func=cmd_draft)

    target = service_parser(sub, TARGET_COMMAND)
    target.add_argument("--mode", choices=["ssd", "sd", "ar"], default="ssd", help="decoding mode (default: ssd)")
    target.add_argument("--draft-model", default=None, metavar="DIR",
                        help="draft model folder: run in this process for sd (or ssd without --draft-address); "
                             "with --draft-address only its name is reported (ModelInfo)")
    target.add_argument("--draft-address", default=None, nargs="+", metavar="HOST:PORT",
                        help="address of the draft service for --mode ssd (e.g. 127.0.0.1:50061 or unix:/path); "
                             "several addresses make a pool of draft workers that split the batch's sequences")
    target.add_argument("--draft-workers", type=int, default=1, metavar="M",
                        help="draft workers sharing the batch (data parallelism): one per --draft-address, or M "
                             "worker threads with an in-process --draft-model (default: 1)")
    target.add_argument("--draft-timeout", type=float, default=5.0,
                        help="seconds without a draft reply before the draft is declared down and the target decodes "
                             "plainly, reconnecting in the background (default: 5)")
    target.add_argument("--draft-soft-deadline", action=argparse.BooleanOptionalAction, default=True,
                        help=SOFT_DEADLINE_HELP)
    target.add_argument("--fast-path", choices=["unix", "torch.distributed", "none"], default="unix", help=FAST_PATH_HELP)
    target.add_argument("--speculation-policy", choices=["adaptive", "always"], default="adaptive",
                        help=SPECULATION_POLICY_HELP)
    target.add_argument("--wait-for-draft", type=float, default=0.0, metavar="S",
                        help="with --draft-address: wait up to S seconds for the draft service before serving "
                             "(default: 0, start at once and connect when it appears)")
    add_speculation_args(target)
    add_engine_args(target)
    add_telemetry_args(target)
    add_tls_server_args(target)
    add_draft_tls_args(target)
    target.set_defaults(func=cmd_target)

    up = sub.add_parser(
        "up",
        help="run the whole stack on this host: gateway, target and draft services",
        description="Start the gateway, the target service and the draft service as separate processes on this host "
        "(pinned to cores, one thread each), wait until the gateway serves, print the endpoints, and stop them all "
        "on Ctrl-C or SIGTERM. The gateway serves the public gRPC API on --port and the OpenAI API on --http-port. "
        "Then: saguaro generate --endpoint HOST:PORT --prompt ...",
    )
    up.add_argument("--target", required=True, metavar="DIR", help="target model folder")
    up.add_argument("--draft", default=None, metavar="DIR", help="draft model folder (required for ssd and sd)")
    up.add_argument("--mode", choices=["ssd", "sd", "ar"], default="ssd",
                    help="ssd: separate draft process (default); sd: draft inside the target process; ar: no draft")
    up.add_argument("--host", default="127.0.0.1", help="address of the public API (default: 127.0.0.1)")
    up.add_argument("--port", type=int, default=50050, help="public gRPC API port, served by the gateway (default: 50050)")
    up.add_argument("--http-port", type=int, default=8000,
                    help="OpenAI-compatible HTTP API port, served by the gateway (default: 8000; 0 disables)")
    up.add_argument("--target-port", type=int, default=0,
                    help="the target's internal port on 127.0.0.1 (default: 0, a free port)")
    up.add_argument("--redis-url", default=None, metavar="URL",
                    help="keep the gateway's prefix index in Redis (e.g. redis://127.0.0.1:6379/0; default: in-process)")
    up.add_argument("--draft-port", type=int, default=50061, help="draft service port, on 127.0.0.1 (default: 50061)")
    up.add_argument("--draft-workers", type=int, default=1, metavar="M",
                    help="draft workers sharing the batch (data parallelism): ssd starts M draft services on "
                         "--draft-port .. --draft-port+M-1; sd runs M worker threads in the target (default: 1)")
    up.add_argument("--draft-timeout", type=float, default=5.0,
                    help="seconds without a draft reply before the target declares it down (default: 5)")
    up.add_argument("--draft-soft-deadline", action=argparse.BooleanOptionalAction, default=True,
                    help=SOFT_DEADLINE_HELP)
    up.add_argument("--fast-path", choices=["unix", "torch.distributed", "none"], default="unix", help=FAST_PATH_HELP)
    up.add_argument("--speculation-policy", choices=["adaptive", "always"], default="adaptive",
                    help=SPECULATION_POLICY_HELP)
    up.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for both services (default: 300)")
    up.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                    help="the gateway's model names (OpenAI 'model'; responses carry the first; default: the target "
                         "folder's name)")
    up.add_argument("--chat-template", default=None, metavar="FILE",
                    help="the gateway's chat template, instead of the tokenizer's")
    up.add_argument("--generation-config", default="auto", metavar="auto|vllm|FOLDER",
                    help="the gateway's sampling defaults (see saguaro gateway --help; default: auto)")
    add_speculation_args(up)
    add_engine_args(up)
    add_telemetry_args(up, up=True)
    up.set_defaults(func=cmd_up)

    add_gateway_parser(sub)

    demo = sub.add_parser(
        "demo", help="run the embedded demo: a bundled trained pair, SSD streaming, AR vs SD vs SSD (no downloads)",
        description="Start the local stack (gateway, target and draft services, SSD) on the bundled draft/target pair "
                    "(trained on the Python standard library), stream one completion through the gateway, then "
                    "measure AR, SD at its best K and SSD on the same prompts side by side and check that their "
                    "tokens are identical. Timings emulate the h100-70b-1b profile (a 70B target and a 1B draft "
                    "on H100s) unless --raw.",
        epilog="Exit status 1 if the modes' outputs differ (they never should).")
    demo.add_argument("--raw", action="store_true",
                      help="plain CPU timings instead of the emulated profile (SSD gains little on a CPU; see the note)")
    demo.add_argument("--prompts", type=int, default=2, help="held-out prompts in the table (default: 2)")
    demo.add_argument("--max-tokens", type=int, default=48, help="greedy tokens per prompt in the table (default: 48)")
    demo.add_argument("--repeats", type=int, default=2, help="alternating timed runs of every mode (default: 2)")
    demo.add_argument("--dilation", type=float, default=None,
                      help="multiply every emulated step by this (default: calibrated so this CPU's real work stays "
                           "under half of each step)")
    demo.set_defaults(func=cmd_demo)

    add_fetch_model_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from saguaro.telemetry.logs import configure_logging

    configure_logging(getattr(args, "log_format", "text"), logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except SaguaroError as exc:
        print(f"saguaro: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
