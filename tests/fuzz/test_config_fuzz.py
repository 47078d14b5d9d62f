"""Configuration from users: a model's config.json, engine and gateway settings, command-line flags.

The property everywhere: a bad value is a ``SaguaroError`` whose message names it (the CLI prints
``saguaro: error: ...`` and exits 2), never a traceback from deep inside loading; what is
accepted is usable.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz.support import JSON, LOADING, damaged, fuzz_settings, mostly
from saguaro import LLM, SamplingParams
from saguaro.cli import build_parser, main
from saguaro.cli_options import engine_options, speculation_settings
from saguaro.config import EngineConfig, ModelConfig
from saguaro.errors import ConfigError, InvalidRequestError, ModelLoadError, SaguaroError
from saguaro.speculative.settings import MAX_BUDGET, MAX_LOOKAHEAD
from saguaro.services.gateway import GatewayConfig

MODEL_KEYS = ["architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings",
              "tie_word_embeddings", "rope_theta", "rope_scaling", "rope_parameters", "eos_token_id", "bos_token_id",
              "torch_dtype", "attention_bias"]
NUMBERS = st.integers(-3, 3) | st.integers() | st.floats() | st.sampled_from([0, 1.5, 1e308, "64", True, None])


@pytest.fixture(scope="module")
def llama_config(model_dirs) -> dict:
    return json.loads(Path(model_dirs["llama"], "config.json").read_text())


def mutated(config: dict) -> st.SearchStrategy[dict]:
    """The real config with some keys deleted, replaced by odd values, or rope objects damaged."""
    rope_value = st.fixed_dictionaries({}, optional={
        "rope_type": st.sampled_from(["default", "llama3", "yarn", None]) | JSON, "factor": NUMBERS,
        "low_freq_factor": NUMBERS, "high_freq_factor": NUMBERS, "original_max_position_embeddings": NUMBERS,
        "rope_theta": NUMBERS})
    value = mostly(NUMBERS | rope_value, JSON)
    changes = st.dictionaries(st.sampled_from(MODEL_KEYS), st.just(...) | value, min_size=1, max_size=4)

    def apply(change: dict) -> dict:
        out = dict(config)
        for key, new in change.items():
            if new is ...:
                out.pop(key, None)
            else:
                out[key] = new
        return out

    return changes.map(apply)


def load(config_bytes: bytes) -> ModelConfig:
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "config.json").write_bytes(config_bytes)
        return ModelConfig.from_dir(folder)


def check_loaded_or_refused(config_bytes: bytes) -> None:
    try:
        cfg = load(config_bytes)
    except ModelLoadError as exc:
        assert "config.json" in str(exc)  # the message says which file
        event(f"refused: {str(exc).split(': ', 1)[-1][:28]}")
        return
    event("loaded")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "max_position_embeddings"):
        value = getattr(cfg, name)
        assert isinstance(value, int) and value > 0, (name, value)
    assert cfg.num_heads % cfg.num_kv_heads == 0
    assert all(isinstance(t, int) and t >= 0 for t in cfg.eos_token_ids)
    rope = cfg.rope
    assert all(math.isfinite(x) and x > 0 for x in (cfg.rms_norm_eps, rope.theta, rope.factor))
    assert rope.rope_type == "default" or rope.high_freq_factor > rope.low_freq_factor


@fuzz_settings()
@given(data=st.data())
def test_a_damaged_model_config_loads_or_is_refused_by_name(llama_config, data):
    config = data.draw(mostly(mutated(llama_config), JSON), label="config")
    check_loaded_or_refused(json.dumps(config).encode())


@fuzz_settings()
@given(data=st.data())
def test_damaged_config_bytes_load_or_are_refused(llama_config, data):
    text = json.dumps(llama_config).encode()
    check_loaded_or_refused(data.draw(damaged(text) | st.binary(max_size=200) | st.sampled_from(
        [b"[" * 100_000, b"\xff\xfe{}", b'{"vocab_size": NaN}', b'{"architectures": Infinity}']), label="bytes"))


# -- engine settings: the whole load path ------------------------------------------------------
ENGINE_FIELDS = dict(
    dtype=mostly(st.sampled_from(["auto", "float32", "bf16"]), st.text(max_size=8)),
    device=mostly(st.just("cpu"), st.sampled_from(["cuda", "cuda:7", "meta", "cpu:1", "mps", "", "gpu", "cpu:-1",
                                                   "xla"]) | st.text(max_size=6)),
    block_size=mostly(st.sampled_from([8, 16]), st.integers(-2, 2**40)),
    kv_cache_bytes=mostly(st.just(8 << 20), st.integers(-1, 64 << 20)),
    max_num_seqs=mostly(st.integers(1, 8), st.integers(-2, 2**31)),
    max_num_batched_tokens=mostly(st.just(512), st.integers(-2, 2**31)),
    max_model_len=mostly(st.none() | st.integers(1, 128), st.integers(-2, 2**40)),
    gpu_memory_utilization=mostly(st.none(), st.floats()),
    emulate_forward_s=mostly(st.none(), st.floats(-1, 0.001) | st.sampled_from([math.nan, math.inf, -math.inf])),
    tensor_parallel_size=mostly(st.just(1), st.integers(-2, 0)),  # > 1 starts processes: not a parser's business
    seed=st.integers(-2**70, 2**70),
)


@fuzz_settings(LOADING)
@given(fields=st.fixed_dictionaries({}, optional=ENGINE_FIELDS))
def test_engine_settings_load_or_are_refused(model_dirs, fields):
    """LLM(...) runs the whole path: EngineConfig.validate, config.json, device, dtype, KV sizing."""
    try:
        llm = LLM(model_dirs["llama"], show_progress=False, **fields)
    except SaguaroError as exc:
        event(f"refused: {type(exc).__name__}: {str(exc)[:24]}")
        return
    event("loaded")
    try:
        assert llm.generate([[3]], SamplingParams(max_tokens=1))[0].token_ids
    except InvalidRequestError as exc:  # max_model_len 1 leaves no room
        assert llm.engine.runner.max_model_len == 1, exc


# -- gateway settings -----------------------------------------------------------------------------
ADDRESS = mostly(st.sampled_from(["127.0.0.1:50051", "target-0.svc:1", "[::1]:65535"]),
                 st.text(max_size=16) | st.integers(-5, 70000).map(lambda p: f"h:{p}"))
GATEWAY_FIELDS = dict(
    host=st.text(max_size=10), port=mostly(st.integers(0, 65535), st.integers()),
    http_port=mostly(st.none() | st.integers(0, 65535), st.integers()),
    targets=mostly(st.lists(ADDRESS, min_size=1, max_size=3), st.lists(ADDRESS, max_size=3)),
    discovery=mostly(st.sampled_from(["static", "kubernetes"]), st.text(max_size=8)),
    service=st.text(max_size=8), target_port=mostly(st.integers(1, 65535), st.integers()),
    policy=mostly(st.sampled_from(["prefix", "least-load", "round-robin"]), st.text(max_size=8)),
    block_size=mostly(st.integers(1, 64), st.integers()), max_queue=mostly(st.integers(1, 512), st.integers()),
    tls_cert=st.none() | st.just("cert.pem"), tls_key=st.none() | st.just("key.pem"),
    target_tls_ca=st.none() | st.just("ca.pem"), target_tls_cert=st.none() | st.just("c.pem"),
    target_tls_key=st.none() | st.just("k.pem"),
)


@fuzz_settings()
@given(fields=st.fixed_dictionaries({}, optional=GATEWAY_FIELDS))
def test_gateway_settings_validate_or_are_refused(fields):
    config = GatewayConfig(**fields)
    try:
        config.validate()
    except ConfigError as exc:
        event(f"refused: {str(exc)[:30]}")
        return
    event("accepted")
    assert 0 <= config.port < 65536 and (config.http_port is None or 0 <= config.http_port < 65536)
    assert 0 < config.target_port < 65536 and config.block_size > 0 and config.max_queue > 0
    for address in config.targets:
        host, _, port = address.rpartition(":")
        assert host and 0 < int(port) < 65536
    assert (config.discovery == "static" and config.targets) or (config.discovery == "kubernetes" and config.service)


# -- command-line flags --------------------------------------------------------------------------
ODD = ["", "x", "nan", "inf", "-inf", "1e3", "0x10", "-0", " 4", "٤"]  # what a typo or a template may give
FLAG_VALUES = {
    "--dtype": ["auto", "float32", "bf16", "fp16", "int8", "FLOAT32"],
    "--device": ["cpu", "cuda", "cuda:1", "meta", "cpu:1", "mps", "xla", "cuda:x", "cpu:-1"],
    "--max-model-len": ["-1", "0", "4", "16", "64", "99999999999"],
    "--max-num-seqs": ["-1", "0", "1", "4"],
    "--kv-cache-bytes": ["-1", "0", "1000", "8388608", "16777216"],  # (never more than the machine has)
    "--block-size": ["-1", "0", "1", "16", "4096", "99999999999"],
    "--emulate-forward-ms": ["-1", "0", "0.5", "nan", "inf"],
    "--emulate": ["h100-70b-1b", "h100-70b-1b:x2", "h100-70b-1b:x0", "h100-70b-1b:4", "a100", "h100-70b-1b:xnan"],
    "--max-tokens": ["-1", "0", "1", "2"],
    "--temperature": ["-1", "0", "0.7", "2", "nan", "inf"],
    "--top-p": ["-0.5", "0", "0.5", "1", "1.5", "nan"],
    "--top-k": ["-1", "0", "5"],
    "--seed": ["-1", "0", "7", "18446744073709551615", "99999999999999999999999"],
    "--tensor-parallel-size": ["-1", "0", "1"],
    "--k": ["-1", "0", "1", "4", "65", "4294967295"],
    "--fan-out": ["-1", "0", "1", "3", "5000"],
    "--fan-out-list": ["0", "1", "2", "-1", "2000"],
    "--fan-out-list-miss": ["0", "1", "2", "-1"],
    "--backup": ["jit", "fast", "adaptive", "slow"],
    "--jit-max-batch": ["-1", "0", "4"],
    "--saguaro-c": ["-1", "0", "0.5", "1", "1.5", "nan"],
    "--fan-out-policy": ["list", "geometric", "histogram"],
}
ENGINE_FLAGS = ["--dtype", "--device", "--max-model-len", "--max-num-seqs", "--kv-cache-bytes", "--block-size",
                "--emulate-forward-ms", "--emulate"]
SAMPLING_FLAGS = ["--max-tokens", "--temperature", "--top-p", "--top-k", "--seed"]
SPECULATION_FLAGS = ["--k", "--fan-out", "--fan-out-list", "--fan-out-list-miss", "--backup", "--jit-max-batch",
                     "--saguaro-c", "--fan-out-policy"]


def argv(command: list[str], flags: list[str]) -> st.SearchStrategy[list[str]]:
    """``command`` + up to 4 flags, each with one to three values (usual, wrong, or odd)."""
    def pair(flag: str) -> st.SearchStrategy[list[str]]:
        value = mostly(st.sampled_from(FLAG_VALUES[flag]), st.sampled_from(ODD))
        count = mostly(st.just(1), st.integers(0, 3)) if not flag.startswith("--fan-out-list") else st.integers(1, 9)
        return count.flatmap(lambda n: st.lists(value, min_size=n, max_size=n)).map(lambda values: [flag, *values])

    return st.lists(st.sampled_from(flags).flatmap(pair), max_size=4).map(
        lambda pairs: command + [x for p in pairs for x in p])


def parsed(args: list[str]):
    """argparse's answer: the namespace, or None when it refused (usage error, exit 2)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return build_parser().parse_args(args)
    except SystemExit as exc:
        assert exc.code == 2
        event("argparse refused")
        return None


@fuzz_settings()
@given(args=argv(["target", "--model", "M", "--mode", "ssd"], ENGINE_FLAGS + ["--tensor-parallel-size"]
                 + SPECULATION_FLAGS))
def test_target_and_draft_flags_become_settings_or_a_config_error(args):
    """What `saguaro target` / `saguaro draft` build from their flags before loading anything."""
    namespace = parsed(args)
    if namespace is None:
        return
    try:
        EngineConfig(model="M", **engine_options(namespace)).validate()
        settings = speculation_settings(namespace)
    except ConfigError as exc:
        event(f"refused: {str(exc)[:30]}")
        return
    event("accepted")
    assert 0 < settings.k <= MAX_LOOKAHEAD and 0 < settings.budget <= MAX_BUDGET


@fuzz_settings(LOADING)
@given(args=argv(["generate", "--prompt", "def f(x):"], ENGINE_FLAGS + SAMPLING_FLAGS))
def test_generate_flags_run_or_exit_with_a_message(model_dirs, args):
    """`saguaro generate` end to end in this process: exit 0 with output, or exit 2 with
    "saguaro: error: ..." — never a traceback."""
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main([*args[:1], "--model", model_dirs["llama"], "--max-tokens", "2", *args[1:]])
    except SystemExit as exc:  # argparse: usage error
        assert exc.code == 2 and "error:" in stderr.getvalue()
        event("argparse refused")
        return
    event(f"exit {code}")
    if code == 0:
        assert stdout.getvalue()
    else:
        err = stderr.getvalue()  # (a progress bar may come first)
        assert code == 2 and err.splitlines()[-1].startswith("saguaro: error: ") and "Traceback" not in err, err
