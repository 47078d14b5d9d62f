"""lm-evaluation-harness against the gateway, unchanged: its ``local-completions`` model (what
people point at an OpenAI-compatible server) scores a multiple-choice task (loglikelihoods:
``echo`` + ``logprobs`` over token-id prompts) and a ``generate_until`` task (greedy with stop
strings) on an SSD target exactly as lm_eval's own ``hf`` model (``HFLM``: transformers, fp32,
CPU) scores them on the same weights: every metric, and every sample's answer, within 1e-4.

The model is a copy of the tiny Llama whose tokenizer adds BOS, as Llama 3's does. The ``hf``
model tokenizes with the tokenizer's defaults, so its requests start with BOS; the
local-completions model sends token ids, which the gateway passes on as given (as vLLM does), so
it is told to add the BOS itself (``add_bos_token``, lm_eval's switch for such models) and the
two see the same tokens. Everything is local: the tasks are YAML files and JSONL datasets
written by the test, and the hub is off."""

from __future__ import annotations

import json

import pytest

from saguaro.tokenizer import load_tokenizer
from tests_support import bos_pair

pytestmark = pytest.mark.slow  # two full lm_eval runs (one through a real SSD stack)

TOL = 1e-4
TASKS = ["saguaro_mc", "saguaro_gen"]
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
def folders(model_dirs, tmp_path_factory) -> dict[str, str]:
    """The target and its draft, their tokenizer adding BOS (a draft must share the target's)."""
    return bos_pair(model_dirs, tmp_path_factory.mktemp("bos"))


@pytest.fixture(scope="module")
def gateway(folders, module_targets, module_draft_services, start_module_gateway):
    draft_address = module_draft_services(folders["draft"])
    return start_module_gateway([module_targets(folders["target"], "ssd", draft_address).address])


def evaluate(model, tasks_dir, **model_kwargs) -> dict:
    """One lm_eval run over both tasks, seeded, keeping every sample."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, tasks=TASKS, task_manager=TaskManager(include_path=str(tasks_dir)),
                                   log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                   fewshot_random_seed=0, **model_kwargs)


def samples(result: dict, task: str) -> list[dict]:
    return sorted(result["samples"][task], key=lambda s: s["doc_id"])


def assert_same_answers(ours: dict, reference: dict) -> None:
    """Every request of every document got the same answer: loglikelihoods within TOL and the
    same is-greedy flag; generated text identical."""
    for task in TASKS:
        pairs = list(zip(samples(ours, task), samples(reference, task), strict=True))
        assert len(pairs) == (len(MC) if task == "saguaro_mc" else len(GEN))
        for got, want in pairs:
            assert got["arguments"] == want["arguments"]
            for got_resp, want_resp in zip(got["resps"], want["resps"], strict=True):
                if task == "saguaro_mc":
                    (got_ll, got_greedy), (want_ll, want_greedy) = got_resp[0], want_resp[0]
                    assert abs(float(got_ll) - float(want_ll)) <= TOL and bool(got_greedy) == bool(want_greedy)
                else:
                    assert got_resp == want_resp


def test_lm_eval_scores_through_the_gateway_equal_lm_evals_hf_model(gateway, folders, tmp_path, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    write_tasks(tmp_path)
    model_dir = folders["target"]
    assert load_tokenizer(model_dir)("The sky is")["input_ids"][0] == 0  # (BOS: what the hf model sends)
    ours = evaluate("local-completions", tmp_path, model_args=dict(
        base_url=gateway.http_url + "/v1/completions", model="llama", tokenizer=model_dir,
        tokenizer_backend="huggingface", add_bos_token=True, max_retries=1))
    reference = evaluate("hf", tmp_path, model_args=f"pretrained={model_dir},dtype=float32,device=cpu", batch_size=1)
    assert_same_answers(ours, reference)
    for task in TASKS:
        metrics = {k: v for k, v in reference["results"][task].items() if k != "alias"}
        assert metrics and set(ours["results"][task]) - {"alias"} == set(metrics)
        for key, value in metrics.items():
            got = ours["results"][task][key]
            assert (got == value) if isinstance(value, str) else abs(got - value) <= TOL, (task, key, got, value)
