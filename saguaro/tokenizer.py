"""Tokenizer loading from a model folder (tokenizer.json / tokenizer_config.json)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from saguaro.errors import InvalidRequestError, ModelLoadError


def load_tokenizer(model_dir: str | Path):
    """The folder's fast tokenizer, or None when it ships none (token-id prompts only)."""
    model_dir = Path(model_dir)
    if not (model_dir / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken folder
        raise ModelLoadError(f"cannot load the tokenizer in {model_dir}: {exc}") from None


def tokenizer_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 of tokenizer.json: two models with equal fingerprints tokenise identically."""
    path = Path(model_dir) / "tokenizer.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def encode(tokenizer, text: str) -> list[int]:
    if tokenizer is None:
        raise InvalidRequestError("this model folder has no tokenizer.json: send token ids instead of text")
    return tokenizer.encode(text, add_special_tokens=False)


def decode(tokenizer, token_ids: list[int]) -> str:
    """The text of ``token_ids`` as every Saguaro surface shows it (special tokens skipped)."""
    return "" if tokenizer is None else tokenizer.decode(token_ids, skip_special_tokens=True)
