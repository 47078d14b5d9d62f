"""Autoregressive tokens/s of the Saguaro engine vs transformers ``generate``, one thread each.

Both decode the same prompts greedily for exactly ``--new-tokens`` tokens (EOS ignored) at
each batch size, in one run, and the ratio is printed. transformers batches with left padding
(its standard batched generate); Saguaro batches continuously with the paged cache. Outputs
are also compared token by token at batch 1 so a fast-but-wrong engine cannot pass.

    python bench/engine_vs_transformers.py --model ../shared/models/pystdlib-llama/target
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import DEFAULT_MODELS, load_prompts, markdown_table, pin_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODELS / "target")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_MODELS / "prompts.jsonl")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--num-prompts", type=int, default=8, help="prompts per batch size (a multiple of each batch size)")
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    pin_threads(1)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saguaro import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = load_prompts(args.prompts, tokenizer, args.num_prompts)
    hf = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ours = LLM(str(args.model), max_num_seqs=max(args.batch_sizes), show_progress=False)
    params = SamplingParams(max_tokens=args.new_tokens, ignore_eos=True)

    def run_hf(batch: list[list[int]]) -> list[list[int]]:
        enc = tokenizer.pad({"input_ids": batch}, return_tensors="pt")
        with torch.inference_mode():
            out = hf.generate(
                **enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return out[:, enc["input_ids"].shape[1] :].tolist()

    def run_ours(batch: list[list[int]]) -> list[list[int]]:
        return [o.token_ids for o in ours.generate(batch, params)]

    run_hf(prompts[:1]), run_ours(prompts[:1])  # warm-up
    rows = []
    for bs in args.batch_sizes:
        batches = [prompts[i : i + bs] for i in range(0, len(prompts), bs)]
        timings = {}
        for name, fn in (("transformers", run_hf), ("saguaro", run_ours)):
            start = time.perf_counter()
            outputs = [fn(b) for b in batches]
            timings[name] = (time.perf_counter() - start, outputs)
        tokens = len(prompts) * args.new_tokens
        hf_tps = tokens / timings["transformers"][0]
        our_tps = tokens / timings["saguaro"][0]
        same = sum(a == b for x, y in zip(timings["saguaro"][1], timings["transformers"][1]) for a, b in zip(x, y))
        rows.append([bs, len(prompts), round(hf_tps, 1), round(our_tps, 1), round(our_tps / hf_tps, 2), f"{same}/{len(prompts)}"])
    print(markdown_table(["batch", "prompts", "transformers tok/s", "saguaro tok/s", "ratio", "identical outputs"], rows))


if __name__ == "__main__":
    main()
