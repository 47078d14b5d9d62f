"""Helpers importable from any test module (``from tests_support import ...``).

transformers is the reference: greedy generation and per-step logits come from it.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from saguaro.net import free_port

CHI_SQUARE_SIGNIFICANCE = 1e-3


def make_prompts(count: int, vocab: int, seed: int = 0, min_len: int = 3, max_len: int = 40) -> list[list[int]]:
    """Varied-length prompts of token ids (avoiding the special ids 0-2)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (count,), generator=gen).tolist()
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]

@functools.lru_cache(maxsize=8)
def hf_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_greedy(model_dir: str, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Batch-1 greedy generation, stopping at EOS like the engine does."""
    model = hf_model(model_dir)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=2,
        )
    return out[0, len(prompt):].tolist()


def add_bos(model_dir) -> None:
    """Make the tokenizer in ``model_dir`` prepend ``<|bos|>`` (id 0) to every text, as Llama 3's
    does (the tiny models' own tokenizer adds no special tokens)."""
    from tokenizers import Tokenizer, processors

    path = f"{model_dir}/tokenizer.json"
    backend = Tokenizer.from_file(path)
    backend.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B",
                                                           special_tokens=[("<|bos|>", 0)])
    backend.save(path)


def bos_pair(model_dirs: dict, root: Path) -> dict[str, str]:
    """Copies of the tiny target and its perturbed draft under ``root`` whose tokenizers add BOS
    (a draft must share the target's tokenizer): ``{"target": ..., "draft": ...}``."""
    pair = {"target": Path(model_dirs["llama"]), "draft": Path(model_dirs["llama_draft_perturbed"])}
    for source in pair.values():  # (the folder's name is the served model's name: kept)
        shutil.copytree(source, root / source.name)
        add_bos(root / source.name)
    return {role: str(root / source.name) for role, source in pair.items()}


def assert_same_law(counts: torch.Tensor, law: torch.Tensor) -> None:
    """Seeded chi-square: ``counts`` of sampled outcomes follow ``law`` (any shape, one cell per
    outcome), pooling the rarest cells so each expects at least 20."""
    from scipy.stats import chisquare

    expected = (law / law.sum() * counts.sum()).flatten()  # fp32 softmax sums to 1 only to ~1e-7
    observed = counts.flatten()
    order = torch.argsort(expected)
    small = expected[order].cumsum(0) < 5 * 4  # pool the rarest cells into one bucket (expected >= 20)
    pooled = order[small]
    keep = order[~small]
    obs = torch.cat([observed[keep], observed[pooled].sum().view(1)])
    exp = torch.cat([expected[keep], expected[pooled].sum().view(1)])
    stat = chisquare(obs.numpy(), exp.numpy())
    assert stat.pvalue > CHI_SQUARE_SIGNIFICANCE, f"chi-square p-value {stat.pvalue:.2e} (statistic {stat.statistic:.1f})"


def hf_logits(model_dir: str, token_ids: list[int]) -> torch.Tensor:
    """Logits at every position of ``token_ids`` ([T, V], fp32)."""
    with torch.inference_mode():
        return hf_model(model_dir)(torch.tensor([token_ids])).logits[0].float()


def flapping_governor():
    """A speculation governor that switches between its arms every couple of rounds whatever
    the timings: plain, SD and (in an SSD deployment) SSD rounds, and every switch between
    them, happen within a few tokens (exactness tests)."""
    from saguaro.services.target.governor import SpeculationGovernor

    return SpeculationGovernor(base_interval=1, max_interval=1, burst=2, max_burst=2, min_rounds=1)


def cycle_depths(engine, depths: tuple[int, ...]) -> None:
    """Make an SSD engine's rounds propose ``depths`` in turn, whatever the timings: every change
    of depth (an entry cut to a shallower round, a miss after a deeper one, a tree as deep as
    its round) happens within a few tokens (exactness tests)."""
    import itertools

    from saguaro.services.target.lookahead import DepthModel
    from saguaro.services.target.round_sizing import RoundSizer

    class CyclingDepth(DepthModel):
        def __init__(self) -> None:
            super().__init__(engine.k)
            self._next = itertools.cycle(depths)

        def best(self, batch_size: int) -> int:
            return next(self._next)

    class Unmeasured(RoundSizer):
        def observe(self, result) -> None:
            """Without a governor nothing learns from rounds: only their depths cycle."""

    if engine.sizing is None:
        engine.sizing = Unmeasured(engine.k, None)
    engine.sizing.ssd_depth = CyclingDepth()


# -- TLS material made in the test (real certificates, a throwaway CA) ------------------------------
@dataclass
class Pem:
    cert: bytes
    key: bytes


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def pem_of(cert: x509.Certificate, key) -> Pem:
    """The PEM bytes of a certificate and its key (as ``make_certificate`` returns them)."""
    return Pem(cert.public_bytes(serialization.Encoding.PEM),
               key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()))


def make_certificate(name: str, issuer: tuple[x509.Certificate, object] | None = None, ca: bool = False,
                     client: bool = False, dns_names: tuple[str, ...] | None = None) -> tuple[x509.Certificate, object]:
    """A certificate for ``name`` valid for 127.0.0.1 and localhost (or only ``dns_names``);
    self-signed without ``issuer``."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        names = [x509.DNSName(n) for n in dns_names] if dns_names is not None else [
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def write(tmp_path, name: str, data: bytes) -> str:
    """``data`` in ``tmp_path / name``; returns the path (for --tls-* flags)."""
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def start_draft_process(model: str, port: int, settings):
    """A real ``saguaro draft`` process on ``port`` with ``settings``' K and fan-out; returns
    the Popen once it listens."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "saguaro.cli", "draft", "--model", model, "--port", str(port),
         "--kv-cache-bytes", str(1 << 24), "--k", str(settings.k), "--fan-out", str(settings.fan_out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert "listening" in proc.stdout.readline(), "draft service did not start"
    return proc


def parse_cli(args: list[str]):
    """``saguaro`` arguments through the real CLI parser; argparse exiting on a bad command line
    becomes a test failure with its message."""
    import contextlib
    import io

    import pytest

    from saguaro.cli import build_parser

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`saguaro {' '.join(args)}` is rejected by saguaro.cli:\n{stderr.getvalue()}")


class RedisServer:
    """redis-server on a free port, no persistence; ``kill`` and ``start`` again at will."""

    def __init__(self, log_dir):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/setup (apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.log_dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        import redis

        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
