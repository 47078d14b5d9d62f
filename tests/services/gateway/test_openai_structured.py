"""Structured output through the gateway with the official `openai` client, on AR, SD and SSD
targets: OpenAI's ``response_format`` (json_schema, json_object), vLLM's ``structured_outputs``
(regex, choice) and its older ``guided_*`` fields are honoured, completions and chat, streamed
and not; every mode returns the same greedy text; an invalid schema, regex or grammar, or two
fields at once, is a 400 naming the field (INVALID_ARGUMENT on the target's gRPC API)."""

from __future__ import annotations

import json
import re

import grpc
import jsonschema
import openai
import pytest

from saguaro import StructuredOutput
from saguaro.client import Client
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow  # module-scoped AR, SD and SSD stacks

MODES = ("ar", "sd", "ssd")
SCHEMA = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"const": 3},
                                           "ok": {"type": "boolean"}},
          "required": ["color", "size", "ok"], "additionalProperties": False}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
REGEX = r"(def|class) [a-z]{1,6}\(\):"
CHOICES = ["yes", "no", "maybe so"]
PROMPT = "def add(a, b):"
MESSAGES = [{"role": "user", "content": "Describe a thing as JSON."}]
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def clients(model_dirs, module_targets, module_draft_services, start_module_gateway):
    """mode -> an `openai` client of a gateway in front of a target of that mode."""
    target, draft = model_dirs["llama"], model_dirs["llama_draft_perturbed"]
    targets = {"ar": module_targets(target), "sd": module_targets(target, "sd", draft_model=draft),
               "ssd": module_targets(target, "ssd", module_draft_services(draft))}
    return {mode: openai.OpenAI(base_url=start_module_gateway([t.address]).http_url + "/v1", api_key="unused",
                                max_retries=0)
            for mode, t in targets.items()}, targets


def completion_text(client, kind: str, stream: bool, **options) -> tuple[str, str]:
    """(text, finish_reason) of one greedy request, streamed or not."""
    if kind == "chat":
        request = dict(model="llama", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, **options)
        if not stream:
            choice = client.chat.completions.create(**request).choices[0]
            return choice.message.content, choice.finish_reason
        chunks = list(client.chat.completions.create(stream=True, **request))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    request = dict(model="llama", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, **options)
    if not stream:
        choice = client.completions.create(**request).choices[0]
        return choice.text, choice.finish_reason
    chunks = list(client.completions.create(stream=True, **request))
    return "".join(c.choices[0].text for c in chunks), [c.choices[0].finish_reason for c in chunks][-1]


@pytest.mark.parametrize("kind", ["completions", "chat"])
@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_in_every_mode(clients, kind, stream):
    texts = {}
    for mode in MODES:
        option = {"response_format": RESPONSE_FORMAT} if kind == "chat" else {"extra_body": {
            "response_format": RESPONSE_FORMAT}}
        text, finish = completion_text(clients[0][mode], kind, stream, **option)
        assert finish == "stop", (mode, text)
        jsonschema.validate(json.loads(text), SCHEMA)
        texts[mode] = text
    assert len(set(texts.values())) == 1, texts


def is_json_object_start(text: str) -> bool:
    """Any JSON object lets a random model go on to max_tokens: its text starts one."""
    return text.startswith("{")


@pytest.mark.parametrize("body, check", [
    ({"structured_outputs": {"regex": REGEX}}, lambda text: re.fullmatch(REGEX, text)),
    ({"guided_regex": REGEX}, lambda text: re.fullmatch(REGEX, text)),
    ({"structured_outputs": {"choice": CHOICES}}, lambda text: text in CHOICES),
    ({"guided_choice": CHOICES}, lambda text: text in CHOICES),
    ({"guided_json": SCHEMA}, lambda text: jsonschema.validate(json.loads(text), SCHEMA) is None),
    ({"structured_outputs": {"grammar": 'start: "x" DIGIT DIGIT?\n%import common.DIGIT'}},
     lambda text: re.fullmatch(r"x[0-9]{1,2}", text)),
    ({"guided_grammar": 'start: "n=" ("a" | "bb")'}, lambda text: text in ("n=a", "n=bb")),
    ({"structured_outputs": {"json_object": True}}, is_json_object_start),
    ({"response_format": {"type": "json_object"}}, is_json_object_start),
])
def test_vllm_fields_in_every_mode(clients, body, check):
    """The same greedy text in every mode (streamed in SD), inside the grammar: whole where the
    grammar ends (finish_reason "stop")."""
    texts = set()
    for mode in MODES:
        text, finish = completion_text(clients[0][mode], "completions", mode == "sd", extra_body=body)
        assert finish == ("length" if check is is_json_object_start else "stop"), (mode, text)
        assert check(text), (mode, text)
        texts.add(text)
    assert len(texts) == 1, texts


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"structured_outputs": {"regex": "a(b"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"structured_outputs": {"grammar": "start: undefined_rule"}}, "structured_outputs"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_choice": "yes"}, "guided_choice"),
    ({"guided_regex": "(a"}, "guided_regex"),
    ({"guided_regex": "a+", "response_format": {"type": "json_object"}}, "response_format"),
])
def test_invalid_structured_output_is_400_naming_the_field(clients, body, param):
    client = clients[0]["ssd"]
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="llama", prompt=PROMPT, max_tokens=4, extra_body=body)
    assert refused.value.status_code == 400 and refused.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="llama", messages=MESSAGES, max_tokens=4, extra_body=body)
    assert refused.value.body["param"] == param


def test_two_fields_at_once_names_both(clients):
    with pytest.raises(openai.BadRequestError) as refused:
        clients[0]["ar"].completions.create(model="llama", prompt=PROMPT, max_tokens=4,
                                            extra_body={"guided_regex": "a+", "structured_outputs": {"regex": "b+"}})
    assert "structured_outputs" in refused.value.body["message"] and "guided_regex" in refused.value.body["message"]


def test_text_response_format_is_free_text(clients):
    client = clients[0]["ar"]
    plain = client.completions.create(model="llama", prompt=PROMPT, max_tokens=8, temperature=0)
    text = client.completions.create(model="llama", prompt=PROMPT, max_tokens=8, temperature=0,
                                     extra_body={"response_format": {"type": "text"}})
    assert text.choices[0].text == plain.choices[0].text


@pytest.mark.parametrize("spec, field", [
    (pb.StructuredOutput(json_schema='{"type": "wat"}'), "structured_output.json_schema"),
    (pb.StructuredOutput(regex="a(b"), "structured_output.regex"),
    (pb.StructuredOutput(grammar="start: nothing_here"), "structured_output.grammar"),
    (pb.StructuredOutput(choice=pb.StructuredOutput.Choices()), "structured_output.choice"),
])
def test_grpc_refuses_an_invalid_grammar_as_invalid_argument(clients, spec, field):
    with grpc.insecure_channel(clients[1]["ssd"].address) as channel:
        request = pb.GenerateRequest(prompt_text=PROMPT,
                                     sampling=pb.SamplingParams(max_tokens=4, structured_output=spec))
        with pytest.raises(grpc.RpcError) as refused:
            list(pb_grpc.InferenceStub(channel).Generate(request, timeout=60))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(field)


@pytest.mark.parametrize("mode", MODES)
def test_the_sdk_sends_a_grammar_over_grpc(clients, mode):
    with Client(clients[1][mode].address, timeout=60) as client:
        result = client.generate(PROMPT, max_tokens=MAX_TOKENS, structured_output=StructuredOutput.choice(CHOICES))
    assert result.text in CHOICES and result.finish_reason == "stop"
