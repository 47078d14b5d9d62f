"""Tensor parallelism for the target: shard layout, collectives, rank 0's launcher, followers.

See docs/parallelism.md. The model code (``saguaro.models``) takes a ``TensorParallelGroup``;
``saguaro.model_runner.ModelRunner`` starts everything when ``tensor_parallel_size`` > 1.
"""
