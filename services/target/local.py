"""Wire a target engine to its draft: in this process, or over gRPC to a draft service."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace

import grpc

from saguaro.config import EngineConfig
from saguaro.errors import ConfigError
from saguaro.speculative.handshake import answer_handshake, model_facts
from saguaro.speculative.settings import DraftSettings
from saguaro.services.draft.worker import DraftWorker, draft_runner
from saguaro.services.target.channels import DraftChannel, InProcessChannel, RemoteChannel
from saguaro.services.target.draft_pool import DraftPool
from saguaro.services.target.engine import SpeculativeEngine


def in_process_connector(draft: EngineConfig, settings: DraftSettings, build_cache: bool) -> Callable[[], DraftChannel]:
    """Each (re)connect starts a fresh draft worker on its own thread in this process."""

    def connect() -> DraftChannel:
        runner = draft_runner(draft, settings)
        worker = DraftWorker(runner, settings, build_cache=build_cache)
        facts, instance = model_facts(runner), uuid.uuid4().hex
        return InProcessChannel(worker, handshake_fn=lambda request: answer_handshake(request, facts, instance)[0])

    return connect


def pooled(connectors: list[Callable[[], DraftChannel]]) -> Callable[[], DraftChannel]:
    """One connector for several draft workers (data parallelism); one worker stays as it is."""
    if len(connectors) == 1:
        return connectors[0]

    def connect() -> DraftChannel:
        channels: list[DraftChannel] = []
        try:
            for c in connectors:
                channels.append(c())
        except BaseException:
            for channel in channels:
                channel.close()
            raise
        return DraftPool(channels)

    return connect


def speculative_engine(
    target: EngineConfig,
    mode: str = "ssd",
    draft: EngineConfig | None = None,
    settings: DraftSettings | None = None,
    draft_address: str | Sequence[str] | None = None,
    fast_path: str | None = "unix",
    draft_credentials: grpc.ChannelCredentials | None = None,  # TLS / mTLS to a remote draft
    draft_workers: int = 1,
    **proposer_options,
) -> SpeculativeEngine:
    """``mode='sd'`` keeps the draft in this process (the synchronous baseline); ``'ssd'`` talks
    to the draft service at ``draft_address`` over gRPC, or runs an in-process draft worker on
    its own thread when no address is given. ``fast_path`` ("unix", "torch.distributed" or None)
    is the link offered to a draft in the same pod (``RemoteChannel``). Several addresses, or ``draft_workers`` > 1 in
    process, make a draft pool: the batch's sequences are split across the workers."""
    if mode == "ar":
        return SpeculativeEngine(target, "ar")
    if draft_workers < 1:
        raise ConfigError(f"--draft-workers must be at least 1, got {draft_workers}")
    settings = settings or DraftSettings()
    if draft_address is not None:
        addresses = [draft_address] if isinstance(draft_address, str) else list(draft_address)
        connect = pooled([lambda a=a: RemoteChannel(a, fast_path, draft_credentials) for a in addresses])
    elif draft is not None:
        draft = replace(draft, max_model_len=target.max_model_len or draft.max_model_len)
        connect = pooled([in_process_connector(draft, settings, build_cache=mode == "ssd")] * draft_workers)
    else:
        raise ValueError(f"mode {mode!r} needs a draft: an in-process draft config or a draft address")
    return SpeculativeEngine(target, mode, settings, connect, **proposer_options)

