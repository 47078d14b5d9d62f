"""Rank 0's side of tensor parallelism: spawn the followers, drive each forward, stop them.

Rank 0 hosts the rendezvous store on a free loopback port and spawns ranks 1..N-1 (``spawn``:
no forked CUDA or thread state), each single-threaded on the CPU side. Per forward it sends
one command (``saguaro.parallel.commands``) and then runs the same forward as every follower;
``close`` sends STOP and joins them. A follower that dies turns rank 0's next collective into
a ``TensorParallelError`` naming the rank and how it ended (gloo sees the closed connection at
once; a stuck but living rank trips the collective timeout), never a silent hang.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from saguaro.attention import AttentionBackend
from saguaro.config import EngineConfig
from saguaro.errors import ConfigError, SaguaroError
from saguaro.parallel.commands import encode, stop_header
from saguaro.parallel.follower import FollowerSpec, follower_main
from saguaro.parallel.group import LOOPBACK, RENDEZVOUS_TIMEOUT, TensorParallelGroup
from saguaro.rank import ForwardInputs, RankModel


class TensorParallelError(SaguaroError):
    """A tensor-parallel rank failed; this target cannot go on without it and must restart."""


class TensorParallelLeader:
    """Rank 0: owns the followers' processes and the command stream to them."""

    def __init__(self, config: EngineConfig, max_positions: int):
        size = config.tensor_parallel_size
        device = torch.device(config.device)
        if device.type == "cuda" and (device.index or 0) + size > torch.cuda.device_count():
            raise ConfigError(
                f"tensor_parallel_size {size} on {device} needs GPUs {device.index or 0}.."
                f"{(device.index or 0) + size - 1}, but {torch.cuda.device_count()} are visible"
            )
        self.failure: str | None = None
        self.serving = False  # followers are in their command loop (STOP is understood)
        self.store = dist.TCPStore(LOOPBACK, 0, size, is_master=True, timeout=RENDEZVOUS_TIMEOUT,
                                   wait_for_workers=False)
        context = mp.get_context("spawn")
        self.followers = [
            context.Process(target=follower_main, args=(FollowerSpec(config, max_positions, self.store.port, rank),),
                            name=f"saguaro-tp-rank{rank}", daemon=True)
            for rank in range(1, size)
        ]
        try:
            with _single_threaded_children():
                for proc in self.followers:
                    proc.start()
            self._await_followers()
            self.group = TensorParallelGroup(self.store, 0, size, device)
        except BaseException:
            self.close()
            raise

    def _await_followers(self) -> None:
        """Wait until every follower has reached the store, failing fast if one died on the way."""
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT.total_seconds()
        for rank, proc in enumerate(self.followers, start=1):
            while not self.store.check([f"joined/{rank}"]):
                if not proc.is_alive():
                    raise TensorParallelError(self._describe_failure("while starting"))
                if time.monotonic() > deadline:
                    raise TensorParallelError(f"tensor-parallel rank {rank} did not start within "
                                              f"{RENDEZVOUS_TIMEOUT.total_seconds():.0f} s")
                time.sleep(0.05)

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Turn a failed collective into a ``TensorParallelError`` that says which rank ended how."""
        if self.failure is not None:
            raise TensorParallelError(self.failure)
        try:
            yield
        except RuntimeError as exc:  # gloo/NCCL report the broken link, not which rank died or why
            self.failure = self._describe_failure(f"({exc})")
            raise TensorParallelError(self.failure) from exc

    def forward(self, rank: RankModel, inputs: ForwardInputs, attention: AttentionBackend | None) -> torch.Tensor:
        """Command the followers to run this forward, then run rank 0's part of it."""
        if attention is not None:
            raise ConfigError("a custom attention backend (the draft's tree steps) cannot run tensor-parallel: "
                              "followers use the runner's own; serve the draft with tensor_parallel_size 1")
        header, payload = encode(inputs)
        with self.watch():
            self.group.broadcast(header)
            self.group.broadcast(payload)
            return rank.forward(inputs)

    def close(self, timeout: float = 10.0) -> None:
        """STOP the followers and join them (terminate any that do not exit in ``timeout``)."""
        alive = all(proc.is_alive() for proc in self.followers)
        if self.serving and self.failure is None and alive:
            try:
                self.group.broadcast(stop_header())
            except RuntimeError:
                pass  # a follower died just now: it is joined below all the same
        else:  # not in the command loop (or broken): nothing would read a STOP
            for proc in self.followers:
                if proc.is_alive():
                    proc.terminate()
        self.serving = False
        for proc in self.followers:
            if proc.pid is None:
                continue  # never started
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout)

    def _describe_failure(self, context: str) -> str:
        for proc in self.followers:
            if proc.pid is not None:
                proc.join(0.5)  # let a dying follower finish exiting, so its exit code is known
        ended = [f"rank {rank} (pid {proc.pid}) {_how_it_ended(proc.exitcode)}"
                 for rank, proc in enumerate(self.followers, start=1) if proc.exitcode is not None]
        if not ended:
            return (f"a tensor-parallel collective failed with every rank alive {context}: a rank is stuck "
                    f"or unreachable; restart the target")
        return (f"tensor-parallel {', '.join(ended)} {context}; the target cannot continue without it: "
                f"restart it (a follower's own error, if any, is on this process's stderr)")


def _how_it_ended(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Children read OMP_NUM_THREADS when torch starts, before they run any code of ours."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous
