"""The ``saguaro`` commands that run one thing in this process: generate, demo, draft, target, gateway,
fetch-model.

``saguaro up`` (several processes) is ``saguaro.cli_up``; the parser that maps command names to
these functions is ``saguaro.cli``.
"""

from __future__ import annotations

import argparse
import json
import logging

from saguaro.cli_options import (engine_options, sampling_params, speculation_governor, speculation_settings,
                                 tls_server_credentials)
from saguaro.errors import ConfigError


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
            print(json.dumps(out.to_json()) if args.json else out.text, flush=True)
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


def cmd_draft(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from saguaro.config import EngineConfig
    from saguaro.services.draft.server import serve
    from saguaro.standard_services import stop_serving
    from saguaro.telemetry.exposition import parse_metrics_labels
    from saguaro.telemetry.tracing import configure_tracing

    credentials = tls_server_credentials(args)  # checked before the model loads
    labels = parse_metrics_labels(args.metrics_label)  # so is this
    config = EngineConfig(model=args.model, **engine_options(args, "draft"))
    address = f"unix:{args.uds}" if args.uds else f"{args.host}:{args.port}"
    configure_tracing("saguaro-draft")
    telemetry = None
    if args.metrics_port:
        from saguaro.services.draft.telemetry import DraftTelemetry

        telemetry = DraftTelemetry(Path(args.model).name)
    server = serve(config, address, speculation_settings(args), build_cache=not args.no_tree, telemetry=telemetry,
                   credentials=credentials)
    if telemetry is not None:
        telemetry.serve(args.metrics_port, args.metrics_host or args.host, labels)
    # NOT_SERVING first (its health Watchers hear it), then the session in flight gets 0.5 s
    signal.signal(signal.SIGTERM, lambda *_: stop_serving(server, grace=0.5))
    print(f"draft service for {args.model} listening on {address}", flush=True)
    server.wait_for_termination()
    return 0


def cmd_target(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from saguaro.config import EngineConfig
    from saguaro.services.target.local import speculative_engine
    from saguaro.services.target.server import serve_target
    from saguaro.services.target.telemetry import TargetTelemetry
    from saguaro.standard_services import stop_serving
    from saguaro.telemetry.exposition import parse_metrics_labels
    from saguaro.telemetry.tracing import configure_tracing
    from saguaro.tls import channel_credentials, check_channel_flags
    from saguaro.tokenizer import load_tokenizer

    mode = args.mode
    labels = parse_metrics_labels(args.metrics_label)  # a bad label fails before the model loads
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
    telemetry.serve(args.metrics_port, args.metrics_host or args.host, loop, labels)
    signal.signal(signal.SIGTERM, lambda *_: stop_serving(server, grace=0.5))  # NOT_SERVING first
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


def cmd_gateway(args: argparse.Namespace) -> int:
    import asyncio

    from saguaro.services.gateway import GatewayConfig, run_gateway
    from saguaro.services.gateway.auth import load_api_keys
    from saguaro.telemetry.exposition import parse_metrics_labels

    config = GatewayConfig(
        host=args.host, port=args.port, http_port=args.http_port or None, targets=args.targets or [],
        discovery=args.discovery, namespace=args.namespace, service=args.service or "", target_port=args.target_port,
        redis_url=args.redis_url, policy=args.policy, block_size=args.block_size, max_queue=args.max_queue,
        max_migrations=args.max_migrations,
        api_keys=load_api_keys(args.api_keys_file), max_streams_per_key=args.max_streams_per_key,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
        target_tls_ca=args.target_tls_ca, target_tls_cert=args.target_tls_cert, target_tls_key=args.target_tls_key,
        target_tls_server_name=args.target_tls_server_name, model_name=(args.served_model_name or [None])[0],
        model_aliases=tuple((args.served_model_name or [])[1:]),
        generation_config=args.generation_config, chat_template=args.chat_template,
        metrics_labels=parse_metrics_labels(args.metrics_label))
    asyncio.run(run_gateway(config))
    return 0


def cmd_fetch_model(args: argparse.Namespace) -> int:
    """The chart's download init container: an hf:// source into the folder the service then loads."""
    from saguaro.model_source import fetch_model

    fetch_model(args.source, args.dest)
    return 0
