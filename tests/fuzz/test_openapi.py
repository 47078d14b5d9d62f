"""services/gateway/openapi.json: the document generated from the API's models (openapi.py), a
valid OpenAPI 3.1 document that lists exactly the gateway's HTTP routes, and that a live gateway
honours (schemathesis generates requests from it, valid and invalid, and checks every answer
against it: status codes, content types, response schemas, no 5xx)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import schemathesis
from openapi_spec_validator import validate
from schemathesis.specs.openapi.checks import positive_data_acceptance

from fuzz.support import CONTEXT, LIVE, fuzz_settings
from saguaro.services.gateway import openapi
from saguaro.services.gateway.http_api import OpenAIApi
from saguaro.services.gateway.request_fields import HARMLESS, HONOURED, REFUSED, RESPONSES_REFUSED

SPEC = Path(__file__).parents[2] / "services" / "gateway" / "openapi.json"
schema = schemathesis.openapi.from_path(SPEC)


def test_the_committed_document_is_the_generated_one():
    """openapi.json is generated from the models: regenerate it (python -m
    saguaro.services.gateway.openapi) after changing a model or a route."""
    assert SPEC.read_text() == openapi.rendered()
    assert openapi.main(["--check"]) == 0


def test_the_document_is_valid_openapi():
    validate(json.loads(SPEC.read_text()))


def test_the_document_lists_exactly_the_routes():
    document = json.loads(SPEC.read_text())
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    app = OpenAIApi(gateway=None).app()  # building the routes needs no gateway
    served = {(route.method, route.resource.canonical) for route in app.router.routes() if route.method != "HEAD"}
    # (the document's own URL need not describe itself)
    assert served - {("GET", "/openapi.json")} == documented


@pytest.mark.parametrize("kind, schema_name, refused", [("completions", "CompletionRequest", REFUSED),
                                                         ("chat", "ChatCompletionRequest", REFUSED),
                                                         ("responses", "ResponsesRequest", RESPONSES_REFUSED)])
def test_the_document_describes_every_field_of_the_table(kind, schema_name, refused):
    """Each field the gateway honours, ignores or refuses unless neutral (request_fields.py)."""
    properties = json.loads(SPEC.read_text())["components"]["schemas"][schema_name]["properties"]
    assert set(properties) >= HONOURED[kind] | HARMLESS | set(refused)


@pytest.fixture(scope="module")
def gateway(model_dirs, module_targets, start_module_gateway):
    target = module_targets(model_dirs["llama"], max_model_len=CONTEXT)
    return start_module_gateway([target.address])


def test_the_gateway_serves_its_document(gateway):
    with urllib.request.urlopen(f"{gateway.http_url}/openapi.json", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        assert json.loads(response.read()) == json.loads(SPEC.read_text())


@schema.parametrize()
@fuzz_settings(LIVE)
def test_a_live_gateway_honours_its_document(gateway, case):
    # Not checked: that every schema-valid request is served. The served model's name, vocabulary
    # and context are the deployment's, which a static document cannot state (a valid-looking
    # body naming another model is a 400 by design).
    case.call_and_validate(base_url=gateway.http_url, timeout=60, excluded_checks=[positive_data_acceptance])
