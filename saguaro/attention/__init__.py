"""Paged attention: batch metadata and interchangeable backends."""

from saguaro.attention.backend import AttentionBackend, TorchAttention, select_backend
from saguaro.attention.metadata import AttentionMetadata, causal_metadata

__all__ = ["AttentionBackend", "AttentionMetadata", "TorchAttention", "causal_metadata", "select_backend"]
