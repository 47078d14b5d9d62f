"""Triton kernels for the speculation hot paths, each behind a dispatch with a torch reference.

| dispatch | torch reference (the CPU path) | Triton kernel |
|---|---|---|
| ``store_kv`` | ``saguaro.attention.backend.store_kv`` | ``kv_store_triton`` |
| ``fused_verify`` | ``saguaro.speculative.verification.verify`` | ``verify_triton`` |
| ``fork_candidates`` | ``saguaro.speculative.fanout.fork_candidates`` | ``fork_triton`` |
| ``tree_attention`` | ``TorchAttention`` on ``tree_step_metadata`` | ``tree_attention_triton`` |

``backend="auto"`` runs Triton on CUDA tensors and the reference elsewhere; the Triton
modules are imported only when a Triton launch happens, so the CPU engine never imports
triton. Costs, tolerances and what has run where: docs/kernels.md.
"""

from saguaro.kernels.dispatch import Backend, launch_counts, use_triton
from saguaro.kernels.fork import fork_candidates
from saguaro.kernels.kv_store import store_kv
from saguaro.kernels.tree_attention import TreeStep, tree_attention
from saguaro.kernels.verify import fused_verify

__all__ = [
    "Backend",
    "TreeStep",
    "fork_candidates",
    "fused_verify",
    "launch_counts",
    "store_kv",
    "tree_attention",
    "use_triton",
]
