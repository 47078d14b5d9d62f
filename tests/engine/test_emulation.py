"""Emulated device steps: the cost model, the profile flag, and one pad per device step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import saguaro.model_runner as model_runner
from saguaro.cli import build_parser
from saguaro.cli_options import engine_options
from saguaro.config import EngineConfig
from saguaro.emulation import PROFILES, StepCost, engine_fields, parse_emulate
from saguaro.errors import ConfigError
from saguaro.model_runner import CausalChunk, ModelRunner


def test_step_cost_is_flat_to_the_knee_then_linear():
    cost = StepCost(0.015, knee=300)
    assert cost.seconds(1) == cost.seconds(300) == 0.015
    assert cost.seconds(600) == pytest.approx(0.030)
    assert StepCost(0.002).seconds(10_000) == 0.002  # no knee: flat
    assert cost.dilated(4).seconds(600) == pytest.approx(0.120)


def test_the_h100_profile_gives_each_role_its_cost():
    profile = PROFILES["h100-70b-1b"]
    assert profile.cost("target") == StepCost(0.015, 300)
    assert profile.cost("draft") == StepCost(0.002, 256)
    assert engine_fields("h100-70b-1b:x4", "draft") == {"emulate_forward_s": pytest.approx(0.008), "emulate_knee_tokens": 256}
    assert engine_fields(None, "target") == {}


@pytest.mark.parametrize("spec, message", [
    ("a100", "unknown emulation profile"),
    ("h100-70b-1b:4", "xS with S >= 1"),
    ("h100-70b-1b:x0.5", "xS with S >= 1"),
    ("h100-70b-1b:xnan", "xS with S >= 1"),
    ("h100-70b-1b:xabc", "xS with S >= 1"),
])
def test_bad_profiles_are_refused_with_the_reason(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_emulate(spec)


def test_the_cli_gives_target_and_draft_their_own_cost(tmp_path):
    args = build_parser().parse_args(["target", "--model", str(tmp_path), "--emulate", "h100-70b-1b:x2"])
    assert engine_options(args)["emulate_forward_s"] == pytest.approx(0.030)
    assert engine_options(args, "draft")["emulate_forward_s"] == pytest.approx(0.004)
    both = build_parser().parse_args(["draft", "--model", str(tmp_path), "--emulate", "h100-70b-1b",
                                      "--emulate-forward-ms", "3"])
    with pytest.raises(ConfigError, match="not both"):
        engine_options(both, "draft")


@pytest.fixture
def runner(model_dirs):
    config = EngineConfig(model=model_dirs["llama"], block_size=8, kv_cache_bytes=1 << 22, show_progress=False,
                          emulate_forward_s=0.01, emulate_knee_tokens=4)
    return ModelRunner(config)


@pytest.fixture
def pads(monkeypatch):
    """Every deadline the runner pads to, instead of sleeping; the runner's clock stands at 100."""
    deadlines: list[float] = []
    monkeypatch.setattr(model_runner, "pad_to", deadlines.append)
    monkeypatch.setattr(model_runner, "time", SimpleNamespace(perf_counter=lambda: 100.0))
    return deadlines


def _forward(runner: ModelRunner, tokens: int, seq_blocks: list[int]) -> torch.Tensor:
    return runner.run_causal([CausalChunk(seq_blocks, 0, list(range(1, tokens + 1)))])


def test_a_forward_outside_a_device_step_is_padded_alone(runner, pads):
    _forward(runner, 8, [0])
    assert pads == [pytest.approx(100.0 + 0.01 * 8 / 4)]  # 8 tokens past a knee of 4


def test_a_device_step_is_padded_once_for_all_its_tokens(runner, pads):
    with runner.device_step():
        _forward(runner, 3, [0])
        _forward(runner, 3, [1])
        with runner.device_step():  # nested: part of the outer step
            pass
        assert pads == []  # nothing padded inside the step
    assert pads == [pytest.approx(100.0 + 0.01 * 6 / 4)]  # from the step's start, for its 6 tokens


def test_without_emulation_a_device_step_costs_nothing(model_dirs, pads):
    plain = ModelRunner(EngineConfig(model=model_dirs["llama"], block_size=8, kv_cache_bytes=1 << 22, show_progress=False))
    with plain.device_step():
        _forward(plain, 3, [0])
    assert pads == []


def test_a_knee_must_be_a_positive_integer(model_dirs):
    with pytest.raises(ConfigError, match="emulate_knee_tokens"):
        EngineConfig(model=model_dirs["llama"], emulate_forward_s=0.01, emulate_knee_tokens=0).validate()
