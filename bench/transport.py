"""Round-trip time of one speculation round on each target <-> draft transport.

    python bench/transport.py [--rounds 2000] [--repeats 3] [--out bench/results/transport.md]

A ping-pong of real ``SpeculationRequest``/``SpeculationResponse`` messages, as the round loop
sends them: B rows of K+1 committed tokens each way in, B rows of K proposed tokens out (greedy
rows, no probability tensors), at (B=1, K=5) and (B=16, K=5). The target side is the engine's
own ``RemoteChannel`` (submit, wait for the future). The draft side is the draft service's own
handshake and serving loops in a second process, pinned to the other core, with the model's
work replaced by a prepared reply, so the time is the transport and its Python around it:
framing, serialisation, thread hand-offs, the gRPC stack. Transports alternate within each
repeat, so the VM's drift hits all of them alike. Numbers are in microseconds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402

TRANSPORTS = ("unix", "torch.distributed", "grpc")
SHAPES = ((1, 5), (16, 5))


def _reply(batch: int, k: int):
    from saguaro.v1 import speculation_pb2 as pb

    rows = [pb.SpeculateRowReply(seq_id=i, hit=True, tokens=list(range(100 + i, 100 + i + k))) for i in range(batch)]
    return pb.SpeculationResponse(speculate=pb.SpeculateReply(rows=rows))


def _request(batch: int, k: int):
    from saguaro.v1 import speculation_pb2 as pb

    rows = [pb.SpeculateRow(seq_id=i, n_prev=k, recovery_token=7, committed_len=200 + i,
                            committed_tokens=list(range(40, 40 + k + 1))) for i in range(batch)]
    return pb.SpeculationRequest(speculate=pb.SpeculateRequest(rows=rows))


def _serve_draft(model_dir: str, address: str, ready, batch: int, k: int) -> None:
    """The draft process: the service's own handshake and loops, answering with a prepared reply."""
    os.sched_setaffinity(0, {os.cpu_count() - 1})
    import grpc
    from concurrent import futures

    from saguaro.config import EngineConfig
    from saguaro.rpc_services import add_service
    from saguaro.services.draft.server import SpeculationService
    from saguaro.speculative.settings import DraftSettings
    from saguaro.v1 import speculation_pb2 as pb

    reply = _reply(batch, k)

    class PreparedReplies(SpeculationService):
        def _serve_one(self, session, request):
            response = pb.SpeculationResponse()
            response.CopyFrom(reply)
            response.round_id = request.round_id
            return response

        def _build(self, session):
            return None

    config = EngineConfig(model=model_dir, show_progress=False, max_num_seqs=16)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_service(server, pb.DESCRIPTOR.services_by_name["Speculation"], PreparedReplies(config, DraftSettings(k=k)))
    server.add_insecure_port(address)
    server.start()
    ready.set()
    server.wait_for_termination()


def _measure(model_dir: str, transport: str, batch: int, k: int, rounds: int, warmup: int) -> list[float]:
    from saguaro.config import EngineConfig
    from saguaro.model_runner import ModelRunner
    from saguaro.net import free_port
    from saguaro.speculative.handshake import handshake_request
    from saguaro.speculative.settings import DraftSettings
    from saguaro.services.target.channels import RemoteChannel

    address = f"127.0.0.1:{free_port()}"
    ready = mp.get_context("spawn").Event()
    draft = mp.get_context("spawn").Process(target=_serve_draft, args=(model_dir, address, ready, batch, k), daemon=True)
    draft.start()
    try:
        if not ready.wait(120):
            raise SystemExit("the draft process did not start")
        runner = ModelRunner(EngineConfig(model=model_dir, show_progress=False, max_num_seqs=16))
        channel = RemoteChannel(address, fast_path=None if transport == "grpc" else transport)
        response = channel.handshake(handshake_request(runner, DraftSettings(k=k), batch), timeout=60)
        assert response.accepted and channel.name == transport, (response.error_message, channel.name)
        request = _request(batch, k)
        times = []
        for i in range(warmup + rounds):
            started = time.perf_counter()
            channel.submit(request).result(timeout=30)
            if i >= warmup:
                times.append((time.perf_counter() - started) * 1e6)
        channel.close()
        return times
    finally:
        draft.terminate()
        draft.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000, help="timed round trips per transport, shape and repeat")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS))
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.sched_setaffinity(0, {0})
    import torch

    torch.set_num_threads(1)
    from saguaro.tiny_models import build_tiny_model

    model_dir = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="saguaro-transport-")) / "tiny"))
    samples: dict[tuple[str, int, int], list[float]] = {}
    for repeat in range(args.repeats):
        for batch, k in SHAPES:
            for transport in args.transports:
                times = _measure(model_dir, transport, batch, k, args.rounds, args.warmup)
                samples.setdefault((transport, batch, k), []).extend(times)
                print(f"repeat {repeat + 1}: {transport} B={batch} K={k} p50 {statistics.median(times):.0f} us",
                      file=sys.stderr, flush=True)
    rows = []
    for (transport, batch, k), times in samples.items():
        ordered = sorted(times)
        rows.append([transport, batch, k, len(times), round(ordered[len(ordered) // 2]),
                     round(ordered[int(len(ordered) * 0.99)]), round(statistics.fmean(times))])
    table = markdown_table(["transport", "B", "K", "round trips", "p50 us", "p99 us", "mean us"], rows)
    header = (f"bench/transport.py --rounds {args.rounds} --repeats {args.repeats}: target on core 0, "
              f"draft process on core {os.cpu_count() - 1}, prepared replies (transport only)\n\n")
    print(header + table)
    if args.out:
        args.out.write_text(header + table + "\n")


if __name__ == "__main__":
    main()
