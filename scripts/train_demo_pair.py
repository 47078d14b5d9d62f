"""Train the demo's draft/target pair on the Python standard library's own sources.

The embedded default of ``saguaro demo`` is this pair (saguaro/assets/pystdlib-mini). It
exists so a newcomer sees real text and realistic speculative acceptance with no model hub:
every machine that runs Python has the corpus, and it ships under the PSF license, which lets
us carry weights trained on it. The run is deterministic for a given stdlib and torch build.

    .venv/bin/python scripts/train_demo_pair.py [--out saguaro/assets/pystdlib-mini]

Steps: collect the stdlib's .py files (tests excluded) and hold out 5% of them by a hash of
their path; train a 4096-token byte-level BPE tokenizer; train the target (Llama, 2.4M
parameters) on random 256-token windows; distil the draft (Llama, 0.9M parameters) from the
target's distributions (KL); cut prompts from the held-out files; measure the draft's greedy
agreement with the target there; store both in fp16 safetensors (about 7 MB in all).
About 30 minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["<|bos|>", "<|eos|>", "<|pad|>"]
VOCAB = 4096
SEQ = 256
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}

TARGET_SHAPE = dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, num_key_value_heads=1,
                    head_dim=64, intermediate_size=512)
DRAFT_SHAPE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                   head_dim=64, intermediate_size=320)


def stdlib_files() -> tuple[list[Path], list[Path]]:
    """(train, held-out) .py files of this interpreter's standard library, tests excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not EXCLUDED_DIRS.intersection(p.relative_to(root).parts))
    held = [p for p in files if int(hashlib.sha256(str(p.relative_to(root)).encode()).hexdigest(), 16) % 20 == 0]
    held_set = set(held)
    return [p for p in files if p not in held_set], held


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def train_tokenizer(files: list[Path]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((read(p) for p in files), trainer=trainer)
    return tok


def encode(tok: Tokenizer, files: list[Path]) -> torch.Tensor:
    eos = tok.token_to_id("<|eos|>")
    ids: list[int] = []
    for enc in tok.encode_batch([read(p) for p in files]):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.int64)


def llama(shape: dict, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=2048, tie_word_embeddings=True,
                      rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1, pad_token_id=2, **shape)
    return LlamaForCausalLM(cfg)


def windows(stream: torch.Tensor, batch: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, stream.numel() - SEQ - 1, (batch,), generator=gen)
    return torch.stack([stream[s:s + SEQ + 1] for s in starts.tolist()])


def lr_at(step: int, steps: int, peak: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def held_out_loss(model: LlamaForCausalLM, stream: torch.Tensor) -> float:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        batch = windows(stream, 32, gen)
        logits = model(batch[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1)).item()


def train(model: LlamaForCausalLM, stream: torch.Tensor, steps: int, peak_lr: float, batch: int,
          teacher: LlamaForCausalLM | None, label: str) -> None:
    """Next-token cross-entropy, or (with a teacher) KL to the teacher's distribution at every position."""
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(0 if teacher is None else 1)
    model.train()
    start = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak_lr)
        x = windows(stream, batch, gen)
        logits = model(x[:, :-1]).logits
        if teacher is None:
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        else:
            with torch.no_grad():
                target_logp = F.log_softmax(teacher(x[:, :-1]).logits, dim=-1)
            loss = F.kl_div(F.log_softmax(logits, dim=-1), target_logp, log_target=True, reduction="batchmean") / SEQ
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            rate = (step + 1) / (time.time() - start)
            print(f"{label} step {step + 1}/{steps} loss {loss.item():.3f} ({rate:.2f} steps/s)", flush=True)
    model.eval()


def cut_prompts(tok: Tokenizer, files: list[Path], count: int, seed: int) -> list[str]:
    """Prompts of 32-128 tokens from held-out files, each starting at a line that opens a def or
    class, so the completion reads as code."""
    rng = random.Random(seed)
    prompts: list[str] = []
    for path in rng.sample(files, len(files)):
        lines = read(path).splitlines(keepends=True)
        starts = [i for i, line in enumerate(lines) if line.lstrip().startswith(("def ", "class "))]
        if not starts:
            continue
        i = rng.choice(starts)
        text = ""
        for line in lines[i:]:
            if len(tok.encode(text + line).ids) > 128:
                break
            text += line
        if len(tok.encode(text).ids) >= 32:
            prompts.append(text)
        if len(prompts) == count:
            break
    return prompts


def greedy_agreement(target: LlamaForCausalLM, draft: LlamaForCausalLM, tok: Tokenizer, prompts: list[str],
                     new_tokens: int) -> float:
    """Fraction of the target's greedy continuation tokens that the draft's argmax predicts too."""
    agree = total = 0
    with torch.no_grad():
        for text in prompts:
            ids = torch.tensor([tok.encode(text).ids])
            out = target.generate(ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=2)
            prompt_len = ids.shape[1]
            draft_pred = draft(out[:, :-1]).logits.argmax(-1)[0, prompt_len - 1:]
            agree += int((draft_pred == out[0, prompt_len:]).sum())
            total += out.shape[1] - prompt_len
    return agree / total


def save(model: LlamaForCausalLM, tok: Tokenizer, folder: Path) -> None:
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    model.float()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                            pad_token="<|pad|>").save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("saguaro/assets/pystdlib-mini"))
    parser.add_argument("--target-steps", type=int, default=2000)
    parser.add_argument("--draft-steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16, help="windows of 256 tokens per step")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train_files, held_files = stdlib_files()
    print(f"corpus: {len(train_files)} training files, {len(held_files)} held out", flush=True)
    tok = train_tokenizer(train_files)
    train_stream, held_stream = encode(tok, train_files), encode(tok, held_files)
    print(f"tokens: {train_stream.numel()} training, {held_stream.numel()} held out", flush=True)

    target = llama(TARGET_SHAPE, seed=0)
    train(target, train_stream, args.target_steps, 3e-3, args.batch, None, "target")
    draft = llama(DRAFT_SHAPE, seed=1)
    train(draft, train_stream, args.draft_steps, 4e-3, args.batch, target, "draft")

    prompts = cut_prompts(tok, held_files, 32, seed=0)
    agreement = greedy_agreement(target, draft, tok, prompts[:16], 64)
    report = {
        "corpus": f"Python {sys.version_info.major}.{sys.version_info.minor} standard library sources "
                  "(tests excluded), PSF license; 5% of files held out by a hash of their path",
        "tokenizer": f"byte-level BPE, {VOCAB} tokens, {SPECIAL} = 0, 1, 2",
        "target": {**TARGET_SHAPE, "parameters": sum(p.numel() for p in target.parameters()),
                   "steps": args.target_steps, "tokens_per_step": args.batch * SEQ,
                   "held_out_loss": round(held_out_loss(target, held_stream), 4)},
        "draft": {**DRAFT_SHAPE, "parameters": sum(p.numel() for p in draft.parameters()),
                  "steps": args.draft_steps, "distilled_from": "target (KL)",
                  "held_out_loss": round(held_out_loss(draft, held_stream), 4)},
        "greedy_agreement_held_out": round(agreement, 4),
        "agreement_measured_on": "16 held-out prompts x 64 greedy target tokens (transformers, fp32)",
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=1), flush=True)
    save(target, tok, args.out / "target")
    save(draft, tok, args.out / "draft")
    (args.out / "TRAINING.json").write_text(json.dumps(report, indent=1) + "\n")
    with (args.out / "prompts.jsonl").open("w") as fh:
        for text in prompts:
            fh.write(json.dumps({"prompt": text}) + "\n")


if __name__ == "__main__":
    main()
