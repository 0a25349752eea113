"""The OpenAI-compatible HTTP front: FastAPI routes over an `AsyncEngine`.

    /v1/models, /v1/completions, /v1/chat/completions   (bearer API key when one is set)
    /health, /metrics                                    (Prometheus text format)

Streaming answers are server-sent events, one chunk per piece of new text, each choice's
`finish_reason` in exactly one chunk, then `data: [DONE]`; with `stream_options.include_usage`
a last chunk carries the token counts. A client that disconnects, streaming or not, has its
request aborted and its KV-cache blocks freed. Every refusal is a 4xx with an OpenAI-style
error body, so the official clients raise their usual exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenmill.deploy.serve.engine import AsyncEngine, RequestOutput
from tokenmill.deploy.serve.protocol import (
    APIError, ChatCompletionRequest, CompletionRequest, chat_messages, parse,
)
from tokenmill.model.sampling import SamplingParams, TokenLogprob
from tokenmill.errors import TokenmillError


@dataclass
class Limits:
    """What one request may ask for; more is refused with a 4xx."""

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None  # None: the context length less one token to generate
    max_tokens: int | None = None  # None: the context length
    max_n: int = 8


class EventStream(StreamingResponse):
    """Server-sent events whose generator is always closed, so that a request whose client has
    gone away is aborted at once, not when the garbage collector gets to it."""

    def __init__(self, content: AsyncIterator[str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self.body_iterator.aclose()


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


@dataclass
class Choice:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


class Server:
    def __init__(self, engine: AsyncEngine, model_name: str, api_key: str | None, limits: Limits) -> None:
        self.engine, self.model_name, self.api_key, self.limits = engine, model_name, api_key, limits
        self.tokenizer = engine.engine.tokenizer
        self.context_length = engine.engine.context_length
        self.created = int(time.time())

    # -- checks ---------------------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # Constant-time comparison: the time taken says nothing about how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise APIError(401, "invalid API key: send it as 'Authorization: Bearer KEY'", code="invalid_api_key")

    async def read_json(self, request: Request) -> Any:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"the request body is {declared} bytes; the limit is {limit}", code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(413, f"the request body is over the limit of {limit} bytes", code="request_too_large")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{self.model_name}'",
                           param="model", code="model_not_found")

    def check_n(self, n: int) -> None:
        if n > self.limits.max_n:
            raise APIError(400, f"n is {n}; this server allows at most {self.limits.max_n}", param="n")

    def max_tokens(self, requested: int | None, prompt_len: int) -> int:
        limit = self.limits.max_tokens or self.context_length
        if requested is not None and requested > limit:
            raise APIError(400, f"max_tokens is {requested}; this server allows at most {limit}", param="max_tokens")
        return requested if requested is not None else max(1, min(limit, self.context_length - prompt_len))

    def check_prompt(self, ids: list[int], params: SamplingParams, param: str) -> None:
        limit = self.limits.max_prompt_tokens or self.context_length - 1
        if len(ids) > limit:
            raise APIError(400, f"the prompt is {len(ids)} tokens; this server allows at most {limit}",
                           param=param, code="context_length_exceeded")
        try:
            self.engine.engine.check(ids, params)
        except ValueError as e:
            code = "context_length_exceeded" if "context length" in str(e) else None
            raise APIError(400, str(e), param=param, code=code) from None

    def sampling_params(self, body: CompletionRequest | ChatCompletionRequest, max_tokens: int,
                        logprobs: int | None) -> SamplingParams:
        try:
            return body.sampling_params(max_tokens, logprobs)
        except ValueError as e:
            raise APIError(400, str(e)) from None

    # -- generation -----------------------------------------------------------------------------

    async def outputs(self, prompts: list[list[int]], params: SamplingParams
                      ) -> AsyncIterator[tuple[int, RequestOutput]]:
        """The outputs of one engine request per prompt, interleaved as they come, with the prompt's index."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, ids: list[int]) -> None:
            try:
                async with contextlib.aclosing(self.engine.generate(ids, params)) as stream:
                    async for out in stream:
                        queue.put_nowait((i, out))
            except Exception as e:  # noqa: BLE001 - handed to the reader below
                queue.put_nowait((i, e))
            queue.put_nowait((i, None))

        tasks = [asyncio.create_task(pump(i, ids)) for i, ids in enumerate(prompts)]
        try:
            running = len(tasks)
            while running:
                i, item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, Exception):
                    raise APIError(500, str(item), type="server_error")
                else:
                    yield i, item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def collect(self, request: Request, events: AsyncIterator[tuple[int, RequestOutput]], n: int
                      ) -> tuple[dict[int, Choice], dict[str, int]]:
        """Every choice in full, and the usage; aborts the requests if the client disconnects first."""
        choices: dict[int, Choice] = {}
        prompt_tokens: dict[int, int] = {}
        completion_tokens: dict[int, int] = {}

        async def consume() -> None:
            async with contextlib.aclosing(events):
                async for i, out in events:
                    prompt_tokens[i], completion_tokens[i] = out.prompt_tokens, out.completion_tokens
                    for d in out.deltas:
                        c = choices.setdefault(i * n + d.index, Choice())
                        c.text += d.text
                        c.token_ids += d.token_ids
                        c.logprobs += d.logprobs
                        c.finish_reason = d.finish_reason

        work, gone = asyncio.create_task(consume()), asyncio.create_task(disconnected(request))
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            raise ClientGone()
        work.result()
        return dict(sorted(choices.items())), usage(prompt_tokens, completion_tokens)

    # -- logprobs in the two formats of the API -------------------------------------------------

    def completion_logprobs(self, logprobs: list[TokenLogprob], offset: int) -> dict[str, Any]:
        tokens = [self.tokenizer.decode([lp.token_id]) for lp in logprobs]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{self.tokenizer.decode([i]): v for i, v in lp.top} for lp in logprobs],
            "text_offset": offsets,
        }

    def chat_logprobs(self, logprobs: list[TokenLogprob]) -> dict[str, Any]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            return {"token": self.tokenizer.decode([token_id]), "logprob": logprob,
                    "bytes": list(self.tokenizer.token_bytes(token_id))}

        return {"content": [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(i, v) for i, v in lp.top]}
                            for lp in logprobs]}


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read: nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def usage(prompt_tokens: dict[int, int], completion_tokens: dict[int, int]) -> dict[str, int]:
    p, c = sum(prompt_tokens.values()), sum(completion_tokens.values())
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def create_app(engine: AsyncEngine, model_name: str, api_key: str | None = None,
               limits: Limits | None = None) -> FastAPI:
    """The app; it starts the engine thread when the server starts and stops it when the server stops."""
    server = Server(engine, model_name, api_key, limits or Limits())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if not engine.alive:
            engine.start()
        yield
        engine.shutdown()

    app = FastAPI(title="tokenmill", lifespan=lifespan)
    app.state.server = server
    v1 = [Depends(server.authorize)]

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, e: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = engine.alive
        return JSONResponse({"status": "ok" if ok else "engine stopped"}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(engine.engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": server.created, "owned_by": "tokenmill",
                "max_model_len": server.context_length}

    @app.get("/v1/models", dependencies=v1)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", dependencies=v1)
    async def model(name: str) -> dict[str, Any]:
        server.check_model(name)
        return model_card()

    @app.post("/v1/completions", dependencies=v1)
    async def completions(request: Request) -> Response:
        body: CompletionRequest = parse(CompletionRequest, await server.read_json(request))
        server.check_model(body.model)
        server.check_n(body.n)
        prompts = tokenize_prompts(server, body.prompt)
        params = server.sampling_params(body, server.max_tokens(body.max_tokens, max(map(len, prompts))), body.logprobs)
        for i, ids in enumerate(prompts):
            server.check_prompt(ids, params, "prompt" if len(prompts) == 1 else f"prompt.{i}")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name}
        events = server.outputs(prompts, params)
        want_logprobs = body.logprobs is not None

        if body.stream:
            async def stream() -> AsyncIterator[str]:
                offsets: dict[int, int] = {}
                prompt_tokens: dict[int, int] = {}
                completion_tokens: dict[int, int] = {}
                extra = {"usage": None} if body.include_usage else {}
                try:
                    async with contextlib.aclosing(events):
                        async for i, out in events:
                            prompt_tokens[i], completion_tokens[i] = out.prompt_tokens, out.completion_tokens
                            for d in out.deltas:
                                if not d.text and d.finish_reason is None and not d.logprobs:
                                    continue
                                index = i * body.n + d.index
                                logprobs = None
                                if want_logprobs:
                                    logprobs = server.completion_logprobs(d.logprobs, offsets.get(index, 0))
                                offsets[index] = offsets.get(index, 0) + len(d.text)
                                choice = {"index": index, "text": d.text, "logprobs": logprobs,
                                          "finish_reason": d.finish_reason}
                                yield sse({**head, "choices": [choice], **extra})
                except APIError as e:
                    yield sse(e.body())
                if body.include_usage:
                    yield sse({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
                yield sse("[DONE]")

            return EventStream(stream())

        choices, counts = await server.collect(request, events, body.n)
        return JSONResponse({**head, "choices": [
            {"index": index, "text": c.text, "finish_reason": c.finish_reason,
             "logprobs": server.completion_logprobs(c.logprobs, 0) if want_logprobs else None}
            for index, c in choices.items()
        ], "usage": counts})

    @app.post("/v1/chat/completions", dependencies=v1)
    async def chat_completions(request: Request) -> Response:
        body: ChatCompletionRequest = parse(ChatCompletionRequest, await server.read_json(request))
        server.check_model(body.model)
        server.check_n(body.n)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        try:
            ids = server.tokenizer.encode_chat(chat_messages(body), add_generation_prompt=True).ids
        except TokenmillError as e:
            raise APIError(400, str(e), param="messages") from None
        requested = body.max_completion_tokens or body.max_tokens
        params = server.sampling_params(
            body, server.max_tokens(requested, len(ids)), (body.top_logprobs or 0) if body.logprobs else None,
        )
        server.check_prompt(ids, params, "messages")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name}
        events = server.outputs([ids], params)

        if body.stream:
            chunk_head = {**head, "object": "chat.completion.chunk"}
            extra = {"usage": None} if body.include_usage else {}

            def chunk(index: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> str:
                choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
                return sse({**chunk_head, "choices": [choice], **extra})

            async def stream() -> AsyncIterator[str]:
                started: set[int] = set()
                counts = {"prompt_tokens": len(ids), "completion_tokens": 0}
                try:
                    async with contextlib.aclosing(events):
                        async for _, out in events:
                            counts["completion_tokens"] = out.completion_tokens
                            for d in out.deltas:
                                if d.index not in started:
                                    started.add(d.index)
                                    yield chunk(d.index, {"role": "assistant", "content": ""})
                                if not d.text and d.finish_reason is None and not d.logprobs:
                                    continue
                                logprobs = server.chat_logprobs(d.logprobs) if body.logprobs else None
                                delta = {"content": d.text} if d.text or d.logprobs else {}
                                yield chunk(d.index, delta, logprobs, d.finish_reason)
                except APIError as e:
                    yield sse(e.body())
                if body.include_usage:
                    total = counts["prompt_tokens"] + counts["completion_tokens"]
                    yield sse({**chunk_head, "choices": [], "usage": {**counts, "total_tokens": total}})
                yield sse("[DONE]")

            return EventStream(stream())

        choices, counts = await server.collect(request, events, body.n)
        return JSONResponse({**head, "choices": [
            {"index": index, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
             "logprobs": server.chat_logprobs(c.logprobs) if body.logprobs else None}
            for index, c in choices.items()
        ], "usage": counts})

    return app


def tokenize_prompts(server: Server, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    """Token ids of each prompt. Text starts with <|bos|>, as every training document does; ids are taken as given."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "the prompt is empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    tokenizer = server.tokenizer
    return [[tokenizer.bos_id, *tokenizer.encode(p)] if isinstance(p, str) else list(p) for p in prompt]
