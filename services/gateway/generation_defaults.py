"""Sampling defaults from the model's ``generation_config.json``, as vLLM's ``--generation-config``.

A model's creators ship their recommended sampling there (Llama 3.1: temperature 0.6, top_p
0.9); vLLM applies it to every request that leaves the field unset, so the same request gives
different text on a server that ignores it. The gateway is where a request's fields are known
to be unset (the wire's ``SamplingParams`` cannot tell 0 from absent), so the defaults apply
here, in one place, for the OpenAI API; the file comes from the targets' ``ModelInfo`` (the
gateway mounts no model) or from a folder (``--generation-config FOLDER``).

``--generation-config`` is ``auto`` (the served model's file, vLLM's default), ``vllm`` (none:
the OpenAI defaults) or a folder holding a ``generation_config.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saguaro.errors import ConfigError


AUTO, VLLM = "auto", "vllm"
FILE_NAME = "generation_config.json"

# generation_config.json key -> the request field whose default it is. vLLM reads these keys
# and repetition_penalty and min_p too: add their rows once the gateway honours those fields
# (until then a file that sets them is warned about, never applied half-way).
FIELD_MAP: Mapping[str, str] = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                                 "repetition_penalty": "repetition_penalty", "min_p": "min_p"}
# Not a default but a bound: vLLM serves the smallest of the request's max_tokens, this and
# what the context leaves.
MAX_TOKENS_KEY = "max_new_tokens"


@dataclass(frozen=True)
class GenerationDefaults:
    """The defaults one gateway applies: request field -> value, and the bound on max_tokens."""

    fields: Mapping[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    source: str = VLLM  # where they came from, for the logs

    @classmethod
    def parse(cls, text: str, source: str) -> "GenerationDefaults":
        """The defaults in a ``generation_config.json``'s ``text`` (empty text: none)."""
        if not text.strip():
            return cls(source=source)
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{source} is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ConfigError(f"{source} must hold a JSON object")
        fields = {name: config[key] for key, name in FIELD_MAP.items() if config.get(key) is not None}
        bound = config.get(MAX_TOKENS_KEY)
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int) or bound < 1):
            raise ConfigError(f"{source}: {MAX_TOKENS_KEY} must be a positive integer, got {bound!r}")
        return cls(fields, bound, source)

    def fill(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with each default in the fields it leaves unset (absent or null, as vLLM)."""
        missing = {name: value for name, value in self.fields.items() if body.get(name) is None}
        return {**body, **missing} if missing else body

    def bound(self, max_tokens: int | None) -> int | None:
        """The max_tokens served for a request asking ``max_tokens`` (None: until the context)."""
        if self.max_tokens is None:
            return max_tokens
        return self.max_tokens if max_tokens is None else min(max_tokens, self.max_tokens)

    def describe(self) -> dict[str, Any]:
        """The defaults by request field, as ``/v1/models`` and the startup log show them."""
        shown = dict(self.fields)
        if self.max_tokens is not None:
            shown["max_tokens"] = self.max_tokens
        return shown


def check_setting(setting: str) -> None:
    """``--generation-config``: auto, vllm, or a folder that exists."""
    if setting not in (AUTO, VLLM) and not Path(setting).is_dir():
        raise ConfigError(f"--generation-config must be auto, vllm or a folder (holding {FILE_NAME}); "
                          f"{setting!r} is none of these")


def resolve(setting: str, served: str) -> GenerationDefaults:
    """The defaults ``setting`` asks for; ``served`` is the targets' generation_config.json text
    (``ModelInfo.generation_config``). A folder without the file means no defaults, as vLLM."""
    if setting == VLLM:
        return GenerationDefaults(source="--generation-config vllm")
    if setting == AUTO:
        return GenerationDefaults.parse(served, f"the served model's {FILE_NAME}")
    path = Path(setting) / FILE_NAME
    return GenerationDefaults.parse(path.read_text() if path.is_file() else "", str(path))
