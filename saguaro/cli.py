"""The ``saguaro`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from saguaro.errors import SaguaroError

Command = Callable[[argparse.Namespace], int]


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=64, help="tokens to generate per prompt (default: 64)")
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default: 1)")
    group.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    group.add_argument("--seed", type=int, default=None, help="per-request seed: same seed, same tokens")
    group.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-sequence token")


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto (fp32 on CPU)")
    group.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    group.add_argument("--max-model-len", type=int, default=None, help="longest prompt + output (default: the model's)")
    group.add_argument("--max-num-seqs", type=int, default=16, help="sequences decoded together (default: 16)")
    group.add_argument("--kv-cache-bytes", type=int, default=512 * 1024 * 1024, help="KV-cache budget on CPU (default: 512 MiB)")
    group.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default: 16)")
    group.add_argument("--no-prefix-caching", action="store_true", help="disable reuse of cached prompt prefixes")


def engine_options(args: argparse.Namespace) -> dict:
    return dict(
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        kv_cache_bytes=args.kv_cache_bytes,
        block_size=args.block_size,
        enable_prefix_caching=not args.no_prefix_caching,
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

    params = sampling_params(args)
    params.validate()
    llm = LLM(args.model, show_progress=not args.json, **engine_options(args))
    outputs = llm.generate(args.prompt, params)
    for out in outputs:
        print(json.dumps(out.to_json()) if args.json else out.text, flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from saguaro.demo import demo_models
    from saguaro.llm import LLM
    from saguaro.sampling import SamplingParams

    target, _draft = demo_models()
    print(f"demo models in {target.parent} (tiny random weights: the text is noise, the machinery is real)")
    llm = LLM(str(target), show_progress=False)
    prompts = ["def add(a, b):", "import os", "class Stack:"]
    for out in llm.generate(prompts, SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)):
        print(json.dumps({"prompt": llm.tokenizer.decode(out.prompt_token_ids), "token_ids": out.token_ids[:16],
                          "finish_reason": out.finish_reason,
                          "tokens_per_s": round(out.timings["decode_tokens_per_s"], 1)}))
    return 0


def add_speculation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("speculation")
    group.add_argument("--k", type=int, default=4, help="draft tokens per round, K (default: 4)")
    group.add_argument("--fan-out", type=int, default=2, help="uniform fan-out F per depth of the speculation tree (default: 2)")
    group.add_argument("--fan-out-list", type=int, nargs="+", default=None,
                       help="explicit per-depth fan-out F_0..F_K (K+1 values) for rows whose lookup hit")
    group.add_argument("--fan-out-list-miss", type=int, nargs="+", default=None,
                       help="per-depth fan-out after a miss (same sum as --fan-out-list)")
    group.add_argument("--backup", choices=["jit", "fast", "adaptive"], default="jit",
                       help="on a cache miss: jit drafts now (real samples), fast sends placeholders, "
                            "adaptive picks jit up to --jit-max-batch rows (default: jit)")
    group.add_argument("--jit-max-batch", type=int, default=4, help="largest batch that still uses jit under --backup adaptive")
    group.add_argument("--saguaro-c", type=float, default=1.0,
                       help="Saguaro sampling downweight C in (0, 1]: trades acceptance for cache hits at T > 0 (default: 1, off)")


def speculation_settings(args: argparse.Namespace):
    from saguaro.services.draft.settings import DraftSettings
    from saguaro.v1 import speculation_pb2 as pb

    policy = {"jit": pb.BACKUP_POLICY_JIT, "fast": pb.BACKUP_POLICY_FAST, "adaptive": pb.BACKUP_POLICY_ADAPTIVE}
    try:
        return DraftSettings(k=args.k, fan_out=args.fan_out, fan_out_hit=args.fan_out_list or [],
                             fan_out_miss=args.fan_out_list_miss or [], backup_policy=policy[args.backup],
                             jit_max_batch_size=args.jit_max_batch, downweight=args.saguaro_c)
    except ValueError as exc:
        from saguaro.errors import ConfigError

        raise ConfigError(str(exc)) from None


def cmd_draft(args: argparse.Namespace) -> int:
    from saguaro.config import EngineConfig
    from saguaro.services.draft.server import serve

    config = EngineConfig(model=args.model, **engine_options(args))
    address = f"unix:{args.uds}" if args.uds else f"{args.host}:{args.port}"
    server = serve(config, address, speculation_settings(args), build_cache=not args.no_tree)
    print(f"draft service for {args.model} listening on {address}", flush=True)
    server.wait_for_termination()
    return 0


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
    gen.add_argument("--model", required=True, help="local Hugging Face model folder (config.json, safetensors, tokenizer)")
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
    add_engine_args(draft)
    draft.set_defaults(func=cmd_draft)

    demo = sub.add_parser("demo", help="run the embedded demo on tiny built-in models (no downloads)",
                          description="Build a tiny target/draft pair locally (cached) and generate with it.")
    demo.add_argument("--max-tokens", type=int, default=32, help="tokens per prompt (default: 32)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SaguaroError as exc:
        print(f"saguaro: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
