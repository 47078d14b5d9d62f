"""The ``saguaro`` command: local generation, JSON output, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from saguaro import LLM, SamplingParams

pytestmark = pytest.mark.slow  # each test starts the saguaro command in a new interpreter


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saguaro.cli", *args], capture_output=True, text=True, timeout=300)


def test_generate_json_matches_python_api(model_dirs):
    proc = run_cli("generate", "--model", model_dirs["llama"], "--prompt", "def add(a, b):", "--prompt", "import os",
                   "--max-tokens", "6", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = LLM(model_dirs["llama"], show_progress=False).generate(["def add(a, b):", "import os"], SamplingParams(max_tokens=6))
    assert [r["token_ids"] for r in rows] == [e.token_ids for e in expected]
    assert {"token_ids", "text", "finish_reason", "timings"} <= set(rows[0])


def test_generate_plain_text_and_seeded_sampling(model_dirs):
    args = ("generate", "--model", model_dirs["qwen3"], "--prompt", "for i in", "--max-tokens", "8",
            "--temperature", "0.8", "--seed", "7")
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip() != ""


def test_bad_arguments_exit_with_a_message(model_dirs):
    proc = run_cli("generate", "--model", model_dirs["llama"], "--prompt", "x", "--temperature", "-1")
    assert proc.returncode == 2
    assert "temperature must be >= 0" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("generate", "--model", "/no/such/dir", "--prompt", "x")
    assert proc.returncode == 2 and "model folder not found" in proc.stderr


def test_help_explains_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "generate" in proc.stdout
    proc = run_cli("generate", "--help")
    assert "--max-tokens" in proc.stdout and "--json" in proc.stdout


def test_fan_out_policy_is_reachable_from_the_command_line(tmp_path):
    from saguaro.cli import build_parser
    from saguaro.cli_options import speculation_argv, speculation_settings
    from saguaro.v1 import speculation_pb2 as pb

    args = build_parser().parse_args(["target", "--model", str(tmp_path), "--fan-out-policy", "geometric"])
    assert speculation_settings(args).fan_out_policy == pb.FAN_OUT_POLICY_GEOMETRIC
    assert speculation_settings(build_parser().parse_args(["draft", "--model", str(tmp_path)])).fan_out_policy == (
        pb.FAN_OUT_POLICY_LIST)
    up = build_parser().parse_args(["up", "--target", str(tmp_path), "--draft", str(tmp_path),
                                    "--fan-out-policy", "geometric"])
    assert speculation_argv(up)[-2:] == ["--fan-out-policy", "geometric"]  # passed on to the services


def test_enforce_eager_turns_step_graphs_off_on_every_command_and_reaches_the_services(tmp_path):
    from saguaro.cli import build_parser
    from saguaro.cli_options import engine_argv, engine_options

    for command in (["target", "--model", str(tmp_path)], ["draft", "--model", str(tmp_path)],
                    ["generate", "--model", str(tmp_path), "--prompt", "x"]):
        assert engine_options(build_parser().parse_args(command))["step_graphs"] is None  # graphs on CUDA
        assert engine_options(build_parser().parse_args([*command, "--enforce-eager"]))["step_graphs"] is False
    up = build_parser().parse_args(["up", "--target", str(tmp_path), "--draft", str(tmp_path), "--enforce-eager"])
    assert "--enforce-eager" in engine_argv(up)  # passed on to the target and draft processes
