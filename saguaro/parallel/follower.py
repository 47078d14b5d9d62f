"""A tensor-parallel follower: ranks 1..N-1 of a target, spawned by rank 0.

It loads its shard, then runs whatever forward rank 0 broadcasts, joining the model's
collectives, until a STOP command (or until rank 0 goes away). It owns no scheduling, sampling
or block management: everything that shapes a forward arrives in the command.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from saguaro.config import EngineConfig, ModelConfig
from saguaro.parallel.commands import HEADER_SIZE, STOP, decode, payload_size
from saguaro.parallel.group import LOOPBACK, RENDEZVOUS_TIMEOUT, TensorParallelGroup, rank_device
from saguaro.rank import load_rank, resolve_dtype


@dataclass(frozen=True)
class FollowerSpec:
    """Everything a follower needs, pickled to the spawned process."""

    config: EngineConfig
    max_positions: int
    store_port: int
    rank: int


def follower_main(spec: FollowerSpec) -> None:
    """Process entry point (``spawn``): join, load this rank's shard, follow rank 0."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is rank 0's to handle
    torch.set_num_threads(1)
    config, size = spec.config, spec.config.tensor_parallel_size
    device = rank_device(torch.device(config.device), spec.rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.TCPStore(LOOPBACK, spec.store_port, size, is_master=False, timeout=RENDEZVOUS_TIMEOUT)
    store.set(f"joined/{spec.rank}", "1")
    group = TensorParallelGroup(store, spec.rank, size, device)
    model_config = ModelConfig.from_dir(config.model)
    dtype = resolve_dtype(config.dtype, model_config, device)
    rank = load_rank(config, model_config, dtype, device, spec.max_positions, group)
    header = torch.empty(HEADER_SIZE, dtype=torch.int64)
    while True:
        try:
            group.broadcast(header, idle=True)
        except RuntimeError as exc:
            print(f"saguaro tensor-parallel rank {spec.rank}: rank 0 went away ({exc}); exiting", file=sys.stderr)
            sys.exit(1)
        if header[0] == STOP:
            return
        payload = torch.empty(payload_size(header), dtype=torch.uint8)
        group.broadcast(payload)
        inputs = decode(header, payload)
        rank.forward(inputs)
