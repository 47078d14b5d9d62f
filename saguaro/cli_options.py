"""What the ``saguaro`` commands' shared flags mean: the flag groups, and their translation into
engine, sampling and speculation settings, or back into flags for a child service (``saguaro up``).

Why one module: ``generate``, ``draft``, ``target`` and ``up`` offer the same groups, and ``up``
hands them on to its children, so each flag is defined and read in one place.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from saguaro.errors import ConfigError


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
    if not up:
        group.add_argument("--metrics-host", default=None, metavar="HOST",
                           help="address of the /metrics and /healthz port (default: --host); e.g. 0.0.0.0 for a "
                                "draft whose gRPC stays on loopback next to its target but whose metrics "
                                "Prometheus scrapes")
    group.add_argument("--log-format", choices=["text", "json"], default="text",
                       help="log lines as text, or one JSON object per line with trace ids (default: text)")
    add_metrics_label_arg(group, up)


def add_metrics_label_arg(group: argparse._ActionsContainer, up: bool = False) -> None:
    """``--metrics-label NAME=VALUE``: the target's, the draft's and the gateway's (``up``: all of them)."""
    group.add_argument("--metrics-label", action="append", default=[], metavar="NAME=VALUE",
                       help="add this label to every /metrics series (repeatable; the Helm chart passes release, "
                            "pool, namespace and pod so autoscaler queries work under any scrape configuration; "
                            "docs/observability.md)"
                            + ("; every service of the stack gets it, and each also gets saguaro_pool=<its role> "
                               "as in the chart" if up else ""))


@dataclass(frozen=True)
class ServiceCommand:
    """What the ``--help`` of a model service's sub-command (``target``, ``draft``) says."""

    name: str
    port: int  # its default TCP port
    api: str  # what it serves on that port
    summary: str
    description: str


def service_parser(sub, command: ServiceCommand) -> argparse.ArgumentParser:
    """The sub-command of a model service: its model folder and where it listens, the same flags
    and words for the target and the draft."""
    parser = sub.add_parser(command.name, help=command.summary, description=command.description)
    parser.add_argument("--model", required=True, help=f"local Hugging Face folder of the {command.name} model")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=command.port,
                        help=f"TCP port of {command.api} (default: {command.port})")
    parser.add_argument("--uds", default=None, help="listen on this Unix socket path instead of TCP")
    return parser


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


# The flags whose value is the EngineConfig / SamplingParams field of the same name, as given.
_ENGINE_FIELDS = ("dtype", "device", "max_model_len", "max_num_seqs", "kv_cache_bytes", "block_size")
_SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "ignore_eos")


def engine_options(args: argparse.Namespace, role: str = "target") -> dict:
    return dict(
        {name: getattr(args, name) for name in _ENGINE_FIELDS},
        enable_prefix_caching=not args.no_prefix_caching,
        step_graphs=False if args.enforce_eager else None,
        tensor_parallel_size=getattr(args, "tensor_parallel_size", 1),
        **emulation_options(args, role),
    )


def sampling_params(args: argparse.Namespace):
    from saguaro.sampling import SamplingParams

    return SamplingParams(**{name: getattr(args, name) for name in _SAMPLING_FIELDS})


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
