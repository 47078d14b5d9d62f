"""A target whose KV cache holds about two requests, under 16 concurrent streams: requests
queue and are preempted (their KV freed, recomputed later), yet none is lost, every output is
exactly the target-only greedy output, and the target keeps running."""

from __future__ import annotations

import torch

from saguaro.cache.kv_cache import bytes_per_block
from saguaro.config import ModelConfig
from saguaro_loadtest.load import LoadGenerator, counts
from saguaro_loadtest.measure import scrape_metric
from saguaro_loadtest.stack import Stack, StackSpec

BLOCK_SIZE = 16
KV_BLOCKS = 12  # a request of the workload needs up to 5 (40 prompt + 24 new + 3 lookahead tokens)
MAX_MODEL_LEN = 128  # the target refuses to start with a cache smaller than one full-length sequence
CONCURRENCY = 16  # twice --max-num-seqs
REQUESTS = 64


def test_a_tiny_kv_cache_preempts_but_loses_nothing(model_dirs, workload, tmp_path, chaos_report):
    block = bytes_per_block(ModelConfig.from_dir(model_dirs["llama"]), BLOCK_SIZE, torch.float32)
    stack = Stack(StackSpec(model_dirs["llama"], model_dirs["llama_draft_perturbed"], tmp_path, pairs=1, redis=False,
                            target_kv_cache_bytes=KV_BLOCKS * block, max_num_seqs=8,
                            max_model_len=MAX_MODEL_LEN, target_metrics=True)).start()
    try:
        load = LoadGenerator(stack.endpoint, workload, CONCURRENCY, seed=3, requests=REQUESTS, retries=0).start()
        outcomes = load.wait()
        preemptions = scrape_metric(stack.metrics_url("target0"), "vllm:num_preemptions_total")
        chaos_report["memory-pressure"] = {"kv_blocks": KV_BLOCKS, "concurrency": CONCURRENCY,
                                           "counts": counts(outcomes), "preemptions": int(preemptions)}
        assert counts(outcomes) == {"completed": REQUESTS, "failed_retryable": 0, "failed": 0, "corrupted": 0}
        assert preemptions > 0
        assert stack.services["target0"].alive()
    finally:
        stack.stop()
