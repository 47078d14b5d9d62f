"""`saguaro fetch-model` and the model-source grammar it shares with the chart
(saguaro/model_source.py; docs/deploy.md "Model sources"). The download itself is tested against a
local hub in tests/helm/test_model_download.py, from the chart's rendered init container."""

from __future__ import annotations

import pytest

from saguaro.cli import main
from saguaro.model_source import ClaimSource, HubSource, LocalSource, ModelSourceError, parse_model_source


@pytest.mark.parametrize("uri,expected", [
    ("hf://Qwen/Qwen2.5-7B-Instruct", HubSource("Qwen/Qwen2.5-7B-Instruct", "main")),
    ("hf://Qwen/Qwen2.5-0.5B-Instruct@a1b2c3d", HubSource("Qwen/Qwen2.5-0.5B-Instruct", "a1b2c3d")),
    ("hf://org/name@refs/pr/1", HubSource("org/name", "refs/pr/1")),
    ("pvc://llm-models/meta/Llama-3.1-8B", ClaimSource("llm-models", "meta/Llama-3.1-8B")),
    ("pvc://llm-models", ClaimSource("llm-models", "")),
    ("/opt/models/target", LocalSource("/opt/models/target")),
])
def test_sources_parse(uri, expected):
    assert parse_model_source(uri) == expected


@pytest.mark.parametrize("uri,message", [
    ("", "empty model source"),
    ("hf://Qwen2.5-7B", "the repository must be ORG/NAME"),
    ("hf://a/b/c", "the repository must be ORG/NAME"),
    ("hf://Qwen/Qwen2.5-7B@", "an empty revision"),
    ("hf://Qwen/Qwen2.5-7B@../x", "is not a branch, tag or commit name"),
    ("pvc://Models_Claim/x", "is not a PersistentVolumeClaim name"),
    ("pvc://models/../etc", "may not contain '..'"),
    ("s3://bucket/model", "unknown scheme 's3'"),
    ("models/target", "a path must be absolute"),
])
def test_bad_sources_say_what_is_accepted(uri, message):
    with pytest.raises(ModelSourceError, match="expected hf://ORG/NAME") as raised:
        parse_model_source(uri)
    assert message in str(raised.value)


@pytest.mark.parametrize("source,message", [
    ("hf://just-a-name", "the repository must be ORG/NAME"),
    ("pvc://llm-models/target", "needs no download"),
])
def test_cli_rejects_what_it_cannot_fetch(tmp_path, capsys, source, message):
    assert main(["fetch-model", source, str(tmp_path / "dest")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("saguaro: error: ") and message in err
    assert not (tmp_path / "dest").exists(), "nothing is created for a source that cannot be fetched"


def test_help_explains_sources_token_and_reuse(capsys):
    with pytest.raises(SystemExit):
        main(["fetch-model", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("hf://ORG/NAME[@REVISION]", "HF_TOKEN", "HF_ENDPOINT", "not fetched again"):
        assert phrase in text, phrase
