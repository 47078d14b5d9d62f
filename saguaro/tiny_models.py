"""Build tiny random Llama 3 / Qwen3 checkpoints (with a tokenizer) in a folder.

Tests, the embedded demo and smoke benchmarks need real model folders on machines with no
model hub. These are genuine Hugging Face checkpoints written by transformers
(``save_pretrained``), so loading them exercises the same code path as a real model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "import os\nimport sys\nprint(os.getcwd(), sys.argv)\n",
    "The quick brown fox jumps over the lazy dog. Speculative decoding drafts tokens.\n",
    "while True:\n    line = input()\n    if not line:\n        break\n",
    "x = {'key': [1, 2, 3], 'other': (4, 5)}\n",
]


# A chat template of the kind real tokenizers carry (role markers around each message, the
# assistant's turn opened on request): chat requests are refused without one.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """Train a small byte-level BPE on a built-in corpus and save it (with ``CHAT_TEMPLATE``)
    next to the model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


def build_tiny_model(
    out_dir: str | Path,
    family: str = "llama",
    *,
    vocab_size: int = 500,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate_size: int = 128,
    tie_word_embeddings: bool = True,
    rope_scaling: dict[str, Any] | None = None,
    legacy_config_layout: bool = False,
    max_position_embeddings: int = 1024,
    init_range: float = 0.2,
    seed: int = 0,
    with_tokenizer: bool = True,
) -> Path:
    """Write a random checkpoint. ``legacy_config_layout`` rewrites config.json with the older
    ``rope_theta`` / ``rope_scaling`` keys real checkpoints carry."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=init_range,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        rms_norm_eps=1e-6,
    )
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if rope_scaling:
        rope = {"rope_theta": 500000.0, **rope_scaling}
    if family == "llama":
        cfg = LlamaConfig(**common, head_dim=head_dim or hidden_size // num_heads, rope_parameters=rope)
        model_cls = LlamaForCausalLM
    elif family == "qwen3":
        cfg = Qwen3Config(**common, head_dim=head_dim or hidden_size // num_heads, rope_parameters=rope)
        model_cls = Qwen3ForCausalLM
    else:
        raise ValueError(f"unknown family {family!r}: use 'llama' or 'qwen3'")
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    model.save_pretrained(str(out))
    if legacy_config_layout:
        _rewrite_legacy(out / "config.json")
    if with_tokenizer:
        build_tokenizer(out, min(vocab_size, 400))
    return out


def _rewrite_legacy(path: Path) -> None:
    raw = json.loads(path.read_text())
    rope = raw.pop("rope_parameters", None) or {}
    raw["rope_theta"] = rope.pop("rope_theta", 10000.0)
    raw["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    path.write_text(json.dumps(raw, indent=2))


def perturbed_copy(src: str | Path, dst: str | Path, noise: float, seed: int = 1) -> Path:
    """Copy a checkpoint adding Gaussian noise to every weight.

    A draft that is an exact copy of its target (noise 0) accepts everything; small noise gives
    partial acceptance — the two regimes exactness tests need and random drafts never reach.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    weights = load_file(str(src / "model.safetensors"))
    noisy = {k: (v + noise * torch.randn(v.shape, generator=gen) * v.float().std()).to(v.dtype).contiguous()
             for k, v in weights.items()}
    save_file(noisy, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst
