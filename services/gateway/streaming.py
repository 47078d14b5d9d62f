"""A generation request's answer as server-sent events: every choice's chunks, interleaved as
they arrive (each carries its ``index``), each choice ending with its finish-reason chunk, then
the usage chunk (``stream_options.include_usage``) and ``[DONE]``.

With ``stream_options.continuous_usage_stats`` every chunk carries ``usage`` as well: the
running totals of the whole request (each prompt counted once, the completion tokens of every
choice so far), so they only grow and the last one equals the final usage. vLLM counts one
choice's tokens per chunk instead; for ``n = 1`` and one prompt the two agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from saguaro.services.gateway.choices import Choice, merged
from saguaro.services.gateway.dispatch import Dispatcher
from saguaro.services.gateway.errors import GatewayError
from saguaro.services.gateway.logprobs_json import ChoiceLogprobs
from saguaro.services.gateway.tokenization import GatewayTokenizer
from saguaro.services.gateway.openai_schema import ChunkWriter, OpenAIRequest, prompt_usage, stop_reason, usage_json
from saguaro.services.gateway.responses_schema import ResponsesWriter
from saguaro.v1 import inference_pb2 as pb
from saguaro.wire import PROTO_TO_FINISH, speculation_from_proto

KEEPALIVE = b": keep-alive\n\n"


class RunningUsage:
    """A request's token counts so far: its prompts once each, and every choice's completion
    tokens (a choice's final message sets its count: the target's usage is the authority); the
    cached prompt tokens of the leading choices that have ended."""

    def __init__(self, prompt_tokens: int, leads: list[bool]):
        self.prompt_tokens = prompt_tokens
        self.leads = leads
        self.completion = [0] * len(leads)
        self.finals: dict[int, pb.GenerateFinal] = {}

    def add(self, index: int, message: pb.GenerateResponse) -> None:
        if message.WhichOneof("kind") == "delta":
            self.completion[index] += len(message.delta.token_ids)
        else:
            self.completion[index] = message.final.usage.completion_tokens
            self.finals[index] = message.final

    def json(self) -> dict[str, Any]:
        _, cached = prompt_usage((self.leads[i], final) for i, final in self.finals.items())
        return usage_json(self.prompt_tokens, sum(self.completion), cached)


async def stream_choices(request: web.Request, parsed: OpenAIRequest, dispatcher: Dispatcher, choices: list[Choice],
                         writer: ChunkWriter | ResponsesWriter, keepalive_s: float, finals: list[pb.GenerateFinal],
                         scores: list[ChoiceLogprobs], tokenizer: GatewayTokenizer) -> web.StreamResponse:
    """The SSE response; ``finals`` receives each choice's final message. An error before the
    first message raises (the front answers with its status code); after it, the stream ends
    with an SSE ``error`` event. With ``echo`` a choice's first chunk is its prompt; with log
    probabilities every token chunk carries its tokens' (``scores``, on the tokenizer's thread)."""
    shown = parsed.echo or parsed.logprobs is not None
    messages = merged(dispatcher, choices, parsed.n)
    response: web.StreamResponse | None = None
    keeper: asyncio.Task | None = None
    usage = RunningUsage(sum(len(p) for p in parsed.prompts), [c.leads(parsed.n) for c in choices])
    running: Callable[[], dict[str, Any] | None] = usage.json if parsed.continuous_usage else lambda: None
    try:
        choice, message = await anext(messages)  # errors before the first token still get a status code
        choice.dispatch.span.first_token()
        targets = ",".join(sorted({c.dispatch.target or "" for c in choices if c.dispatch.target}))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "x-saguaro-target": targets})
        await response.prepare(request)
        last_write = [time.monotonic()]
        keeper = asyncio.create_task(_keep_alive(response, keepalive_s, last_write))
        if parsed.kind == "chat":
            for c in choices:
                await response.write(writer.role(c.index, running()))
        while True:
            usage.add(choice.index, message)
            if message.WhichOneof("kind") == "delta":
                echo, echo_scores, delta_scores = (await tokenizer.run(scores[choice.index].delta, message.delta)
                                                   if shown else ("", None, None))
                if echo:
                    await response.write(writer.text(echo, choice.index, running(), echo_scores))
                if message.delta.text or delta_scores is not None or parsed.continuous_usage:
                    await response.write(writer.text(message.delta.text, choice.index, running(), delta_scores))
            else:
                final = message.final
                finals.append(final)
                if final.finish_reason == pb.FINISH_REASON_ERROR:
                    await response.write(writer.error(f"generation failed: {final.error_message}"))
                    break
                await response.write(writer.finish(PROTO_TO_FINISH.get(final.finish_reason, "stop"),
                                                   speculation_from_proto(final.speculation), choice.index, running(),
                                                   stop_reason(final, parsed.sampling.stop_token_ids)))
                if len(finals) == len(choices):
                    if parsed.include_usage:
                        await response.write(writer.usage(usage.json()))
                    break
            try:
                choice, message = await anext(messages)
            except GatewayError as exc:  # a later choice could not start (no target took it)
                await response.write(writer.error(exc.message))
                break
            last_write[0] = time.monotonic()
        if writer.DONE:
            await response.write(writer.DONE)
        return response
    except ConnectionResetError:  # the client went away mid-stream
        return response
    finally:
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await keeper
        await messages.aclose()


async def _keep_alive(response: web.StreamResponse, interval_s: float, last_write: list[float]) -> None:
    """An SSE comment whenever ``interval_s`` passed without a chunk (clients ignore comments;
    proxies see a live connection). Runs beside the stream, so a chunk costs only a clock read."""
    while True:
        await asyncio.sleep(max(0.0, last_write[0] + interval_s - time.monotonic()))
        if time.monotonic() - last_write[0] >= interval_s:
            await response.write(KEEPALIVE)
            last_write[0] = time.monotonic()
