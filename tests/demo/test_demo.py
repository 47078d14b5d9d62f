"""The embedded demo (``saguaro demo``) and its bundled pair, in a reduced form: fewer prompts
and tokens, the same code path. No timing assertions: the table's structure and the identity
of every mode's outputs are what is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from saguaro import demo
from saguaro.compare import ModeSetup
from saguaro.demo import DEMO_PAIR, DemoPlan, demo_pair, demo_prompts, speed_table
from saguaro.errors import ModelLoadError

pytestmark = pytest.mark.slow  # runs the demo end to end, its command included

ENV = dict(os.environ, OMP_NUM_THREADS="1")
SMALL = DemoPlan(prompts=2, new_tokens=6, sd_ks=(2, 3), ssd=ModeSetup("ssd", k=3, fan_out=2, backup="fast"),
                 repeats=1, dilation=1.0)


def test_bundled_pair_is_small_half_precision_and_holds_out_its_prompts():
    files = [p for p in DEMO_PAIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 8 * 1024 * 1024
    for role in ("target", "draft"):
        config = json.loads((DEMO_PAIR / role / "config.json").read_text())
        assert config["dtype"] == "float16" and config["model_type"] == "llama"
    training = json.loads((DEMO_PAIR / "TRAINING.json").read_text())
    assert "standard library" in training["corpus"]
    assert len(demo_prompts(100)) >= 16


def test_engine_greedy_equals_transformers_and_draft_agrees_with_target():
    """The demo's text is the target's own greedy text (fp32 on CPU, as ``dtype auto`` loads
    it), and the draft predicts the target's greedy token most of the time on held-out code."""
    from transformers import AutoModelForCausalLM

    from saguaro import LLM, SamplingParams
    from saguaro.tokenizer import load_tokenizer

    target_dir, draft_dir = demo_pair()
    tokenizer = load_tokenizer(str(target_dir))
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in demo_prompts(4)]
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32).eval()
    ours = LLM(str(target_dir), show_progress=False, kv_cache_bytes=32 << 20).generate(
        prompts, SamplingParams(max_tokens=24, ignore_eos=True))
    agree = total = 0
    for ids, out in zip(prompts, ours):
        ref = list(ids)
        with torch.inference_mode():
            for _ in range(24):  # greedy, EOS included (the engine ignores EOS here, as the demo does)
                ref.append(int(target(torch.tensor([ref])).logits[0, -1].argmax()))
            predicted = draft(torch.tensor([ref[:-1]])).logits.argmax(-1)[0, len(ids) - 1:].tolist()
        assert out.token_ids == ref[len(ids):]
        agree += sum(p == t for p, t in zip(predicted, ref[len(ids):]))
        total += 24
    assert agree / total >= 0.5, agree / total


def test_speed_table_has_every_mode_and_identical_outputs():
    target, draft = demo_pair()
    table = speed_table(target, draft, SMALL, profile="h100-70b-1b")
    assert table.identical
    assert [r.setup.k for r in table.sds] == [2, 3] and table.best_sd in table.sds
    assert table.ssd.setup == SMALL.ssd and table.ssd.hit_rate > 0
    assert all(len(r.outputs) == 2 and all(len(o) == 6 for o in r.outputs) for r in (table.ar, *table.sds, table.ssd))
    rows = table.rows()
    assert [row[0].split()[0] for row in rows] == ["AR", "SD,", "SSD"]
    assert all(len(row) == 6 for row in rows) and rows[0][2] == "1.00x"
    text = table.render()
    assert "SSD / best SD:" in text and "outputs identical across AR, SD and SSD: yes (12 greedy tokens per mode" in text


def test_demo_command_streams_text_and_prints_the_table():
    proc = subprocess.run([sys.executable, "-m", "saguaro.cli", "demo", "--prompts", "1", "--max-tokens", "8",
                           "--repeats", "1", "--raw"], capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert demo_prompts(1)[0].splitlines()[0] in out  # the streamed completion starts with its prompt
    assert "tokens a round, cache hit rate" in out
    for label in ("AR (plain decoding)", "SD, best K=", "SSD K="):
        assert label in out
    assert "outputs identical across AR, SD and SSD: yes" in out
    assert demo.RAW_NOTE in out


def test_demo_refuses_bad_arguments_and_a_missing_pair(monkeypatch, tmp_path):
    from saguaro.cli import main

    assert main(["demo", "--prompts", "0"]) == 2
    assert main(["demo", "--dilation", "0.5"]) == 2
    monkeypatch.setattr(demo, "DEMO_PAIR", tmp_path)
    with pytest.raises(ModelLoadError, match="the demo pair is missing"):
        demo_pair()
