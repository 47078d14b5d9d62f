"""The ``saguaro`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from saguaro.errors import ConfigError, SaguaroError

Command = Callable[[argparse.Namespace], int]


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=64, help="tokens to generate per prompt (default: 64)")
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default: 1)")
    group.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    group.add_argument("--seed", type=int, default=None, help="per-request seed: same seed, same tokens")
    group.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-sequence token")


def add_engine_args(parser: argparse.ArgumentParser, tensor_parallel: bool = True) -> None:
    """``tensor_parallel``: offer --tensor-parallel-size (not for the draft, which runs on one rank)."""
    group = parser.add_argument_group("engine")
    group.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto (fp32 on CPU)")
    group.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    group.add_argument("--max-model-len", type=int, default=None, help="longest prompt + output (default: the model's)")
    group.add_argument("--max-num-seqs", type=int, default=16, help="sequences decoded together (default: 16)")
    group.add_argument("--kv-cache-bytes", type=int, default=512 * 1024 * 1024, help="KV-cache budget on CPU (default: 512 MiB)")
    group.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default: 16)")
    group.add_argument("--no-prefix-caching", action="store_true", help="disable reuse of cached prompt prefixes")
    group.add_argument("--enforce-eager", action="store_true",
                       help="on CUDA, run every step eagerly instead of replaying CUDA graphs of the decode, verify "
                            "and draft steps (slower at small batches; for debugging; docs/gpu.md)")
    group.add_argument("--emulate", default=None, metavar="PROFILE[:xS]",
                       help="benchmarks: pad every device step to an accelerator's cost (profile h100-70b-1b: "
                            "target 15 ms up to 300 tokens a step, draft 2 ms up to 256, linear beyond); the "
                            "target gets the target's cost, a draft the draft's; :xS multiplies every pad by S "
                            "(e.g. h100-70b-1b:x4) so that real CPU work stays well under it (docs/speculation.md)")
    group.add_argument("--emulate-forward-ms", type=float, default=None,
                       help="benchmarks and tests: pad every device step to this many ms, whatever its tokens "
                            "(a flat cost; --emulate gives both models their profile's costs)")
    if tensor_parallel:
        group.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                           help="shard the target over N ranks: GPUs cuda:i..i+N-1 with --device cuda:i, processes "
                                "on CPU; the draft always runs on one (default: 1; docs/parallelism.md)")


def add_telemetry_args(parser: argparse.ArgumentParser, up: bool = False) -> None:
    group = parser.add_argument_group("observability")
    group.add_argument("--metrics-port", type=int, default=9400,
                       help=("the target's /metrics and /healthz HTTP port; the draft uses the next one "
                             if up else "HTTP port for Prometheus /metrics and /healthz, on --host ")
                       + "(default: 9400; 0 disables). Tracing: set OTEL_EXPORTER_OTLP_ENDPOINT (docs/observability.md)")
    group.add_argument("--log-format", choices=["text", "json"], default="text",
                       help="log lines as text, or one JSON object per line with trace ids (default: text)")


def add_tls_server_args(parser: argparse.ArgumentParser) -> None:
    """TLS / mTLS on the service's gRPC port (``saguaro target``, ``saguaro draft``)."""
    group = parser.add_argument_group("security")
    group.add_argument("--tls-cert", default=None, metavar="PEM", help="serve TLS on the gRPC port with this certificate")
    group.add_argument("--tls-key", default=None, metavar="PEM", help="... and this private key")
    group.add_argument("--tls-client-ca", default=None, metavar="PEM",
                       help="mTLS: refuse clients without a certificate signed by this CA (needs --tls-cert/--tls-key)")


def add_draft_tls_args(parser: argparse.ArgumentParser) -> None:
    """TLS / mTLS from the target to a remote draft service."""
    group = parser.add_argument_group("security")
    group.add_argument("--draft-tls-ca", default=None, metavar="PEM",
                       help="TLS to the draft service: CA of its certificate (turns the torch.distributed fast path off: "
                            "it is not encrypted)")
    group.add_argument("--draft-tls-cert", default=None, metavar="PEM", help="mTLS to the draft: client certificate")
    group.add_argument("--draft-tls-key", default=None, metavar="PEM", help="mTLS to the draft: client key")


def tls_server_credentials(args: argparse.Namespace):
    """The gRPC server credentials ``add_tls_server_args`` asked for (None: plaintext)."""
    from saguaro.tls import check_server_flags, server_credentials

    check_server_flags(args.tls_cert, args.tls_key, args.tls_client_ca)
    return server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None


def emulation_options(args: argparse.Namespace, role: str) -> dict:
    """EngineConfig's emulation fields for the ``role`` ("target" or "draft") this process plays."""
    from saguaro.emulation import engine_fields

    if args.emulate and args.emulate_forward_ms:
        raise ConfigError("give --emulate PROFILE or --emulate-forward-ms, not both")
    if args.emulate:
        return engine_fields(args.emulate, role)
    return dict(emulate_forward_s=args.emulate_forward_ms / 1000 if args.emulate_forward_ms else None)


def engine_options(args: argparse.Namespace, role: str = "target") -> dict:
    return dict(
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        kv_cache_bytes=args.kv_cache_bytes,
        block_size=args.block_size,
        enable_prefix_caching=not args.no_prefix_caching,
        step_graphs=False if args.enforce_eager else None,
        tensor_parallel_size=getattr(args, "tensor_parallel_size", 1),
        **emulation_options(args, role),
    )


def sampling_params(args: argparse.Namespace):
    from saguaro.sampling import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from saguaro.llm import LLM

    if args.endpoint and args.model:
        raise ConfigError("give either --model DIR (generate in this process) or --endpoint HOST:PORT, not both")
    if args.endpoint:
        return generate_remote(args)
    if not args.model:
        raise ConfigError("give --model DIR to generate in this process, or --endpoint HOST:PORT to use a running "
                          "target service (see `saguaro up`)")
    params = sampling_params(args)
    params.validate()
    llm = LLM(args.model, show_progress=not args.json, **engine_options(args))
    outputs = llm.generate(args.prompt, params)
    for out in outputs:
        print(json.dumps(out.to_json()) if args.json else out.text, flush=True)
    return 0


def generate_remote(args: argparse.Namespace) -> int:
    """``saguaro generate --endpoint``: the prompts go to a running target, concurrently."""
    from concurrent.futures import ThreadPoolExecutor

    from saguaro.client import Client

    sampling_params(args).validate()  # the same messages as local generation, before any network
    options = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                   seed=args.seed, ignore_eos=args.ignore_eos)
    with Client(args.endpoint, timeout=args.timeout) as client, ThreadPoolExecutor(max_workers=8) as pool:
        for out in pool.map(lambda prompt: client.generate(prompt, **options), args.prompt):
            print(json.dumps(out) if args.json else out["text"], flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from saguaro.demo import DemoPlan, run_demo

    if args.prompts < 1 or args.max_tokens < 1 or args.repeats < 1:
        raise ConfigError("--prompts, --max-tokens and --repeats must be at least 1")
    if args.dilation is not None and args.dilation < 1:
        raise ConfigError(f"--dilation must be at least 1, got {args.dilation}")
    if not args.verbose:  # the demo's own lines tell the story; engine INFO logs would interleave with them
        logging.getLogger("saguaro").setLevel(logging.WARNING)
    plan = DemoPlan(prompts=args.prompts, new_tokens=args.max_tokens, repeats=args.repeats, emulate=not args.raw,
                    dilation=args.dilation)
    table = run_demo(plan, verbose=args.verbose)
    return 0 if table.identical else 1


def add_speculation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("speculation")
    group.add_argument("--k", type=int, default=4, help="draft tokens per round, K (default: 4)")
    group.add_argument("--fan-out", type=int, default=2, help="uniform fan-out F per depth of the speculation tree (default: 2)")
    group.add_argument("--fan-out-list", type=int, nargs="+", default=None,
                       help="explicit per-depth fan-out F_0..F_K (K+1 values) for rows whose lookup hit")
    group.add_argument("--fan-out-list-miss", type=int, nargs="+", default=None,
                       help="per-depth fan-out after a miss (same sum as --fan-out-list)")
    group.add_argument("--fan-out-policy", choices=["list", "geometric"], default="list",
                       help="list: the lists above (uniform --fan-out by default); geometric: the draft re-spreads "
                            "the same budget over depths as F_j ~ P(n=j)^(1/2) from the acceptance it observes "
                            "(default: list; docs/speculation.md)")
    group.add_argument("--backup", choices=["jit", "fast", "adaptive"], default="jit",
                       help="on a cache miss: jit drafts now (real samples), fast sends placeholders, "
                            "adaptive picks jit up to --jit-max-batch rows (default: jit)")
    group.add_argument("--jit-max-batch", type=int, default=4, help="largest batch that still uses jit under --backup adaptive")
    group.add_argument("--saguaro-c", type=float, default=1.0,
                       help="Saguaro sampling downweight C in (0, 1]: trades acceptance for cache hits at T > 0 (default: 1, off)")


SPECULATION_POLICY_HELP = ("adaptive: measure plain (AR), synchronous SD and (with a draft service) SSD rounds "
                           "per batch size and run the fastest, so the deployment is never slower than the best "
                           "of them; always: run the deployment's mode every round (default: adaptive)")
FAST_PATH_HELP = ("how rounds travel when target and draft share a pod (one network namespace): unix (default; "
                  "one socket write per message), torch.distributed (gloo/NCCL point-to-point), or none (the "
                  "gRPC stream). Across pods, and with --draft-tls, rounds always use gRPC")
SOFT_DEADLINE_HELP = ("let a round decode plainly when its draft reply is late by the draft's recent standards "
                      "(a few times its recent reply time, at least 50 ms), dropping the reply when it comes; "
                      "--no-draft-soft-deadline waits for every reply up to --draft-timeout, which makes "
                      "speculation reproducible for debugging (default: on)")


def speculation_governor(policy: str):
    """The target's speculation governor for ``--speculation-policy`` (None: always speculate)."""
    from saguaro.services.target.governor import SpeculationGovernor

    return SpeculationGovernor() if policy == "adaptive" else None


def speculation_settings(args: argparse.Namespace):
    from saguaro.speculative.settings import DraftSettings
    from saguaro.v1 import speculation_pb2 as pb

    policy = {"jit": pb.BACKUP_POLICY_JIT, "fast": pb.BACKUP_POLICY_FAST, "adaptive": pb.BACKUP_POLICY_ADAPTIVE}
    fan_out_policy = {"list": pb.FAN_OUT_POLICY_LIST, "geometric": pb.FAN_OUT_POLICY_GEOMETRIC}
    try:
        return DraftSettings(k=args.k, fan_out=args.fan_out, fan_out_hit=args.fan_out_list or [],
                             fan_out_miss=args.fan_out_list_miss or [], backup_policy=policy[args.backup],
                             jit_max_batch_size=args.jit_max_batch, downweight=args.saguaro_c,
                             fan_out_policy=fan_out_policy[args.fan_out_policy])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_draft(args: argparse.Namespace) -> int:
    from pathlib import Path

    from saguaro.config import EngineConfig
    from saguaro.services.draft.server import serve
    from saguaro.telemetry.tracing import configure_tracing

    credentials = tls_server_credentials(args)  # checked before the model loads
    config = EngineConfig(model=args.model, **engine_options(args, "draft"))
    address = f"unix:{args.uds}" if args.uds else f"{args.host}:{args.port}"
    configure_tracing("saguaro-draft")
    telemetry = None
    if args.metrics_port:
        from saguaro.telemetry.service import DraftTelemetry

        telemetry = DraftTelemetry(Path(args.model).name)
    server = serve(config, address, speculation_settings(args), build_cache=not args.no_tree, telemetry=telemetry,
                   credentials=credentials)
    if telemetry is not None:
        telemetry.serve(args.metrics_port, args.host)
    print(f"draft service for {args.model} listening on {address}", flush=True)
    server.wait_for_termination()
    return 0


def cmd_target(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from saguaro.config import EngineConfig
    from saguaro.services.target.local import speculative_engine
    from saguaro.services.target.server import serve_target
    from saguaro.telemetry.service import TargetTelemetry
    from saguaro.telemetry.tracing import configure_tracing
    from saguaro.tls import channel_credentials, check_channel_flags
    from saguaro.tokenizer import load_tokenizer

    mode = args.mode
    if mode == "sd" and args.draft_address:
        raise ConfigError("--mode sd runs the draft in this process: give --draft-model DIR, not --draft-address "
                          "(a draft service is for --mode ssd)")
    if mode == "sd" and not args.draft_model:
        raise ConfigError("--mode sd runs the draft in this process: give --draft-model DIR")
    if mode == "ssd" and not (args.draft_address or args.draft_model):
        raise ConfigError("--mode ssd needs a draft: --draft-address HOST:PORT of a running `saguaro draft`, "
                          "or --draft-model DIR to run it in this process (or use --mode ar)")
    if mode == "ar" and (args.draft_address or args.draft_model):
        logging.getLogger("saguaro.target").warning("--mode ar decodes without a draft; ignoring the draft options")
    options = engine_options(args)
    target = EngineConfig(model=args.model, show_progress=False, **options)
    settings = speculation_settings(args) if mode != "ar" else None
    check_channel_flags(args.draft_tls_ca, args.draft_tls_cert, args.draft_tls_key, "--draft-tls", "draft")
    draft_credentials = channel_credentials(args.draft_tls_ca, args.draft_tls_cert, args.draft_tls_key, "draft")
    server_credentials = tls_server_credentials(args)
    if mode == "ssd" and args.draft_address and args.wait_for_draft > 0:
        for draft_address in args.draft_address:
            wait_for_draft(draft_address, args.wait_for_draft, draft_credentials)
    if args.draft_address and args.draft_workers not in (1, len(args.draft_address)):
        raise ConfigError(f"--draft-workers {args.draft_workers} but {len(args.draft_address)} --draft-address "
                          "given: with draft services, each address is one worker")
    in_process = mode != "ar" and args.draft_model and not args.draft_address
    draft_options = {**engine_options(args, "draft"), "tensor_parallel_size": 1}  # the draft is never sharded
    draft = EngineConfig(model=args.draft_model, show_progress=False, **draft_options) if in_process else None
    engine = speculative_engine(target, mode, draft, settings, args.draft_address if mode == "ssd" else None,
                                fast_path=None if args.fast_path == "none" else args.fast_path,
                                draft_workers=args.draft_workers, draft_credentials=draft_credentials, draft_timeout_s=args.draft_timeout,
                                draft_soft_deadline=args.draft_soft_deadline, governor=speculation_governor(args.speculation_policy))
    address = f"unix:{args.uds}" if args.uds else f"{args.host}:{args.port}"
    draft_name = Path(args.draft_model).name if args.draft_model else ""
    configure_tracing("saguaro-target")
    telemetry = TargetTelemetry(Path(args.model).name, metrics=args.metrics_port != 0)
    server, loop = serve_target(engine, load_tokenizer(args.model), address, draft_model_name=draft_name,
                                telemetry=telemetry, credentials=server_credentials)
    telemetry.serve(args.metrics_port, args.host, loop)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(grace=0.5))
    where = f", draft at {' '.join(args.draft_address)}" if mode == "ssd" and args.draft_address else ""
    print(f"target service (mode {mode}{where}) for {args.model} listening on {address}", flush=True)
    try:
        server.wait_for_termination()
    finally:
        server.stop(grace=None)
        loop.stop()
    return 0


def wait_for_draft(address: str, timeout: float, credentials=None) -> bool:
    """Wait until the draft service accepts connections (it listens once its model is loaded);
    ``credentials``: the TLS channel credentials the target will use."""
    import grpc

    with (grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            logging.getLogger("saguaro.target").warning(
                "no draft at %s after %.0f s; starting without it (decoding AR, retrying)", address, timeout)
            return False


class _Terminate(Exception):
    """SIGTERM received."""


def engine_argv(args: argparse.Namespace) -> list[str]:
    """The engine options of ``args`` as command-line arguments (to pass on to a child service)."""
    argv = ["--dtype", args.dtype, "--device", args.device, "--max-num-seqs", str(args.max_num_seqs),
            "--kv-cache-bytes", str(args.kv_cache_bytes), "--block-size", str(args.block_size)]
    if args.max_model_len:
        argv += ["--max-model-len", str(args.max_model_len)]
    if args.no_prefix_caching:
        argv.append("--no-prefix-caching")
    if args.enforce_eager:
        argv.append("--enforce-eager")
    if args.emulate:
        argv += ["--emulate", args.emulate]
    if args.emulate_forward_ms:
        argv += ["--emulate-forward-ms", str(args.emulate_forward_ms)]
    return argv


def speculation_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--k", str(args.k), "--fan-out", str(args.fan_out), "--backup", args.backup,
            "--jit-max-batch", str(args.jit_max_batch), "--saguaro-c", str(args.saguaro_c),
            "--fan-out-policy", args.fan_out_policy]
    if args.fan_out_list:
        argv += ["--fan-out-list", *map(str, args.fan_out_list)]
    if args.fan_out_list_miss:
        argv += ["--fan-out-list-miss", *map(str, args.fan_out_list_miss)]
    return argv


def cmd_up(args: argparse.Namespace) -> int:
    import signal
    import time

    from saguaro.local_stack import LocalStack

    if args.mode != "ar":
        speculation_settings(args)  # refuse bad K / fan-out before starting anything
    spec = speculation_argv(args) if args.mode != "ar" else []
    gateway_args = ["--block-size", str(args.block_size)] + (["--redis-url", args.redis_url] if args.redis_url else [])
    stack = LocalStack(args.target, args.draft, mode=args.mode, host=args.host, port=args.port,
                       http_port=args.http_port or None, target_port=args.target_port, gateway_args=gateway_args,
                       draft_port=args.draft_port, extra_args=engine_argv(args) + spec,
                       target_args=["--draft-timeout", str(args.draft_timeout), "--metrics-port", str(args.metrics_port),
                                    "--draft-soft-deadline" if args.draft_soft_deadline else "--no-draft-soft-deadline",
                                    "--fast-path", args.fast_path,
                                    "--speculation-policy", args.speculation_policy,
                                    "--log-format", args.log_format,
                                    "--tensor-parallel-size", str(args.tensor_parallel_size)],
                       draft_args=["--log-format", args.log_format], draft_workers=args.draft_workers,
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

            body = json.dumps({"model": Path(args.target).name, "prompt": "def add(a, b):", "max_tokens": 16})
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


def cmd_gateway(args: argparse.Namespace) -> int:
    import asyncio

    from saguaro.services.gateway import GatewayConfig, run_gateway
    from saguaro.services.gateway.auth import load_api_keys

    config = GatewayConfig(
        host=args.host, port=args.port, http_port=args.http_port or None, targets=args.targets or [],
        discovery=args.discovery, namespace=args.namespace, service=args.service or "", target_port=args.target_port,
        redis_url=args.redis_url, policy=args.policy, block_size=args.block_size, max_queue=args.max_queue,
        max_migrations=args.max_migrations,
        api_keys=load_api_keys(args.api_keys_file), max_streams_per_key=args.max_streams_per_key,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
        target_tls_ca=args.target_tls_ca, target_tls_cert=args.target_tls_cert, target_tls_key=args.target_tls_key,
        target_tls_server_name=args.target_tls_server_name, model_name=args.model_name)
    asyncio.run(run_gateway(config))
    return 0


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
    group.add_argument("--model-name", default=None,
                       help="model name clients use (OpenAI 'model'; default: the targets' model folder name)")
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
    gateway.set_defaults(func=cmd_gateway)


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

    draft = sub.add_parser(
        "draft",
        help="serve a draft model (the Speculation gRPC service a target connects to)",
        description="Run the draft service: it owns the draft model, its KV cache and the speculation cache, "
        "and builds speculations for every likely verification outcome while the target verifies. "
        "K and fan-out are agreed per session at handshake; the values here size the initial cache.",
    )
    draft.add_argument("--model", required=True, help="local Hugging Face folder of the draft model")
    draft.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    draft.add_argument("--port", type=int, default=50061, help="TCP port (default: 50061)")
    draft.add_argument("--uds", default=None, help="listen on this Unix socket path instead of TCP")
    draft.add_argument("--no-tree", action="store_true", help="answer with JIT drafts only (synchronous SD served remotely)")
    add_speculation_args(draft)
    add_engine_args(draft, tensor_parallel=False)
    add_telemetry_args(draft)
    add_tls_server_args(draft)
    draft.set_defaults(func=cmd_draft)

    target = sub.add_parser(
        "target",
        help="serve a target model: the public Inference gRPC API (ar, sd or ssd decoding)",
        description="Run the target service: it owns the target model, schedules requests with continuous batching "
        "and verifies the draft's speculations. --mode ssd talks to a draft service (`saguaro draft`) at "
        "--draft-address; --mode sd runs the draft synchronously in this process; --mode ar uses no draft.",
    )
    target.add_argument("--model", required=True, help="local Hugging Face folder of the target model")
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
    target.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    target.add_argument("--port", type=int, default=50051, help="TCP port of the public API (default: 50051)")
    target.add_argument("--uds", default=None, help="listen on this Unix socket path instead of TCP")
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
