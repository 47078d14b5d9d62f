"""lm-evaluation-harness against the gateway, unchanged: its ``local-completions`` model (what
people point at an OpenAI-compatible server) scores a multiple-choice task (loglikelihoods:
``echo`` + ``logprobs`` over token-id prompts) and a ``generate_until`` task (greedy with stop
strings) exactly as transformers does on the same weights, on an SSD target. (lm_eval's own
``hf`` model would be the natural reference, but it needs ``accelerate``, which the environment
lacks; the reference below feeds transformers lm_eval's own tokenization of each request.)

Everything is local: the tasks are YAML files and JSONL datasets written by the test, the
tokenizer is the tiny model's folder, and the hub is off."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests_support import hf_greedy, hf_logits

pytestmark = pytest.mark.slow  # two full lm_eval runs (the hf model's included) over a real stack

TOL = 1e-4
MC = [
    {"question": "The sky is", "choices": [" blue", " green", " made of cheese"], "answer": 0},
    {"question": "Two plus two equals", "choices": [" four", " five"], "answer": 0},
    {"question": "Water is", "choices": [" wet", " dry", " loud", " a prime number"], "answer": 0},
]
GEN = [{"prompt": "Once upon a time", "target": " there"}, {"prompt": "def add(a, b):", "target": "\n"},
       {"prompt": "The capital of France is", "target": " Paris"}]


def write_tasks(root) -> None:
    """A multiple-choice and a generate_until task, each a YAML file over a local JSONL file."""
    for name, rows in (("mc", MC), ("gen", GEN)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = lambda name: f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / name}.jsonl\ntest_split: test\n"  # noqa: E731
    (root / "saguaro_mc.yaml").write_text(
        "task: saguaro_mc\n" + data("mc") + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (root / "saguaro_gen.yaml").write_text(
        "task: saguaro_gen\n" + data("gen") + "output_type: generate_until\ndoc_to_text: '{{prompt}}'\n"
        "doc_to_target: '{{target}}'\ngeneration_kwargs:\n  until: ['\\n\\n', '.']\n  max_gen_toks: 12\n"
        "  do_sample: false\n  temperature: 0\nmetric_list:\n  - metric: exact_match\n")


@pytest.fixture(scope="module")
def gateway(model_dirs, module_targets, module_draft_services, start_module_gateway):
    draft_address = module_draft_services(model_dirs["llama_draft_perturbed"])
    return start_module_gateway([module_targets(model_dirs["llama"], "ssd", draft_address).address])


def evaluate(lm, tasks_dir) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=lm, tasks=["saguaro_mc", "saguaro_gen"],
                                   task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True,
                                   random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)


def samples(result: dict, task: str) -> list[dict]:
    return sorted(result["samples"][task], key=lambda s: s["doc_id"])


def reference_loglikelihood(model_dir: str, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """What lm_eval's hf model computes: the continuation's summed log probability under the
    target, and whether it is the greedy continuation."""
    logprobs = torch.log_softmax(hf_logits(model_dir, context + continuation).double(), dim=-1)
    rows = logprobs[len(context) - 1: len(context) + len(continuation) - 1]
    target = torch.tensor(continuation)
    return rows.gather(-1, target[:, None]).sum().item(), bool((rows.argmax(-1) == target).all())


def test_lm_eval_scores_through_the_gateway_equal_transformers(gateway, model_dirs, tmp_path, monkeypatch):
    """The reference is transformers on the same weights, fed lm_eval's own tokenization of each
    request (``_encode_pair``), as lm_eval's ``hf`` model does it."""
    from lm_eval.api.registry import get_model

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    write_tasks(tmp_path)
    model_dir = model_dirs["llama"]
    lm = get_model("local-completions")(base_url=gateway.http_url + "/v1/completions",
                                        model=os.path.basename(model_dir), tokenizer=model_dir,
                                        tokenizer_backend="huggingface", max_retries=1)
    result = evaluate(lm, tmp_path)
    assert len(samples(result, "saguaro_mc")) == len(MC) and len(samples(result, "saguaro_gen")) == len(GEN)
    correct, correct_norm = [], []
    for sample, doc in zip(samples(result, "saguaro_mc"), MC):
        scored = []
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            ll, greedy = reference_loglikelihood(model_dir, *lm._encode_pair(context, continuation))
            assert abs(float(resp[0][0]) - ll) <= TOL and resp[0][1] == greedy
            scored.append((ll, len(continuation.encode())))
        correct.append(max(range(len(scored)), key=lambda i: scored[i][0]) == doc["answer"])
        correct_norm.append(max(range(len(scored)), key=lambda i: scored[i][0] / scored[i][1]) == doc["answer"])
    mc = result["results"]["saguaro_mc"]
    assert abs(mc["acc,none"] - sum(correct) / len(MC)) <= TOL
    assert abs(mc["acc_norm,none"] - sum(correct_norm) / len(MC)) <= TOL
    matches = []
    for sample, doc in zip(samples(result, "saguaro_gen"), GEN):
        context, options = sample["arguments"][0]
        prompt = lm.tok_encode(context)
        text = lm.tokenizer.decode(hf_greedy(model_dir, prompt, options["max_gen_toks"]))
        for stop in options["until"]:
            text = text.split(stop)[0]
        assert sample["resps"][0][0] == text
        matches.append(text.strip() == doc["target"].strip())
    assert abs(result["results"]["saguaro_gen"]["exact_match,none"] - sum(matches) / len(GEN)) <= TOL
