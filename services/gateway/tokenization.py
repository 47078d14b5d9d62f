"""The gateway's tokenizer: the targets' own, fetched over ``TargetRouting.GetTokenizer``.

The gateway needs token ids before it routes (prefix-block hashes are computed over them) and
applies chat templates, so it must tokenise exactly like the targets. Fetching the files from
a target, instead of mounting the model, guarantees that and keeps the gateway pod small.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from saguaro.services.gateway.errors import invalid
from saguaro.tokenizer import load_tokenizer
from saguaro.v1 import routing_pb2 as rpb

T = TypeVar("T")


@dataclass(frozen=True)
class ChatOptions:
    """How messages become a prompt: vLLM's request fields of the same names, with its defaults.
    ``add_generation_prompt`` opens the assistant's turn; ``continue_final_message`` leaves the
    last (assistant) message open, to be continued; ``template_kwargs`` reach the template as
    variables; ``add_special_tokens`` adds the tokenizer's (BOS) on top of the template's."""

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    add_special_tokens: bool = False


class GatewayTokenizer:
    def __init__(self, tokenizer, chat_template: str | None = None):
        """``chat_template``: the template of ``--chat-template FILE``, used instead of the tokenizer's."""
        self.tokenizer = tokenizer  # a transformers tokenizer, or None (token-id prompts only)
        self.chat_template = chat_template  # None: the tokenizer's own (which may be several, by name)
        # Tokenizing a long text takes time the event loop cannot give (every live stream would
        # stall), and a fast tokenizer is not safe to share between threads: one thread of its own.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-tokenizer")
        # No token spans more bytes than the longest vocabulary entry (UTF-8 of its string form,
        # which for byte-level and SentencePiece vocabularies over-counts): the basis of the
        # byte limit on text prompts, checked before any tokenizing.
        vocab = tokenizer.get_vocab() if tokenizer is not None else {}
        self.max_token_bytes = max((len(piece.encode("utf-8", "surrogatepass")) for piece in vocab), default=1)

    async def run(self, work: Callable[..., T], *args) -> T:
        """``work(*args)`` on the tokenizer's thread, one at a time, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    @classmethod
    async def fetch(cls, routing_stub, chat_template: str | None = None, timeout: float = 60.0) -> "GatewayTokenizer":
        files = await routing_stub.GetTokenizer(rpb.GetTokenizerRequest(), timeout=timeout)
        if not files.has_tokenizer:
            return cls(None)
        return cls(await asyncio.to_thread(_load, dict(files.files)), chat_template)

    @property
    def available(self) -> bool:
        return self.tokenizer is not None

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None or bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, text: str, param: str = "prompt", add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds what the tokenizer adds by default
        (BOS for Llama 3), as ``/tokenize`` asks for."""
        if self.tokenizer is None:
            raise invalid("the served model has no tokenizer: send token ids instead of text", param)
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: list[int], param: str = "tokens") -> str:
        """The text of ``ids``, special tokens included (``/detokenize``, as vLLM's)."""
        if self.tokenizer is None:
            raise invalid("the served model has no tokenizer, so token ids cannot be turned into text", param)
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def token_strings(self, ids: list[int]) -> list[str]:
        """Each id's vocabulary entry (``/tokenize`` with ``return_token_strs``)."""
        return self.tokenizer.convert_ids_to_tokens(ids)

    def token_texts(self, ids: list[int]) -> list[str]:
        """Each id's own text (its decoding alone, special tokens included): the ``token`` of
        OpenAI's log probabilities, as vLLM's decoded tokens."""
        return [self.tokenizer.decode([i], skip_special_tokens=False) for i in ids]

    def chat_prompt(self, messages: list[dict[str, str]], options: ChatOptions = ChatOptions()) -> list[int]:
        """Token ids of ``messages`` rendered with the chat template (the tokenizer's, or
        ``--chat-template``'s). Without one there is no right way to render them: vLLM refuses,
        and so does the gateway, rather than invent a format the model never saw."""
        if self.tokenizer is None:
            raise invalid("the served model has no tokenizer, so chat messages cannot be rendered", "messages")
        if not self.has_chat_template:
            raise invalid("the served model's tokenizer has no chat template, so chat messages cannot be rendered: "
                          "start the gateway with --chat-template FILE, or use /v1/completions", "messages")
        try:
            text = self.tokenizer.apply_chat_template(
                messages, chat_template=self.chat_template, tokenize=False,
                add_generation_prompt=options.add_generation_prompt,
                continue_final_message=options.continue_final_message, **options.template_kwargs)
        except Exception as exc:  # a template may raise on purpose (e.g. roles must alternate)
            raise invalid(f"the chat template rejected the messages: {exc}", "messages") from None
        return self.tokenizer.encode(text, add_special_tokens=options.add_special_tokens)


def _load(files: dict[str, bytes]):
    with tempfile.TemporaryDirectory(prefix="saguaro-gateway-tokenizer-") as tmp:
        for name, data in files.items():
            if "/" in name or name.startswith("."):
                continue  # only plain file names; never write outside the folder
            (Path(tmp) / name).write_bytes(data)
        return load_tokenizer(tmp)
