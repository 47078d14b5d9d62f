"""Decoder-only transformer for the Llama 3 and Qwen3 dense families.

The two families differ only in Qwen3's per-head RMSNorm on q and k (and its explicit
``head_dim``), so one implementation with a ``qk_norm`` switch serves both. Projections are
fused (qkv, gate|up) at load time: on small models the per-op overhead dominates, and on
large ones fewer, bigger matmuls are faster too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from saguaro.attention import AttentionBackend, AttentionMetadata
from saguaro.config import ModelConfig
from saguaro.models.rope import RotaryEmbedding, apply_rotary


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with fp32 statistics (torch's fused op; equals the reference formula in fp32)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype):
        super().__init__()
        self.cfg = cfg
        q_size = cfg.num_heads * cfg.head_dim
        kv_size = cfg.num_kv_heads * cfg.head_dim
        self.q_size, self.kv_size = q_size, kv_size
        empty = lambda *shape: nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)  # noqa: E731
        self.input_norm = empty(cfg.hidden_size)
        self.qkv_weight = empty(q_size + 2 * kv_size, cfg.hidden_size)
        self.qkv_bias = empty(q_size + 2 * kv_size) if cfg.attention_bias else None
        self.q_norm = empty(cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = empty(cfg.head_dim) if cfg.qk_norm else None
        self.o_weight = empty(cfg.hidden_size, q_size)
        self.post_attn_norm = empty(cfg.hidden_size)
        self.gate_up_weight = empty(2 * cfg.intermediate_size, cfg.hidden_size)
        self.down_weight = empty(cfg.hidden_size, cfg.intermediate_size)
        self.scale = cfg.head_dim ** -0.5

    def forward(
        self,
        hidden: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
        attention: AttentionBackend,
    ) -> torch.Tensor:
        cfg = self.cfg
        x = rms_norm(hidden, self.input_norm, cfg.rms_norm_eps)
        qkv = F.linear(x, self.qkv_weight, self.qkv_bias)
        heads, kv_heads = cfg.num_heads, cfg.num_kv_heads
        if self.q_norm is None:
            # q and k are adjacent in the fused output: rotate both with one set of ops
            qk = apply_rotary(qkv[:, : self.q_size + self.kv_size].view(-1, heads + kv_heads, cfg.head_dim), cos_sin)
            q, k = qk.split([heads, kv_heads], dim=1)
        else:
            q, k = qkv[:, : self.q_size + self.kv_size].split([self.q_size, self.kv_size], dim=-1)
            q = apply_rotary(rms_norm(q.view(-1, heads, cfg.head_dim), self.q_norm, cfg.rms_norm_eps), cos_sin)
            k = apply_rotary(rms_norm(k.view(-1, kv_heads, cfg.head_dim), self.k_norm, cfg.rms_norm_eps), cos_sin)
        v = qkv[:, self.q_size + self.kv_size :].view(-1, kv_heads, cfg.head_dim)
        attn = attention(q, k, v, kv[0], kv[1], meta, self.scale)
        hidden = hidden.addmm(attn, self.o_weight.t())  # residual add fused into the projection
        x = rms_norm(hidden, self.post_attn_norm, cfg.rms_norm_eps)
        gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
        return hidden.addmm_(F.silu(gate) * up, self.down_weight.t())


class CausalLM(nn.Module):
    """Embeddings, decoder layers, final norm and LM head over a paged KV cache."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, max_positions: int, device: torch.device):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size, dtype=dtype), requires_grad=False)
        self.layers = nn.ModuleList(DecoderLayer(cfg, dtype) for _ in range(cfg.num_layers))
        self.final_norm = nn.Parameter(torch.empty(cfg.hidden_size, dtype=dtype), requires_grad=False)
        self.lm_head = (
            self.embed
            if cfg.tie_word_embeddings
            else nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size, dtype=dtype), requires_grad=False)
        )
        self.rotary = RotaryEmbedding(cfg.rope, cfg.head_dim, max_positions, dtype, device)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
        attention: AttentionBackend,
        logits_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run T new tokens; return fp32 logits for the rows in ``logits_index`` (all if None)."""
        hidden = F.embedding(input_ids, self.embed)
        cos_sin = self.rotary.tables(positions)
        for layer, kv in zip(self.layers, kv_caches):
            hidden = layer(hidden, cos_sin, kv, meta, attention)
        if logits_index is not None:
            hidden = hidden[logits_index]
        hidden = rms_norm(hidden, self.final_norm, self.cfg.rms_norm_eps)
        return F.linear(hidden, self.lm_head).float()
