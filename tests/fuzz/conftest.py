"""Fixtures of the fuzz tests: the gateway's (real targets, real gateways, an HTTP helper) and an
OpenAI body parser with the tiny model's real tokenizer.

The gateway fixtures live in tests/services/gateway/conftest.py; pytest only applies a conftest to
its own folder, so this one loads that module by path and re-exports the fixtures the fuzzers use.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fuzz.support import CONTEXT, MODEL_NAME
from saguaro.config import ModelConfig
from saguaro.services.gateway.prepare import ModelFacts, Preparer
from saguaro.services.gateway.tokenization import GatewayTokenizer
from saguaro.tokenizer import load_tokenizer

_spec = importlib.util.spec_from_file_location(
    "saguaro_gateway_test_fixtures", Path(__file__).parents[1] / "services" / "gateway" / "conftest.py")
_gateway = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # (dataclasses look it up)
_spec.loader.exec_module(_gateway)

http = _gateway.http
module_targets = _gateway.module_targets
start_module_gateway = _gateway.start_module_gateway


@pytest.fixture(scope="session")
def preparer(model_dirs) -> Preparer:
    """What the gateway validates requests with, for a target of the tiny llama at CONTEXT tokens."""
    vocab = ModelConfig.from_dir(model_dirs["llama"]).vocab_size
    tokenizer = GatewayTokenizer(load_tokenizer(model_dirs["llama"]))
    return Preparer(ModelFacts(MODEL_NAME, CONTEXT, vocab), tokenizer, block_size=16, max_prefix_blocks=256)
