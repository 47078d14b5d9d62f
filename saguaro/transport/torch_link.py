"""Point-to-point message link over torch.distributed (the co-located fast path).

Target and draft form a two-rank process group of their own (no global default group, so a
process can hold several): gloo on CPU, and the same calls on NCCL move device tensors over
NVLink or RDMA on GPU nodes. A message is a length header and a byte payload, each one
``send``/``recv``; the draft hosts the rendezvous store, the target joins it.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist


class P2PLink:
    """A ``saguaro.transport.socket_link.MessageLink`` over a two-rank gloo (or NCCL) group."""

    def __init__(self, host: str, port: int, rank: int, timeout_s: float = 60.0):
        """rank 1 (the draft) hosts the store on ``port``; rank 0 (the target) connects to it.
        Blocks until both ranks have joined."""
        self.rank = rank
        self.peer = 1 - rank
        timeout = timedelta(seconds=timeout_s)
        self.store = dist.TCPStore(host, port, world_size=2, is_master=rank == 1, timeout=timeout, wait_for_workers=False)
        self.group = dist.ProcessGroupGloo(self.store, rank, 2, timeout)

    def send(self, payload: bytes) -> None:
        header = torch.tensor([len(payload)], dtype=torch.int64)
        self.group.send([header], self.peer, 0).wait()
        if payload:
            body = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            self.group.send([body], self.peer, 1).wait()

    def recv(self) -> bytes:
        header = torch.zeros(1, dtype=torch.int64)
        self.group.recv([header], self.peer, 0).wait()
        size = int(header.item())
        if size < 0:
            raise ConnectionError("peer closed the link")
        if size == 0:
            return b""
        body = torch.empty(size, dtype=torch.uint8)
        self.group.recv([body], self.peer, 1).wait()
        return body.numpy().tobytes()

    def close_signal(self) -> None:
        """Tell the peer this side is done (a negative length)."""
        self.group.send([torch.tensor([-1], dtype=torch.int64)], self.peer, 0).wait()
