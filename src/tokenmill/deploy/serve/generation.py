"""One API request's way through the engine: admitted or refused (429), its engine requests'
outputs interleaved, given up at its deadline, and let go of however it ends.

An API request with several prompts is one engine request per prompt. Whatever ends it (its
last token, an error, the deadline, the client going away), `Generation.aclose` cancels what
still runs, which aborts those engine requests and frees their KV-cache blocks, and gives its
share of the queue bounds back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from tokenmill.deploy.serve.api_error import APIError
from tokenmill.deploy.serve.engine import (
    AsyncEngine,
    EngineStopped,
    RequestFailed,
    RequestOutput,
)
from tokenmill.model.sampling import SamplingParams, TokenLogprob

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1  # what a 429 suggests: a step takes milliseconds, a request rarely more than seconds


class Admission:
    """Bounds on the work accepted and not finished: how many requests, and how many tokens they
    may hold in the KV cache (each prompt once, plus max_tokens per choice). Counted on the event
    loop, so taking and giving back need no lock."""

    def __init__(self, max_requests: int, max_tokens: int) -> None:
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.requests = self.tokens = 0

    def take(self, tokens: int) -> None:
        if tokens > self.max_tokens:
            raise APIError(400, f"this request may hold {tokens:,} tokens in the KV cache (prompts + n × max_tokens); "
                                f"this server queues at most {self.max_tokens:,}: ask for fewer", param="max_tokens")
        busy = None
        if self.requests >= self.max_requests:
            busy = f"{self.requests} requests are in progress, the most this server queues"
        elif self.tokens + tokens > self.max_tokens:
            busy = f"the requests in progress hold {self.tokens:,} of the {self.max_tokens:,} tokens this server queues"
        if busy:
            raise APIError(429, f"the server is busy ({busy}); retry in a moment", type="server_busy",
                           code="server_busy", headers={"Retry-After": str(RETRY_AFTER_S)})
        self.requests += 1
        self.tokens += tokens

    def give_back(self, tokens: int) -> None:
        self.requests -= 1
        self.tokens -= tokens


class Generation:
    def __init__(self, engine: AsyncEngine, admission: Admission, prompts: list[list[int]],
                 params: SamplingParams, timeout: float | None) -> None:
        if not engine.alive:
            raise engine_stopped()
        self.tokens = sum(len(p) + params.n * params.max_tokens for p in prompts)
        admission.take(self.tokens)
        self.engine, self.admission, self.prompts, self.params, self.timeout = engine, admission, prompts, params, timeout
        self.deadline = asyncio.get_running_loop().time() + timeout if timeout is not None else None
        self.tasks: list[asyncio.Task] = []
        self.closed = False

    async def events(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """The outputs of every prompt's engine request as they come, with the prompt's index."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, ids: list[int]) -> None:
            try:
                async with contextlib.aclosing(self.engine.generate(ids, self.params)) as stream:
                    async for out in stream:
                        queue.put_nowait((i, out))
            except Exception as e:  # noqa: BLE001 - handed to the reader below
                queue.put_nowait((i, e))
            queue.put_nowait((i, None))

        self.tasks = [asyncio.create_task(pump(i, ids)) for i, ids in enumerate(self.prompts)]
        try:
            running = len(self.tasks)
            while running:
                try:
                    async with asyncio.timeout_at(self.deadline):
                        i, item = await queue.get()
                except TimeoutError:
                    raise APIError(408, f"the request took longer than the server's limit of {self.timeout:g} s "
                                        "(--request-timeout)", code="timeout") from None
                if item is None:
                    running -= 1
                elif isinstance(item, Exception):
                    raise api_error(item)
                else:
                    yield i, item
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop every engine request still running (their blocks are freed) and give back the
        admission; safe to call more than once, and before `events` ever ran."""
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self.closed:
            self.closed = True
            self.admission.give_back(self.tokens)


def engine_stopped() -> APIError:
    return APIError(503, "the engine is not running (see /health); no request can be served", type="server_error",
                    code="engine_unavailable")


def api_error(e: Exception) -> APIError:
    """What the client is told of an engine request that failed: why, when it is the request's
    fault; otherwise only that it failed (the details are in the server's log)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, EngineStopped):
        return engine_stopped()
    if isinstance(e, ValueError):  # the engine refused the request: its message says why
        return APIError(400, str(e))
    if not isinstance(e, RequestFailed):  # RequestFailed is logged where it happened
        logger.error("a request failed", exc_info=e)
    return APIError(500, "the server failed while generating this request", type="server_error",
                    code="internal_error")


@dataclass
class Choice:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read: nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def usage(prompt_tokens: dict[int, int], completion_tokens: dict[int, int]) -> dict[str, int]:
    p, c = sum(prompt_tokens.values()), sum(completion_tokens.values())
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def collect(request: Request, generation: Generation, n: int) -> tuple[dict[int, Choice], dict[str, int]]:
    """Every choice in full, and the usage; if the client disconnects first, ClientGone (and the
    engine requests are aborted)."""
    choices: dict[int, Choice] = {}
    prompt_tokens: dict[int, int] = {}
    completion_tokens: dict[int, int] = {}

    async def consume() -> None:
        async with contextlib.aclosing(generation.events()) as events:
            async for i, out in events:
                prompt_tokens[i], completion_tokens[i] = out.prompt_tokens, out.completion_tokens
                for d in out.deltas:
                    c = choices.setdefault(i * n + d.index, Choice())
                    c.text += d.text
                    c.token_ids += d.token_ids
                    c.logprobs += d.logprobs
                    c.finish_reason = d.finish_reason

    work, gone = asyncio.create_task(consume()), asyncio.create_task(disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        await generation.aclose()
    if not work.done() or work.cancelled():
        raise ClientGone()
    work.result()
    return dict(sorted(choices.items())), usage(prompt_tokens, completion_tokens)


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class EventStream(StreamingResponse):
    """Server-sent events whose generator, and `on_close`, always run their cleanup however the
    response ends (finished, failed, or the client gone before the first byte), so that an
    abandoned request is aborted at once, not when the garbage collector gets to it."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                await self.on_close()
