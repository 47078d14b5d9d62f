"""The collectives of one tensor-parallel rank.

Two process groups, joined through one TCP store that rank 0 hosts on loopback:

* ``control`` (gloo, CPU tensors): rank 0's command stream to its followers. Commands are built
  on the CPU anyway (token ids, block tables), and a gloo wait can be given a timeout per call,
  which lets an idle follower wait for the next command for as long as the server is idle while
  every other collective keeps a finite timeout.
* ``compute``: the model's all-reduces and the logits gather — NCCL on CUDA, and on CPU the gloo
  group itself. The model code calls the same three methods either way.

Neither is the default (global) group, so a process can also hold other links (the draft's
torch.distributed fast path, ``saguaro.transport.torch_link``).
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

# Every collective but a follower's wait for the next command: long enough for the slowest
# forward (a large prefill on a busy host), short enough that a stuck peer becomes an error.
COLLECTIVE_TIMEOUT = timedelta(seconds=120)
# Joining: followers import torch and the engine before they connect.
RENDEZVOUS_TIMEOUT = timedelta(seconds=120)
# A follower waits for rank 0's next command this long: a serving target may idle for days.
IDLE_TIMEOUT = timedelta(days=3650)


class TensorParallelGroup:
    """Rank ``rank`` of ``size``; ``device`` is where this rank's model lives."""

    def __init__(self, store: dist.Store, rank: int, size: int, device: torch.device):
        self.rank, self.size = rank, size
        self.control = dist.ProcessGroupGloo(dist.PrefixStore("control", store), rank, size, RENDEZVOUS_TIMEOUT)
        self.control.set_timeout(COLLECTIVE_TIMEOUT)
        if device.type == "cuda":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = COLLECTIVE_TIMEOUT
            self.compute = dist.ProcessGroupNCCL(dist.PrefixStore("compute", store), rank, size, options)
        else:
            self.compute = self.control

    # -- the model's collectives ----------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over the ranks, in place."""
        self.compute.allreduce([tensor]).wait()

    def gather_to_first(self, tensor: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's ``tensor`` (same shape on all) on rank 0, in rank order; None elsewhere."""
        opts = dist.GatherOptions()
        opts.rootRank = 0
        if self.rank != 0:
            self.compute.gather([], [tensor], opts).wait()
            return None
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        self.compute.gather([parts], [tensor], opts).wait()
        return parts

    # -- rank 0's command stream (CPU) ----------------------------------------------------
    def broadcast(self, tensor: torch.Tensor, idle: bool = False) -> None:
        """Rank 0's ``tensor`` into every rank's; ``idle``: a follower waiting for a command."""
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        if idle:
            opts.timeout = IDLE_TIMEOUT
        self.control.broadcast([tensor], opts).wait()

    def all_gather_ints(self, values: list[int]) -> list[list[int]]:
        """Every rank's ``values`` (same length on all), in rank order (startup agreement)."""
        mine = torch.tensor(values, dtype=torch.int64)
        parts = [torch.empty_like(mine) for _ in range(self.size)]
        self.control.allgather([parts], [mine]).wait()
        return [p.tolist() for p in parts]


LOOPBACK = "127.0.0.1"  # the ranks of one target share a host; the store listens here only


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Where ``rank`` runs when rank 0 runs on ``device``: consecutive GPUs, or the same CPU."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", (device.index or 0) + rank)
