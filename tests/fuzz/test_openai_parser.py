"""The OpenAI body parser on its own (no sockets, so many examples): any JSON value either parses
into a request the targets can serve or is refused with INVALID_ARGUMENT naming the field.

The live HTTP tests (test_http_fuzz.py) send fewer, but real, requests through aiohttp.
"""

from __future__ import annotations

import json

import grpc
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz.support import BODIES, JSON, MODEL_NAME, fuzz_settings, mostly
from saguaro.request_rules import MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS
from saguaro.services.gateway.errors import GatewayError
from saguaro.services.gateway.api_models import MAX_N
from saguaro.services.gateway.openai_schema import parse_request
from saguaro.services.gateway.prepare import Preparer
from saguaro.v1 import inference_pb2 as pb
from saguaro.wire import MODE_TO_PROTO


def check_parsed_or_refused(kind: str, body, preparer: Preparer) -> None:
    """The property: a parsed request is servable as is; a refusal is a 400 with a JSON body (an
    unknown model: vLLM's 404)."""
    try:
        parsed = parse_request(kind, body, preparer)
    except GatewayError as exc:
        error = json.loads(json.dumps(exc.openai_body()))["error"]
        if exc.code is grpc.StatusCode.NOT_FOUND:
            assert exc.http_status == 404 and error["param"] == "model" and error["type"] == "not_found_error", exc
            return
        assert exc.code is grpc.StatusCode.INVALID_ARGUMENT and exc.http_status == 400, exc
        assert error["message"] and error["type"] == "invalid_request_error"
        assert error["param"] is None or isinstance(error["param"], str)
        event(f"refused: {error['param']}")
        return
    event(f"parsed {kind}")
    facts = preparer.facts
    sampling = parsed.sampling
    assert parsed.prompts and all(parsed.prompts)
    for prompt in parsed.prompts:
        assert all(isinstance(t, int) and 0 <= t < facts.vocab_size for t in prompt)
        assert len(prompt) < facts.max_model_len
    assert 1 <= sampling.max_tokens <= facts.max_model_len
    assert 0 <= sampling.temperature <= 2 and 0 < sampling.top_p <= 1 and sampling.top_k >= 0
    assert all(0 <= t < facts.vocab_size for t in sampling.stop_token_ids)
    assert len(sampling.stop) <= MAX_STOP_STRINGS and all(0 < len(s) <= MAX_STOP_STRING_CHARS for s in sampling.stop)
    assert parsed.decode_mode in (pb.DECODE_MODE_DEFAULT, *MODE_TO_PROTO.values())
    assert 1 <= parsed.n <= MAX_N


@fuzz_settings()
@given(kind=st.sampled_from(sorted(BODIES)), data=st.data())
def test_structured_bodies_parse_or_are_refused(preparer, kind, data):
    check_parsed_or_refused(kind, data.draw(BODIES[kind], label="body"), preparer)


FIELDS = ["prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop",
          "stop_token_ids", "n", "stream", "stream_options", "mode", "ignore_eos", "response_format", "best_of"]
ANY_BODY = JSON | st.fixed_dictionaries({"model": mostly(st.just(MODEL_NAME))}, optional=dict.fromkeys(FIELDS, JSON))


@fuzz_settings()
@given(kind=st.sampled_from(sorted(BODIES)), body=ANY_BODY)
def test_any_json_value_parses_or_is_refused(preparer, kind, body):
    check_parsed_or_refused(kind, body, preparer)
