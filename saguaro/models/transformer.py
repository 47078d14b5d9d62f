"""Decoder-only transformer for the Llama 3 and Qwen3 dense families.

The two families differ only in Qwen3's per-head RMSNorm on q and k (and its explicit
``head_dim``), so one implementation with a ``qk_norm`` switch serves both. Projections are
fused (qkv, gate|up) at load time: on small models the per-op overhead dominates, and on
large ones fewer, bigger matmuls are faster too.

Under tensor parallelism (``group`` given) each rank builds the same modules at its shard's
sizes (``saguaro.parallel.sharding``) and adds three collectives: the embedding lookup and each
row-parallel projection (o, down) are all-reduced, and the LM head's vocabulary shards are
gathered on rank 0. Without a group the forward is the single-device one, op for op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from saguaro.attention import AttentionBackend, AttentionMetadata
from saguaro.config import ModelConfig
from saguaro.models.rope import RotaryEmbedding, apply_rotary
from saguaro.parallel.group import TensorParallelGroup
from saguaro.parallel.sharding import shard_config, vocab_range


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with fp32 statistics (torch's fused op; equals the reference formula in fp32)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, group: TensorParallelGroup | None = None):
        """``cfg``: this rank's shard of the architecture (the whole model without ``group``)."""
        super().__init__()
        self.cfg = cfg
        self.group = group
        self.adds_residual = group is None or group.rank == 0
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
        hidden = self._add_projection(hidden, attn, self.o_weight)
        x = rms_norm(hidden, self.post_attn_norm, cfg.rms_norm_eps)
        gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
        return self._add_projection(hidden, F.silu(gate) * up, self.down_weight)

    def _add_projection(self, hidden: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``hidden + x @ weight.T``, the residual add fused into the projection (in place).

        Row-parallel under TP: ``x`` and ``weight`` hold this rank's slice of the inner dimension,
        so each rank's product is a partial sum; rank 0 alone adds it to the residual stream and
        the all-reduce completes the sum on every rank.
        """
        if self.group is None:
            return hidden.addmm_(x, weight.t())
        out = hidden.addmm_(x, weight.t()) if self.adds_residual else torch.mm(x, weight.t())
        self.group.all_reduce(out)
        return out


class CausalLM(nn.Module):
    """Embeddings, decoder layers, final norm and LM head over a paged KV cache.

    ``cfg`` is the whole model; with ``group`` this rank holds the shard ``local_cfg`` describes
    and the vocabulary rows [vocab_start, vocab_stop), zero-padded to the shard height.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        dtype: torch.dtype,
        max_positions: int,
        device: torch.device,
        group: TensorParallelGroup | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.group = group
        local = cfg if group is None else shard_config(cfg, group.size)
        self.local_cfg = local
        self.vocab_start, self.vocab_stop = (0, cfg.vocab_size) if group is None else vocab_range(
            cfg.vocab_size, group.rank, group.size)

        def vocab_rows() -> nn.Parameter:
            rows = torch.empty(local.vocab_size, cfg.hidden_size, dtype=dtype)
            rows[self.vocab_stop - self.vocab_start :].zero_()  # the last shard's padding
            return nn.Parameter(rows, requires_grad=False)

        self.embed = vocab_rows()
        self.layers = nn.ModuleList(DecoderLayer(local, dtype, group) for _ in range(cfg.num_layers))
        self.final_norm = nn.Parameter(torch.empty(cfg.hidden_size, dtype=dtype), requires_grad=False)
        self.lm_head = self.embed if cfg.tie_word_embeddings else vocab_rows()
        self.rotary = RotaryEmbedding(cfg.rope, cfg.head_dim, max_positions, dtype, device)
        self.bytes_loaded = 0  # checkpoint bytes this rank read (the loader counts them)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
        attention: AttentionBackend,
        logits_index: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Run T new tokens; return fp32 logits for the rows in ``logits_index`` (all if None).

        Under TP only rank 0 gets the logits (the other ranks return None)."""
        hidden = F.embedding(input_ids, self.embed) if self.group is None else self._embed_shard(input_ids)
        cos_sin = self.rotary.tables(positions)
        for layer, kv in zip(self.layers, kv_caches):
            hidden = layer(hidden, cos_sin, kv, meta, attention)
        if logits_index is not None:
            hidden = hidden[logits_index]
        hidden = rms_norm(hidden, self.final_norm, self.cfg.rms_norm_eps)
        logits = F.linear(hidden, self.lm_head)
        if self.group is None:
            return logits.float()
        shards = self.group.gather_to_first(logits)
        return None if shards is None else torch.cat(shards, dim=-1)[:, : self.cfg.vocab_size].float().contiguous()

    def _embed_shard(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Vocab-parallel lookup: rows this rank owns, zeros for the others, summed over ranks."""
        local = input_ids - self.vocab_start
        elsewhere = (input_ids < self.vocab_start) | (input_ids >= self.vocab_stop)
        hidden = F.embedding(local.masked_fill(elsewhere, 0), self.embed)
        hidden.masked_fill_(elsewhere[:, None], 0.0)
        self.group.all_reduce(hidden)
        return hidden
