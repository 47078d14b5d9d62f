"""Saguaro: LLM serving with speculative speculative decoding (SSD).

The engine (this package) runs one model on one device; ``saguaro.services`` holds the
draft, target and gateway services built on it.
"""

from saguaro.errors import ConfigError, InvalidRequestError, ModelLoadError, SaguaroError
from saguaro.llm import LLM, RequestOutput
from saguaro.sampling import SamplingParams

__all__ = ["LLM", "ConfigError", "InvalidRequestError", "ModelLoadError", "RequestOutput", "SaguaroError", "SamplingParams"]
__version__ = "0.1.0"
