"""Saguaro: LLM serving with speculative speculative decoding (SSD).

The engine (this package) runs one model on one device; ``saguaro.services`` holds the
draft, target and gateway services built on it.

The top-level names are resolved on first use (PEP 562): ``from saguaro import LLM`` loads
the engine and torch, but importing any submodule — the gateway, the client, the wire
constants — runs this file too, and must not pay for torch it never touches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saguaro.lazy_exports import lazy_getattr

if TYPE_CHECKING:
    from saguaro.errors import ConfigError, InvalidRequestError, ModelLoadError, SaguaroError
    from saguaro.llm import LLM, RequestOutput
    from saguaro.sampling import SamplingParams
    from saguaro.structured_output import StructuredOutput

_EXPORTS = {
    "LLM": "saguaro.llm",
    "RequestOutput": "saguaro.llm",
    "ConfigError": "saguaro.errors",
    "InvalidRequestError": "saguaro.errors",
    "ModelLoadError": "saguaro.errors",
    "SaguaroError": "saguaro.errors",
    "SamplingParams": "saguaro.sampling",
    "StructuredOutput": "saguaro.structured_output",
}

__all__ = ["LLM", "ConfigError", "InvalidRequestError", "ModelLoadError", "RequestOutput", "SaguaroError", "SamplingParams",
           "StructuredOutput"]
__version__ = "0.1.0"


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
