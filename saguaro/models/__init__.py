"""Model code (Llama 3, Qwen3) and checkpoint loading."""

from saguaro.models.loader import load_model
from saguaro.models.transformer import CausalLM

__all__ = ["CausalLM", "load_model"]
