"""Target-service fixtures: real gRPC servers on 127.0.0.1 and real draft processes."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import grpc
import pytest

from saguaro import LLM, SamplingParams
from saguaro.net import free_port
from saguaro.client import Client
from saguaro.config import EngineConfig
from saguaro.services.target.local import speculative_engine
from saguaro.services.target.loop import EngineLoop
from saguaro.services.target.server import serve_target
from saguaro.tokenizer import load_tokenizer

SMALL = dict(kv_cache_bytes=16 << 20, max_num_seqs=8, show_progress=False)
SMALL_ARGS = ["--kv-cache-bytes", str(16 << 20), "--max-num-seqs", "8"]


@dataclass
class Served:
    client: Client
    loop: EngineLoop
    address: str
    server: grpc.Server

    def close(self) -> None:
        self.client.close()
        self.server.stop(grace=None)
        self.loop.stop()


def serve(model_dir: str, mode: str, draft_dir: str | None = None, draft_address: str | None = None,
          **proposer_options) -> Served:
    target = EngineConfig(model=model_dir, **SMALL)
    draft = EngineConfig(model=draft_dir, **SMALL) if draft_dir and not draft_address else None
    proposer_options.setdefault("draft_soft_deadline", False)  # tests count rounds: no timing luck
    engine = speculative_engine(target, mode, draft, None, draft_address, **proposer_options)
    address = f"127.0.0.1:{free_port()}"
    server, loop = serve_target(engine, load_tokenizer(model_dir), address,
                                draft_model_name=os.path.basename(draft_dir or ""))
    return Served(Client(address, timeout=120), loop, address, server)


class DraftProcess:
    """``saguaro draft`` in a child process, ready once it accepts connections."""

    def __init__(self, model_dir: str, log_path):
        self.address = f"127.0.0.1:{free_port()}"
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "saguaro.cli", "draft", "--model", model_dir, "--port", self.address.split(":")[1],
             *SMALL_ARGS],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        with grpc.insecure_channel(self.address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=120)
            except grpc.FutureTimeoutError:
                self.stop()
                raise RuntimeError(f"draft service did not start; see {log_path}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def draft_service(model_dirs, tmp_path_factory):
    draft = DraftProcess(model_dirs["llama_draft_perturbed"], tmp_path_factory.mktemp("draft") / "draft.log")
    yield draft
    draft.stop()


@pytest.fixture(scope="session")
def reference(model_dirs):
    """Greedy tokens from the in-process AR engine: reference(prompts, max_tokens) -> token lists."""
    llm = LLM(model_dirs["llama"], **SMALL)

    def generate(prompts, max_tokens: int, **options) -> list[list[int]]:
        return [o.token_ids for o in llm.generate(prompts, SamplingParams(max_tokens=max_tokens, **options))]

    generate.tokenizer = llm.tokenizer
    return generate


@pytest.fixture(scope="session")
def serve_model():
    """serve_model(model_dir, mode, draft_dir=None, draft_address=None, **proposer_options) -> Served."""
    return serve


@pytest.fixture
def start_draft(tmp_path):
    """start_draft(model_dir) -> DraftProcess, killed at the end of the test."""
    started = []

    def start(model_dir: str) -> DraftProcess:
        started.append(DraftProcess(model_dir, tmp_path / f"draft{len(started)}.log"))
        return started[-1]

    yield start
    for draft in started:
        draft.stop()
