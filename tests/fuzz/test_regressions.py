"""The bugs the fuzzers found, each pinned by the smallest input that showed it
(docs/reliability-fuzz.md lists them with what used to happen)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fuzz.support import CONTEXT, MODEL_NAME
from saguaro import LLM, SamplingParams
from saguaro.config import EngineConfig, ModelConfig
from saguaro.errors import ConfigError, InvalidRequestError, ModelLoadError
from saguaro.services.draft.server import SpeculationService
from saguaro.speculative.settings import DraftSettings
from saguaro.services.draft.worker import DraftWorker, draft_runner
from saguaro.services.gateway import GatewayConfig
from saguaro.services.gateway.errors import GatewayError
from saguaro.services.gateway.openai_schema import parse_request
from saguaro.speculative import proposal_codec
from saguaro.v1 import speculation_pb2 as pb

K = 3
SMALL = dict(kv_cache_bytes=16 << 20, max_num_seqs=8, show_progress=False)


# -- the target decoding a draft's reply ---------------------------------------------------------
@pytest.mark.parametrize("dtype, payload, words", [
    (7, b"", "unknown dtype 7"),  # was a KeyError in the target's round loop
    (pb.DTYPE_FLOAT32, torch.tensor([[math.nan, 1.0]]).numpy().tobytes(), "not a probability law"),
    (pb.DTYPE_FLOAT32, torch.tensor([[-1.0, 2.0]]).numpy().tobytes(), "not a probability law"),
    (pb.DTYPE_FLOAT32, torch.zeros(1, 2).numpy().tobytes(), "not a probability law"),  # was NaN rows
    (pb.DTYPE_FLOAT32, torch.tensor([[math.inf, 1.0]]).numpy().tobytes(), "not a probability law"),
])
def test_a_payload_that_is_not_a_law_is_refused(dtype, payload, words):
    with pytest.raises(ValueError, match=words):
        proposal_codec.decode(payload, dtype, 1, 2)


# -- handshake settings --------------------------------------------------------------------------
@pytest.mark.parametrize("config, words", [
    (pb.SpeculationConfig(lookahead_k=2**32 - 1), "between 1 and 64"),  # was a 4-billion-entry list
    (pb.SpeculationConfig(lookahead_k=4, fan_out=2**32 - 1), "at most 1024"),
    (pb.SpeculationConfig(lookahead_k=1, fan_out_list_hit=[2**31, 2**31], fan_out_list_miss=[2**31, 2**31]),
     "at most 1024"),
])
def test_a_handshake_cannot_ask_for_unbounded_speculation(config, words):
    with pytest.raises(ValueError, match=words):
        DraftSettings.from_proto(config)


def test_unknown_enum_values_in_a_handshake_count_as_unspecified():
    """A newer target's enum value (docs/protocol.md §3) used to be stored, then KeyError'd the
    session at its first sampled reply."""
    settings = DraftSettings.from_proto(pb.SpeculationConfig(lookahead_k=2, probs_dtype=7, backup_policy=9,
                                                             fan_out_policy=5))
    assert (settings.probs_dtype, settings.backup_policy, settings.fan_out_policy) == (
        pb.DTYPE_FLOAT32, pb.BACKUP_POLICY_JIT, pb.FAN_OUT_POLICY_LIST)


def test_a_session_whose_tree_does_not_fit_is_refused_not_an_rpc_error(model_dirs):
    """K x fan-out scratch beyond the draft's KV cache used to raise out of Handshake (UNKNOWN)."""
    service = SpeculationService(EngineConfig(model=model_dirs["llama_draft_perturbed"], **SMALL),
                                 DraftSettings(k=K, fan_out=2))
    config = DraftSettings(k=64, fan_out=15).to_proto()
    request = pb.HandshakeRequest(protocol_version=pb.PROTOCOL_VERSION_1, target_model=service.facts, config=config)
    response = service.Handshake(request, None)
    assert not response.accepted and not response.session_id
    assert "cannot hold the session's speculation tree" in response.error_message
    ok = service.Handshake(pb.HandshakeRequest(protocol_version=pb.PROTOCOL_VERSION_1, target_model=service.facts,
                                               config=DraftSettings(k=K, fan_out=2).to_proto()), None)
    assert ok.accepted


# -- the draft's session requests ----------------------------------------------------------------
@pytest.fixture(scope="module")
def worker(model_dirs) -> DraftWorker:
    settings = DraftSettings(k=K, fan_out=2)
    return DraftWorker(draft_runner(EngineConfig(model=model_dirs["llama_draft_perturbed"], **SMALL), settings),
                       settings)


def prefill(*items: pb.PrefillSequence) -> pb.SpeculationRequest:
    return pb.SpeculationRequest(round_id=1, prefill=pb.PrefillRequest(sequences=items))


def speculate(**row) -> pb.SpeculationRequest:
    return pb.SpeculationRequest(round_id=2, speculate=pb.SpeculateRequest(rows=[pb.SpeculateRow(**row)]))


def test_a_prefill_naming_a_sequence_twice_is_refused(worker):
    """Used to free the first copy's blocks, then forward it: IndexError, the session stream died."""
    reply = worker.handle(prefill(pb.PrefillSequence(seq_id=1, prompt_token_ids=[0, 0], reset=True),
                                  pb.PrefillSequence(seq_id=1, prompt_token_ids=[0], reset=True)))
    assert reply.error.code == pb.ERROR_CODE_INVALID_REQUEST and "more than once" in reply.error.message


def test_a_prefill_longer_than_the_drafts_context_is_refused(worker):
    limit = worker.runner.max_model_len
    reply = worker.handle(prefill(pb.PrefillSequence(seq_id=2, prompt_token_ids=[5] * (limit + 6), reset=True)))
    assert reply.error.code == pb.ERROR_CODE_INVALID_REQUEST and "exceed the draft's context" in reply.error.message


@pytest.mark.parametrize("prompt_length, committed", [
    (3, [10**6]),  # a committed token outside the vocabulary: was an IndexError in the embedding
    (3, [-5]),
    (None, [5] * 8),  # committed past the draft's context: was an IndexError in RoPE
])
def test_a_speculate_row_the_draft_cannot_serve_is_invalid(worker, prompt_length, committed):
    prompt = [5] * (prompt_length or worker.runner.max_model_len)
    assert worker.handle(prefill(pb.PrefillSequence(seq_id=3, prompt_token_ids=prompt, reset=True))).prefill.rows
    reply = worker.handle(speculate(seq_id=3, n_prev=-1, recovery_token=3, committed_len=len(prompt) + len(committed),
                                    committed_tokens=committed))
    worker.build()
    assert reply.speculate.rows[0].status == pb.ROW_STATUS_INVALID


# -- the OpenAI body parser ---------------------------------------------------------------------
@pytest.mark.parametrize("kind, body, param", [
    ("completions", {"prompt": "\ud800"}, "prompt"),  # was a TypeError in the tokenizer: HTTP 500
    ("completions", {"prompt": ["ok", "a\udfff"]}, "prompt[1]"),
    ("chat", {"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc80"}]}]}, "messages[0].content"),
])
def test_a_lone_surrogate_is_refused_naming_the_field(preparer, kind, body, param):
    with pytest.raises(GatewayError, match="is not valid Unicode") as error:
        parse_request(kind, json.loads(json.dumps({"model": MODEL_NAME, **body})), preparer)
    assert error.value.param == param and error.value.http_status == 400


def test_a_tiny_top_p_stays_a_tiny_top_p_upstream(preparer):
    """top_p = 1e-53 is in (0, 1] but rounded to 0 in the float32 field, which the target reads
    as "no nucleus filtering": the opposite of what was asked."""
    parsed = parse_request("completions", {"model": MODEL_NAME, "prompt": [3, 4], "top_p": 7.9e-53}, preparer)
    assert 0 < parsed.sampling.top_p < 1e-40


@pytest.fixture(scope="module")
def gateway(model_dirs, module_targets, start_module_gateway):
    target = module_targets(model_dirs["llama"], max_model_len=CONTEXT)
    return start_module_gateway([target.address])


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_not_in_its_content_encoding_is_a_400(gateway, http, encoding):
    """aiohttp's RequestPayloadError used to escape the handler: HTTP 500."""
    reply = http(gateway.http_url + "/v1/completions", raw=b'{"model": "llama"}', headers={"Content-Encoding": encoding})
    assert reply.status == 400 and "cannot be decoded" in reply.json()["error"]["message"]


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer"),  # was accepted: fails in loading
    ({"hidden_size": "64"}, "hidden_size must be a positive integer"),
    ({"hidden_size": [64]}, "hidden_size must be a positive integer"),  # was TypeError
    ({"num_key_value_heads": 3}, "must be a multiple of num_key_value_heads"),  # was accepted
    ({"architectures": [["LlamaForCausalLM"]]}, "unsupported architecture"),  # was TypeError: unhashable
    ({"architectures": "LlamaForCausalLM"}, None),  # a bare string is accepted
    ({"rope_parameters": "x"}, "rope_parameters must be an object"),  # was ValueError from dict()
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0}},
     "must exceed low_freq_factor"),  # was accepted: NaN RoPE frequencies
    ({"eos_token_id": ["</s>"]}, "eos_token_id must be a token id"),  # was accepted
    ({"rms_norm_eps": None, "vocab_size": None}, "lacks the required key 'vocab_size'"),
    ({"torch_dtype": {"x": 1}}, "torch_dtype must be a string"),  # was accepted: AttributeError on CUDA
])
def test_bad_config_json_values_are_named(model_dirs, tmp_path, change, words):
    raw = json.loads(Path(model_dirs["llama"], "config.json").read_text())
    raw.update(change)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    if words is None:
        assert ModelConfig.from_dir(tmp_path).architecture == "LlamaForCausalLM"
        return
    with pytest.raises(ModelLoadError, match=words):
        ModelConfig.from_dir(tmp_path)


@pytest.mark.parametrize("content", [b"\xff\xfe{}", b"[" * 100_000, b"[1, 2]"])
def test_config_json_that_is_not_an_object_is_named(tmp_path, content):
    """These used to escape as UnicodeDecodeError, RecursionError and AttributeError."""
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ModelLoadError, match="config.json"):
        ModelConfig.from_dir(tmp_path)


@pytest.mark.parametrize("fields, words", [
    (dict(device=""), "unknown device ''"),  # was torch's RuntimeError
    (dict(device="meta"), "unsupported device 'meta'"),  # was NotImplementedError deep in loading
    (dict(emulate_forward_s=math.inf), "emulate_forward_s must be a finite number"),  # was OverflowError per step
    (dict(emulate_forward_s=-1.0), "emulate_forward_s must be a finite number"),
    (dict(max_model_len=-3), "max_model_len must be positive"),
    (dict(seed=-18446744073374007296), "seed must be between"),  # was torch's ValueError (long run)
])
def test_bad_engine_settings_are_config_errors(model_dirs, fields, words):
    with pytest.raises(ConfigError, match=words):
        LLM(model_dirs["llama"], show_progress=False, **fields)


@pytest.mark.parametrize("temperature", [math.nan, math.inf])
def test_a_non_finite_temperature_is_refused(temperature):
    """NaN used to sample token 0 forever, silently."""
    with pytest.raises(InvalidRequestError, match="temperature must be >= 0"):
        SamplingParams(temperature=temperature).validate()


@pytest.mark.parametrize("fields, words", [
    (dict(targets=["h:0"]), "port 1-65535"),
    (dict(targets=["h:99999"]), "port 1-65535"),
    (dict(targets=["h:1"], port=70000), "--port must be between 0 and 65535"),
    (dict(targets=["h:1"], http_port=-1), "--http-port must be between 0 and 65535"),
])
def test_gateway_ports_out_of_range_are_config_errors(fields, words):
    with pytest.raises(ConfigError, match=words):
        GatewayConfig(**fields).validate()

