"""The official `openai` client against `saguaro up`, in AR, SD and SSD, streamed and not: every
endpoint and request parameter of the OpenAI API a vLLM user sends, with greedy outputs and
log probabilities equal to transformers on the same weights.

Two stacks serve all three modes: `saguaro up --mode ssd` (AR by the per-request ``mode``
extension) and `saguaro up --mode sd`. The model is a copy of the tiny Llama whose tokenizer adds
BOS as Llama 3's does and whose generation_config.json makes requests greedy unless they set a
temperature; `--chat-template` and `--served-model-name` are passed through `saguaro up`.
The processors' reference is transformers' logits with vLLM's arithmetic written out here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import openai
import pytest
import torch

from saguaro.net import free_port
from saguaro.tokenizer import load_tokenizer
from tests_support import bos_pair, hf_greedy, hf_logits

pytestmark = pytest.mark.slow  # two `saguaro up` stacks of child processes

TOL = 1e-4
EOS = 1
GENERATION_CONFIG = {"bos_token_id": 0, "eos_token_id": EOS, "pad_token_id": 2, "temperature": 0.0,
                     "max_new_tokens": 32}
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}{% if shout %}!{% endif %}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")
MESSAGES = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]
PROMPT = "def add(a, b):"
MODES = ["ar", "sd", "ssd"]
STACK_OF = {"ar": "ssd", "sd": "sd", "ssd": "ssd"}  # the stack that serves each mode


@pytest.fixture(scope="module")
def folders(model_dirs, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("up_models")
    folders = bos_pair(model_dirs, root)
    (Path(folders["target"]) / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    (root / "template.jinja").write_text(TEMPLATE)
    return {**folders, "template.jinja": str(root / "template.jinja")}


class UpStack:
    """A `saguaro up` child process with its OpenAI port; ready once ``/health`` answers 200."""

    def __init__(self, folders: dict[str, str], mode: str, log_path):
        self.mode, self.log_path = mode, log_path
        self.http_url = f"http://127.0.0.1:{free_port()}"
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "saguaro.cli", "up", "--target", folders["target"], "--draft", folders["draft"],
             "--mode", mode, "--port", str(free_port()), "--http-port", self.http_url.rsplit(":", 1)[1],
             "--draft-port", str(free_port()), "--metrics-port", "0", "--speculation-policy", "always",
             "--no-draft-soft-deadline",  # every round waits for its proposal: no fallback on a busy machine
             "--served-model-name", "tiny", "tiny-alias", "--chat-template", folders["template.jinja"],
             "--kv-cache-bytes", str(16 << 20), "--max-num-seqs", "8"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, http, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                if http(self.http_url + "/health", timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"saguaro up --mode {self.mode} did not become ready; see {self.log_path}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def stacks(folders, http, tmp_path_factory):
    """Both stacks, started together."""
    logs = tmp_path_factory.mktemp("up_logs")
    started = {mode: UpStack(folders, mode, logs / f"up-{mode}.log") for mode in ("ssd", "sd")}
    try:
        for stack in started.values():
            stack.wait_ready(http)
        yield started
    finally:
        for stack in started.values():
            stack.proc.terminate()  # (both at once: each takes a few seconds to stop its children)
        for stack in started.values():
            stack.stop()


class Api:
    """One mode: its stack's client, and the ``extra_body`` that asks for the mode."""

    def __init__(self, stack: UpStack, mode: str):
        self.mode, self.http_url = mode, stack.http_url
        self.client = openai.OpenAI(base_url=stack.http_url + "/v1", api_key="unused", max_retries=0)

    def extra(self, **fields) -> dict:
        return {"extra_body": {"mode": self.mode, **fields}}


@pytest.fixture(params=MODES)
def api(request, stacks) -> Api:
    return Api(stacks[STACK_OF[request.param]], request.param)


@pytest.fixture(scope="module")
def reference(folders):
    """transformers' view of the target."""

    class Reference:
        folder = folders["target"]
        tokenizer = load_tokenizer(folder)

        def logprobs(self, ids: list[int]) -> torch.Tensor:
            return torch.log_softmax(hf_logits(self.folder, ids).double(), dim=-1)

        def text(self, ids: list[int]) -> str:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

        def token(self, token: int) -> str:
            return self.tokenizer.decode([token], skip_special_tokens=False)

        def top(self, row: torch.Tensor, token: int, k: int) -> dict[str, float]:
            values, ids = row.topk(k)
            alternatives = {self.token(i): v for i, v in zip(ids.tolist(), values.tolist())}
            return {self.token(token): row[token].item(), **alternatives}

    return Reference()


def assert_close(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys() and all(abs(got[k] - expected[k]) <= TOL for k in got), (got, expected)


# -- answers, streamed or not, in one shape ------------------------------------------------
def completion(client: openai.OpenAI, stream: bool, **kwargs) -> tuple[list[dict], dict]:
    """Each choice as ``{text, finish_reason, stop_reason, speculation, logprobs: {tokens,
    token_logprobs, top_logprobs}}`` and the usage; a stream's chunks are joined (its usage is
    the running totals of every chunk, which only grow and end at the final usage)."""
    if not stream:
        answer = client.completions.create(**kwargs)
        return [_completion_choice(c.model_dump()) for c in answer.choices], answer.usage.model_dump()
    choices: dict[int, dict] = {}
    usages = []
    for chunk in client.completions.create(**kwargs, stream=True,
                                           stream_options={"include_usage": True, "continuous_usage_stats": True}):
        usages.append(chunk.usage.model_dump())
        for c in chunk.choices:
            _join(choices.setdefault(c.index, _completion_choice({})), _completion_choice(c.model_dump()))
    return [choices[i] for i in sorted(choices)], _final_usage(usages)


def _completion_choice(c: dict) -> dict:
    lp = c.get("logprobs") or {}
    return {"text": c.get("text") or "", "finish_reason": c.get("finish_reason"), "stop_reason": c.get("stop_reason"),
            "speculation": c.get("speculation"),
            "logprobs": {k: list(lp.get(k) or []) for k in ("tokens", "token_logprobs", "top_logprobs")}}


def chat(client: openai.OpenAI, stream: bool, **kwargs) -> tuple[list[dict], dict]:
    """Each choice as ``{text, finish_reason, stop_reason, speculation, logprobs: [content
    entries]}`` and the usage, joined from a stream as ``completion`` does."""
    if not stream:
        answer = client.chat.completions.create(**kwargs)
        return [_chat_choice(c.model_dump(), c.message.content) for c in answer.choices], answer.usage.model_dump()
    choices: dict[int, dict] = {}
    usages = []
    for chunk in client.chat.completions.create(**kwargs, stream=True,
                                                stream_options={"include_usage": True, "continuous_usage_stats": True}):
        usages.append(chunk.usage.model_dump())
        for c in chunk.choices:
            _join(choices.setdefault(c.index, _chat_choice({}, "")), _chat_choice(c.model_dump(), c.delta.content))
    return [choices[i] for i in sorted(choices)], _final_usage(usages)


def _chat_choice(c: dict, text: str | None) -> dict:
    return {"text": text or "", "finish_reason": c.get("finish_reason"), "stop_reason": c.get("stop_reason"),
            "speculation": c.get("speculation"), "logprobs": list((c.get("logprobs") or {}).get("content") or [])}


def _join(into: dict, part: dict) -> None:
    into["text"] += part["text"]
    if isinstance(into["logprobs"], dict):
        for key, values in part["logprobs"].items():
            into["logprobs"][key] += values
    else:
        into["logprobs"] += part["logprobs"]
    for key in ("finish_reason", "stop_reason", "speculation"):
        into[key] = part[key] if part[key] is not None else into[key]


def _final_usage(usages: list[dict]) -> dict:
    totals = [(u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) for u in usages]
    assert all(a <= b for x, y in zip(totals, totals[1:]) for a, b in zip(x, y)), totals
    assert usages[-1]["total_tokens"] == usages[-1]["prompt_tokens"] + usages[-1]["completion_tokens"]
    return usages[-1]


def assert_mode(choices: list[dict], mode: str) -> None:
    """Decoded in ``mode``, and never by plain decoding after a draft failure (exact too, so
    only the statistics would show it)."""
    assert all(c["speculation"]["mode"] == mode and c["speculation"].get("fallback_rounds", 0) == 0 for c in choices)


# -- generation -----------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_completions_greedy_logprobs_echo_and_n(api, reference, stream):
    """Unset temperature: generation_config.json's 0. The prompt gets BOS; echo repeats it as sent
    with its tokens' log probabilities (the BOS unscored), then the output's; both choices are the greedy one."""
    ids = reference.tokenizer(PROMPT)["input_ids"]
    assert ids[0] == 0
    tokens = hf_greedy(reference.folder, ids, 8)
    rows = reference.logprobs(ids + tokens)
    choices, usage = completion(api.client, stream, model="tiny-alias", prompt=PROMPT, max_tokens=8, logprobs=2,
                                echo=True, n=2, **api.extra())
    assert usage["prompt_tokens"] == len(ids) and usage["completion_tokens"] == 2 * len(tokens)
    assert_mode(choices, api.mode)
    full = ids + tokens
    for choice in choices:
        lp = choice["logprobs"]
        assert choice["text"] == PROMPT + reference.text(tokens)
        assert lp["tokens"] == [reference.token(t) for t in full]
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        for p in range(1, len(full)):
            assert abs(lp["token_logprobs"][p] - rows[p - 1][full[p]].item()) <= TOL
            assert_close(lp["top_logprobs"][p], reference.top(rows[p - 1], full[p], 2))


@pytest.mark.parametrize("stream", [False, True])
def test_chat_greedy_logprobs_and_template_options(api, reference, stream):
    """--chat-template's file, its own variable (chat_template_kwargs), max_completion_tokens,
    logprobs / top_logprobs; then continue_final_message with add_generation_prompt false."""
    rendered = "[system!] You write Python.\n[user!] def add(a, b):\n[assistant] "
    ids = reference.tokenizer.encode(rendered, add_special_tokens=False)
    tokens = hf_greedy(reference.folder, ids, 6)
    rows = reference.logprobs(ids + tokens)
    choices, usage = chat(api.client, stream, model="tiny", messages=MESSAGES, max_completion_tokens=6,
                          logprobs=True, top_logprobs=2, **api.extra(chat_template_kwargs={"shout": True}))
    assert usage["prompt_tokens"] == len(ids) and choices[0]["text"] == reference.text(tokens)
    assert_mode(choices, api.mode)
    content = choices[0]["logprobs"]
    assert [e["token"] for e in content] == [reference.token(t) for t in tokens]
    for i, (entry, token) in enumerate(zip(content, tokens)):
        row = rows[len(ids) - 1 + i]
        assert abs(entry["logprob"] - row[token].item()) <= TOL
        values, top = row.topk(2)
        assert [t["token"] for t in entry["top_logprobs"]] == [reference.token(j) for j in top.tolist()]
        assert all(abs(t["logprob"] - v) <= TOL for t, v in zip(entry["top_logprobs"], values.tolist()))
    started = [*MESSAGES, {"role": "assistant", "content": "    return"}]
    prefix = reference.tokenizer.encode("[system] You write Python.\n[user] def add(a, b):\n[assistant]     return",
                                        add_special_tokens=False)
    continued, usage = chat(api.client, stream, model="tiny", messages=started, max_tokens=6,
                            **api.extra(continue_final_message=True, add_generation_prompt=False))
    assert usage["prompt_tokens"] == len(prefix)
    assert continued[0]["text"] == reference.text(hf_greedy(reference.folder, prefix, 6))


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_with_and_without_the_stop_in_the_output_and_stop_token_ids(api, reference, stream):
    """A stop token ends the output after it, and shows in its text (it is no special token), as vLLM."""
    ids = reference.tokenizer(PROMPT)["input_ids"]
    tokens = hf_greedy(reference.folder, ids, 16)
    text = reference.text(tokens)
    end = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])
    choices, usage = completion(api.client, stream, model="tiny", prompt=PROMPT, max_tokens=16,
                                **api.extra(stop_token_ids=[tokens[end]]))
    assert choices[0]["text"] == reference.text(tokens[:end + 1]) and usage["completion_tokens"] == end + 1
    assert choices[0]["finish_reason"] == "stop" and choices[0]["stop_reason"] == tokens[end]
    stop = next(text[i:i + 2] for i in range(3, len(text) - 2)
                if text[i:i + 2].isascii() and text[i:i + 2].isprintable() and text.find(text[i:i + 2]) == i)
    for include in (False, True):
        choices, _ = completion(api.client, stream, model="tiny", prompt=PROMPT, max_tokens=16,
                                stop=["never there", stop], **api.extra(include_stop_str_in_output=include))
        cut = text[:text.find(stop)] + (stop if include else "")
        assert choices[0]["text"] == cut
        assert choices[0]["finish_reason"] == "stop" and choices[0]["stop_reason"] == stop


def processed_greedy(reference, prompt: list[int], max_tokens: int, *, presence: float, frequency: float,
                     repetition: float, bias: dict[int, float], min_tokens: int) -> list[int]:
    """Greedy decoding over transformers' logits with vLLM's processors, in vLLM's order:
    logit_bias added, EOS held back below min_tokens, then the repetition penalty (prompt and
    output tokens: positive logits divided, negative multiplied), then the frequency and presence
    penalties (output tokens). EOS is ignored (``ignore_eos``)."""
    out: list[int] = []
    while len(out) < max_tokens:
        row = hf_logits(reference.folder, prompt + out)[-1].double()
        for token, value in bias.items():
            row[token] += value
        if len(out) < min_tokens:
            row[EOS] = float("-inf")
        for token in set(prompt + out):
            row[token] = row[token] / repetition if row[token] > 0 else row[token] * repetition
        for token in set(out):
            row[token] -= frequency * out.count(token) + presence
        out.append(int(row.argmax()))
    return out


@pytest.mark.parametrize("stream", [False, True])
def test_processors_penalties_bias_min_tokens_min_p_and_ignore_eos(api, reference, stream):
    ids = reference.tokenizer(PROMPT)["input_ids"]
    plain = hf_greedy(reference.folder, ids, 12)
    bias = {plain[2]: -100.0, plain[0]: 2.0}  # the third greedy token banned
    penalties = dict(presence=1.2, frequency=0.5, repetition=1.3)
    expected = processed_greedy(reference, ids, 12, **penalties, bias=bias, min_tokens=6)
    unpenalised = processed_greedy(reference, ids, 12, presence=0, frequency=0, repetition=1, bias=bias, min_tokens=6)
    assert expected != plain[:12] and expected != unpenalised, "the processors must change the output"
    choices, usage = completion(api.client, stream, model="tiny", prompt=PROMPT, max_tokens=12, temperature=0,
                                presence_penalty=1.2, frequency_penalty=0.5, seed=4,
                                logit_bias={str(t): b for t, b in bias.items()},
                                **api.extra(repetition_penalty=1.3, min_tokens=6, min_p=0.05, ignore_eos=True))
    assert usage["completion_tokens"] == 12 and choices[0]["text"] == reference.text(expected)
    assert_mode(choices, api.mode)


def test_seeded_sampling_repeats_and_a_repeated_prompt_is_cached(api, reference):
    """(Seeded sampling repeats in AR and SD; in SSD which round a cached speculation serves can
    change the random stream, so SSD is left out of that check.)"""
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=11, **api.extra(ignore_eos=True))
    first = api.client.completions.create(**kwargs)
    if api.mode != "ssd":
        assert api.client.completions.create(**kwargs).choices[0].text == first.choices[0].text
    long_prompt = "The quick brown fox jumps over the lazy dog. Speculative decoding drafts tokens. " * 3
    full_blocks = (len(reference.tokenizer(long_prompt)["input_ids"]) - 1) // 16 * 16  # the last token is computed
    api.client.completions.create(model="tiny", prompt=long_prompt, max_tokens=2, **api.extra())
    again = api.client.completions.create(model="tiny", prompt=long_prompt, max_tokens=2, **api.extra())
    assert again.usage.prompt_tokens_details.cached_tokens == full_blocks > 0


THING = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"const": 3}},
         "required": ["color", "size"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_structured_output_follows_the_schema_as_ar_does(api, stacks, stream):
    """response_format json_schema on chat and structured_outputs regex on completions: the output
    is whole ("stop"), follows the grammar, and is AR's (docs/speculation.md "Structured output")."""
    ar = Api(stacks["ssd"], "ar")
    response_format = {"type": "json_schema", "json_schema": {"name": "thing", "schema": THING}}
    answers = [chat(a.client, stream, model="tiny", messages=MESSAGES, max_tokens=40, response_format=response_format,
                    **a.extra())[0][0] for a in (api, ar)]
    assert answers[0]["text"] == answers[1]["text"] and answers[0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(answers[0]["text"]), THING)
    regex = {"structured_outputs": {"regex": r"(def|class) [a-z]{1,6}\(\):"}}
    texts = [completion(a.client, stream, model="tiny", prompt=PROMPT, max_tokens=20, **a.extra(**regex))[0][0]
             for a in (api, ar)]
    assert texts[0]["text"] == texts[1]["text"] and texts[0]["finish_reason"] == "stop"
    assert re.fullmatch(r"(def|class) [a-z]{1,6}\(\):", texts[0]["text"])


def test_responses_text_format_is_chats_response_format(api):
    """Responses' structured output (``text.format``) is chat's ``response_format``: the same
    output in every mode, echoed in the response; an invalid schema is a 400 naming it."""
    schema = {"name": "thing", "schema": THING, "strict": True}
    chat_answer = api.client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=40, response_format={"type": "json_schema", "json_schema": schema},
        **api.extra())
    response = api.client.responses.create(model="tiny", instructions="You write Python.", input="def add(a, b):",
                                           max_output_tokens=40, text={"format": {"type": "json_schema", **schema}},
                                           **api.extra())
    assert response.output_text == chat_answer.choices[0].message.content and response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), THING)
    assert response.text.format.type == "json_schema" and response.text.format.name == "thing"
    with pytest.raises(openai.BadRequestError) as refused:
        api.client.responses.create(model="tiny", input="x", text={"format": {
            "type": "json_schema", "name": "bad", "schema": {"type": "no-such-type"}}}, **api.extra())
    assert refused.value.body["param"] == "text.format"


def test_responses_plain_and_streamed_equal_the_chat_completion(api):
    client = api.client
    chat_answer = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, **api.extra())
    response = client.responses.create(model="tiny-alias", instructions="You write Python.", input="def add(a, b):",
                                       max_output_tokens=6, **api.extra())
    assert response.output_text == chat_answer.choices[0].message.content and response.model == "tiny"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (chat_answer.usage.prompt_tokens,
                                                                          chat_answer.usage.completion_tokens)
    events = list(client.responses.create(model="tiny", instructions="You write Python.", input="def add(a, b):",
                                          max_output_tokens=6, stream=True, **api.extra()))
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == response.output_text
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert events[-1].response.output_text == response.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))


# -- the other endpoints --------------------------------------------------------------------
def test_models_tokenize_detokenize_health_version_and_json_errors(stacks, reference, http):
    url = stacks["ssd"].http_url
    client = Api(stacks["ssd"], "ssd").client
    cards = client.models.list().data
    assert [m.id for m in cards] == ["tiny", "tiny-alias"]
    assert cards[0].sampling_defaults == {"temperature": 0.0, "max_tokens": 32}
    assert client.models.retrieve("tiny-alias").id == "tiny-alias"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.models.retrieve("llama")
    assert unknown.value.body["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="llama", prompt=PROMPT, max_tokens=1)
    assert unknown.value.body["param"] == "model"
    health = http(url + "/health")
    assert health.status == 200 and health.body == b""
    assert http(url + "/version").json()["version"]
    ids = reference.tokenizer(PROMPT)["input_ids"]
    tokenized = http(url + "/tokenize", {"model": "tiny-alias", "prompt": PROMPT}).json()
    assert tokenized["tokens"] == ids and tokenized["count"] == len(ids)
    assert http(url + "/tokenize", {"prompt": PROMPT, "add_special_tokens": False}).json()["tokens"] == ids[1:]
    chat_ids = http(url + "/tokenize", {"messages": MESSAGES}).json()["tokens"]
    assert chat_ids == reference.tokenizer.encode("[system] You write Python.\n[user] def add(a, b):\n[assistant] ",
                                                  add_special_tokens=False)
    assert http(url + "/detokenize", {"tokens": ids}).json()["prompt"] == reference.tokenizer.decode(ids)
    missing = http(url + "/v1/nothing-here", {"x": 1})
    assert missing.status == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = http(url + "/v1/chat/completions", method="GET")
    assert wrong.status == 405 and wrong.json()["error"]["type"] == "invalid_request_error"


def test_a_mode_the_stack_does_not_run_is_a_400_naming_mode(stacks):
    for stack, other in (("ssd", "sd"), ("sd", "ssd")):
        api = Api(stacks[stack], other)
        with pytest.raises(openai.BadRequestError) as refused:
            api.client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2, **api.extra())
        assert refused.value.body["param"] == "mode" and repr(stack) in refused.value.body["message"]
