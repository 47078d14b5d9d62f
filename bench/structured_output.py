"""What a grammar costs: AR, SD and SSD with and without structured output, side by side.

Every mode runs the same prompts once per grammar, alternating modes and grammars, over
``--repeats`` passes (this VM drifts 10-20 % between runs, so each ratio is taken within one
pass pattern). Grammars (the pair writes Python, so each is one such a model can follow):

* ``none``: no structured output (the baseline);
* ``ascii``: the regex ``[\\t\\n -~]*``, printable ASCII, which this model's output almost never
  leaves: the grammar work (a matcher per row, a bitmask per verify and draft row) at nearly
  unchanged tokens, so it isolates the mask's cost;
* ``json``: a JSON Schema (an object with a string and an integer), which the model must be
  forced into: the grammar decides most tokens, the output ends when the object is whole.

Raw CPU timings of the pair's small models, one thread per process (the SSD draft is a
``saguaro draft`` service on the last core; SD's draft is in process). Reported per mode and
grammar: tokens/s, its ratio to the same mode without a grammar, tokens per decode step of the
batch, and the time this process spends in ``mask_rows`` (the target's masks; with SD also the
in-process draft's) per generated token. The SSD draft's own masks run in its process: they
show in its build time per round (glue, fork and K tree steps, as its replies report it) and in
tokens/s. Outputs of every mode are checked to be identical for each grammar.

First, steadier than the end-to-end runs on a noisy VM: ``mask_rows`` alone, timed on the
target's tokenizer for the row counts a round masks (1: an AR row; K + 1: a verify block;
B (K + 1) F: a tree step of a batch of B, every branch one row), each row with its own extra
tokens, as the engine calls it.

    python bench/structured_output.py
    python bench/structured_output.py --batch-sizes 1 --new-tokens 64 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

from common import add_pair_args, load_prompts, markdown_table, pin_threads
from saguaro.compare import ModeEngine, ModeResult, ModeSetup, machine_cores

CORES = machine_cores()
JSON_SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                                "line": {"type": "integer"}},
               "required": ["name", "line"], "additionalProperties": False}


@dataclass
class Tally:
    """One mode and grammar, summed over the passes."""

    seconds: float = 0.0
    tokens: int = 0
    rounds: int = 0
    mask_s: float = 0.0  # in mask_rows, in this process
    build_s: float = 0.0  # the SSD draft's build time per round, summed over passes


def grammars():
    from saguaro.structured_output import StructuredOutput

    return {"none": None, "ascii": StructuredOutput.regex(r"[\t\n -~]*"),
            "json": StructuredOutput.json_schema(JSON_SCHEMA)}


class MaskClock:
    """Seconds spent in ``mask_rows`` in this process, observed by wrapping the function where
    the logits processors call it (the engine itself is not touched)."""

    def __init__(self):
        import saguaro.logits_processors as processors

        self.seconds = 0.0
        inner = processors.mask_rows

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        processors.mask_rows = timed


def mask_micro(args, rows_per_call: list[int], calls: int = 300) -> list[list[object]]:
    """Microseconds per ``mask_rows`` call and per row, with the ``ascii`` grammar after a real
    prompt (its own tokens as each row's extra tokens, 0 to ``--ssd-k`` of them)."""
    import numpy
    import torch

    from saguaro.grammar import GrammarCompiler, mask_rows
    from saguaro.config import ModelConfig
    from saguaro.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.target)
    vocab = ModelConfig.from_dir(args.target).vocab_size
    compiler = GrammarCompiler(tokenizer, vocab, [tokenizer.eos_token_id])
    text = load_prompts(args.prompts, tokenizer, 1)[0]
    output, pool = text[: len(text) // 2], text[len(text) // 2:]
    matcher = compiler.matcher(grammars()["ascii"])
    generator = numpy.random.default_rng(0)
    table = []
    for n in rows_per_call:
        extras = [pool[s: s + d] for s, d in zip(generator.integers(0, len(pool) - args.ssd_k, n),
                                                 generator.integers(0, args.ssd_k + 1, n))]
        logits = torch.randn(n, vocab)
        start = time.perf_counter()
        for _ in range(calls):  # (the same rows each time: a masked value masks again at the same cost)
            mask_rows(logits, range(n), [matcher] * n, [output] * n, extras)
        per_call = (time.perf_counter() - start) / calls * 1e6
        assert bool(torch.isneginf(logits).any(dim=1).all()), "every row must have been masked, or this timed nothing"
        table.append([n, round(per_call), round(per_call / n, 1)])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_args(parser, new_tokens=96)
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sd-k", type=int, default=3)
    parser.add_argument("--ssd-k", type=int, default=5)
    parser.add_argument("--ssd-fan-out", type=int, default=3)
    parser.add_argument("--backup", choices=["jit", "fast", "adaptive"], default="jit")
    args = parser.parse_args()
    pin_threads(1)
    os.sched_setaffinity(0, {CORES[0]})

    from saguaro.tokenizer import load_tokenizer

    micro_rows = [1, args.ssd_k + 1, (args.ssd_k + 1) * args.ssd_fan_out] + [
        (args.ssd_k + 1) * args.ssd_fan_out * b for b in args.batch_sizes if b > 1]
    print(markdown_table(["rows per mask_rows call", "us per call", "us per row"], mask_micro(args, micro_rows)))
    print(flush=True)
    prompts = load_prompts(args.prompts, load_tokenizer(args.target), args.num_prompts)
    specs = grammars()
    clock = MaskClock()
    setups = [ModeSetup("ar"), ModeSetup("sd", args.sd_k), ModeSetup("ssd", args.ssd_k, args.ssd_fan_out, args.backup)]
    rows, mismatched = [], []
    for batch in args.batch_sizes:
        engines = [ModeEngine(args.target, args.draft, s, batch, draft_core=CORES[-1]) for s in setups]
        try:
            # (label, grammar) -> its tally, and the outputs of a pass
            totals: dict[tuple[str, str], Tally] = defaultdict(Tally)
            outputs: dict[tuple[str, str], list[list[int]]] = {}
            for engine in engines:
                for spec in specs.values():  # first compiles and first-call costs stay out of the timings
                    engine.timed(prompts[:1], 8, structured_output=spec)
            for _ in range(args.repeats):
                for name, spec in specs.items():
                    for engine in engines:
                        before = clock.seconds
                        out, seconds, rounds = engine.timed(prompts, args.new_tokens, structured_output=spec)
                        key = (engine.setup.label, name)
                        t = totals[key]
                        t.seconds += seconds
                        t.tokens += sum(len(o.token_ids) for o in out)
                        t.rounds += rounds
                        t.mask_s += clock.seconds - before
                        t.build_s += ModeResult.from_outputs(engine.setup, batch, None, out, seconds, rounds).build_s
                        outputs[key] = [list(o.token_ids) for o in out]
            for name in specs:
                reference = outputs[(setups[0].label, name)]
                mismatched += [f"batch {batch} {s.label} {name}" for s in setups if outputs[(s.label, name)] != reference]
                for s in setups:
                    t, base = totals[(s.label, name)], totals[(s.label, "none")]
                    tok_s = t.tokens / t.seconds
                    rows.append([batch, s.label, name, round(tok_s, 1), round(tok_s / (base.tokens / base.seconds), 2),
                                 round(t.tokens / t.rounds, 2) if t.rounds else 0.0,
                                 round(t.mask_s / t.tokens * 1e3, 3),
                                 round(t.build_s / args.repeats * 1e3, 2) if s.mode == "ssd" else "-",
                                 round(t.tokens / args.repeats / len(prompts), 1)])
        finally:
            for engine in engines:
                engine.close()
        print(f"done: batch {batch}", file=sys.stderr, flush=True)
    print(markdown_table(["batch", "mode", "grammar", "tok/s", "vs no grammar", "tokens per decode step",
                          "mask ms/token (this process)", "SSD draft build ms/round", "tokens per request"], rows))
    print(f"\nidentical outputs across modes, per grammar: {'yes' if not mismatched else 'NO: ' + ', '.join(mismatched)}")


if __name__ == "__main__":
    main()
