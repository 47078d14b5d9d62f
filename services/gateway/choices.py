"""The choices of one request: ``n`` per prompt, for one prompt or several (the HTTP API), or
``GenerateRequest.n`` of one prompt (the gRPC API).

OpenAI numbers choices prompt-major, as vLLM does: choice ``p * n + j`` is the j-th sample of
prompt p. Each choice is an upstream request of its own, but they are not independent work:

* **The prompt's KV is computed once.** A prompt's first choice starts alone; the others start
  at its first message, pinned to its target (``Dispatch.prefer``). By then the target has
  prefilled the prompt and its full blocks sit in its prefix cache, so the others prefill only
  the last partial block. Started together they would prefill in the same step, each its own
  copy (a block becomes shareable only once computed), and prefix routing, which learns of the
  blocks only from the target's events, could spread them over targets. The price: choices
  after the first see their first token one prefill later.
* **Seeds.** With a request ``seed`` s, choice j of a prompt samples with seed s + j (mod 2^64),
  as vLLM's engine does (``ParentRequest``, V1): a request is reproducible, and its choices
  differ from one another. Without a seed each choice draws its own randomness; at temperature
  0 every choice is the greedy output.
* **Admission.** The front admits all choices at once (``Admission.admit_many``) and counts
  them against the API key's streams, so ``n`` costs what n requests cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from saguaro.services.gateway.dispatch import Dispatch, Dispatcher
from saguaro.services.gateway.errors import invalid
from saguaro.services.gateway.api_models import MAX_N
from saguaro.services.gateway.openai_schema import OpenAIRequest
from saguaro.v1 import inference_pb2 as pb

SEED_SPACE = 2**64  # SamplingParams.seed is a uint64


@dataclass
class Choice:
    index: int  # OpenAI's choice index: prompt * n + j
    prompt: int  # which of the request's prompts
    dispatch: Dispatch

    def leads(self, n: int) -> bool:
        """The prompt's first choice: the one the others wait for (their prompt's KV)."""
        return self.index % n == 0


def choice_seed(seed: int, j: int) -> int:
    """The seed of a prompt's j-th choice (vLLM's: seed + j)."""
    return (seed + j) % SEED_SPACE


def choice_count(request: pb.GenerateRequest) -> int:
    """A gRPC request's ``n`` (0: one), checked: 1 to ``MAX_N``, as the HTTP API's; ``resume``
    continues one stream, so it takes one choice."""
    n = max(request.n, 1)
    if n > MAX_N:
        raise invalid(f"n must be between 1 and {MAX_N} (choices per request), got {n}", "n")
    if n > 1 and request.HasField("resume"):
        raise invalid(f"resume continues one choice's stream: n must be 0 or 1 with it, got {n}", "n")
    return n


def choice_request(request: pb.GenerateRequest, j: int, request_id: str) -> pb.GenerateRequest:
    """The upstream request of a prompt's j-th choice: ``request`` (one completion, ``n`` unset,
    as a target takes it) with the choice's seed and ``request_id``."""
    out = pb.GenerateRequest()
    out.CopyFrom(request)
    out.ClearField("n")
    out.request_id = request_id
    if request.sampling.HasField("seed"):
        out.sampling.seed = choice_seed(request.sampling.seed, j)
    return out


def upstream_requests(parsed: OpenAIRequest, request_id: str) -> list[tuple[int, pb.GenerateRequest]]:
    """``(prompt, upstream request)`` per choice, in choice order; prompts are filled in by
    ``Preparer.dispatch``. One choice keeps the client's request id; several get ``id-index``."""
    many = len(parsed.prompts) * parsed.n > 1
    request = pb.GenerateRequest(sampling=parsed.sampling, decode_mode=parsed.decode_mode,
                                 stream_tokens_individually=parsed.stream and parsed.tokens_individually)
    out = []
    for p in range(len(parsed.prompts)):
        for j in range(parsed.n):
            index = p * parsed.n + j
            out.append((p, choice_request(request, j, f"{request_id}-{index}" if many else request_id)))
    return out


async def merged(dispatcher: Dispatcher, choices: list[Choice],
                 n: int) -> AsyncIterator[tuple[Choice, pb.GenerateResponse]]:
    """Every choice's messages as they arrive, until each has sent its final one. A choice that
    fails (``GatewayError``) raises here; leaving the iteration cancels the choices still running
    (their targets abort them)."""
    results: asyncio.Queue = asyncio.Queue(maxsize=len(choices))  # bounded: a slow client slows the relay
    answered = {c.prompt: asyncio.Event() for c in choices if c.leads(n)}
    leaders = {c.prompt: c for c in choices if c.leads(n)}

    async def relay(choice: Choice) -> None:
        try:
            if not choice.leads(n):
                await answered[choice.prompt].wait()
                choice.dispatch.prefer = leaders[choice.prompt].dispatch.target
            async for message in dispatcher.stream(choice.dispatch):
                if choice.leads(n):
                    answered[choice.prompt].set()
                await results.put((choice, message))
        except Exception as exc:  # noqa: BLE001 -- handed to the consumer, which raises it
            await results.put((choice, exc))

    tasks = [asyncio.ensure_future(relay(c)) for c in choices]
    try:
        running = len(choices)
        while running:
            choice, item = await results.get()
            if isinstance(item, Exception):
                raise item
            if item.HasField("final"):
                running -= 1
            yield choice, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
