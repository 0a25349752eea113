"""The OpenAI-compatible HTTP front: FastAPI routes over an `AsyncEngine`.

    /v1/models, /v1/completions, /v1/chat/completions
    /health                                             (open even with an API key: for probes)
    /metrics                                            (Prometheus text format)
    /docs, /openapi.json                                (the schema, with every bound a field has)

Before any route, `Guard` checks the Host header, the API key and the Content-Type (guard.py);
before the engine, protocol.py reads the body strictly and bounds every field, and `Admission`
bounds the work in progress (429 with Retry-After beyond it). Every refusal and failure is
answered with an OpenAI-style error body that says what was wrong with the request and never
what failed inside (that goes to the log), so the official clients raise their usual exceptions.

Streaming answers are server-sent events, one chunk per piece of new text, each choice's
`finish_reason` in exactly one chunk, then `data: [DONE]`; with `stream_options.include_usage`
a last chunk carries the token counts. An error once the stream has started is sent as an
event with the error body, before `[DONE]`. A client that disconnects, streaming or not, has
its request aborted and its KV-cache blocks freed.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenmill.deploy.serve.api_error import APIError, ErrorBody
from tokenmill.deploy.serve.engine import AsyncEngine
from tokenmill.deploy.serve.generation import (
    Admission,
    Choice,
    ClientGone,
    EventStream,
    Generation,
    api_error,
    collect,
    sse,
    usage,
)
from tokenmill.deploy.serve.guard import Guard
from tokenmill.deploy.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    Limits,
    chat_messages,
    loads,
    parse,
    request_body_schema,
)
from tokenmill.errors import TokenmillError
from tokenmill.model.sampling import SamplingParams, TokenLogprob

logger = logging.getLogger(__name__)

COMPLETION_MAX_TOKENS = 16  # the OpenAI API's default max_tokens for completions

__all__ = ["Limits", "Server", "create_app"]

# Every answer a route may give besides its 200, for the OpenAPI schema.
ERRORS = {status: {"model": ErrorBody, "description": why} for status, why in {
    400: "a malformed body or a field out of range", 401: "no or a wrong API key", 404: "another model's name",
    408: "the request ran past --request-timeout", 413: "the body is over --max-body-bytes",
    415: "the body is not sent as application/json", 421: "a Host header not in the allow-list",
    429: "the server's queue bounds are reached (see Retry-After)", 500: "the request failed inside the engine",
    503: "the engine is not running",
}.items()}


class Server:
    def __init__(self, engine: AsyncEngine, model_name: str, api_key: str | None, limits: Limits) -> None:
        self.engine, self.model_name, self.api_key, self.limits = engine, model_name, api_key, limits
        self.tokenizer = engine.engine.tokenizer
        self.context_length = engine.engine.context_length
        self.created = int(time.time())
        self.admission = Admission(limits.max_queued_requests,
                                   limits.max_queued_tokens or 4 * engine.engine.capacity_tokens)

    # -- checks ---------------------------------------------------------------------------------

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
        return loads(bytes(body))

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{self.model_name}'",
                           param="model", code="model_not_found")

    def check_n(self, n: int, prompts: int = 1) -> None:
        if n > self.limits.max_n:
            raise APIError(400, f"n is {n}; this server allows at most {self.limits.max_n}", param="n")
        if prompts * n > self.limits.max_seqs_per_request:
            raise APIError(400, f"{prompts} prompts × n = {n} is {prompts * n} sequences; this server allows at "
                                f"most {self.limits.max_seqs_per_request} in one request", param="prompt")

    def max_tokens(self, requested: int | None, prompt_len: int, default: int | None = None) -> int:
        """`requested`, within the limit; if None, `default` or the rest of the context, within the limit."""
        limit = self.limits.max_tokens or self.context_length
        if requested is not None and requested > limit:
            raise APIError(400, f"max_tokens is {requested}; this server allows at most {limit}", param="max_tokens")
        if requested is not None:
            return requested
        return max(1, min(limit, self.context_length - prompt_len, default or self.context_length))

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

    def generation(self, prompts: list[list[int]], params: SamplingParams) -> Generation:
        """The engine requests of one API request, admitted now (or refused with 429 or 503)."""
        return Generation(self.engine, self.admission, prompts, params, self.limits.request_timeout)

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

    async def echo(self, text: str, ids: list[int], top: int | None) -> tuple[str, dict[str, Any] | None]:
        """The prompt as a completion's `echo` gives it: its text, and with `top` its tokens'
        logprobs (the first token's None: nothing comes before it)."""
        if top is None:
            return text, None
        try:
            scores = await self.engine.score(ids, max(top, 1))
        except Exception as e:  # noqa: BLE001 - told to the client as any engine failure is
            raise api_error(e) from None
        logprobs = [TokenLogprob(ids[0], 0.0, [])] + [
            TokenLogprob(t, lp, top_ids[: max(top, 1)]) for t, lp, top_ids in zip(ids[1:], scores.logprobs, scores.top)]
        out = self.completion_logprobs(logprobs, 0)
        out["token_logprobs"][0] = out["top_logprobs"][0] = None
        if top == 0:  # the API's logprobs 0: the chosen tokens' logprobs, no alternatives
            out["top_logprobs"][1:] = [{} for _ in ids[1:]]
        return text, out

    def chat_logprobs(self, logprobs: list[TokenLogprob]) -> dict[str, Any]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            return {"token": self.tokenizer.decode([token_id]), "logprob": logprob,
                    "bytes": list(self.tokenizer.token_bytes(token_id))}

        return {"content": [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(i, v) for i, v in lp.top]}
                            for lp in logprobs]}


def create_app(engine: AsyncEngine, model_name: str, api_key: str | None = None, limits: Limits | None = None,
               allowed_hosts: Iterable[str] = ()) -> FastAPI:
    """The app; it starts the engine thread when the server starts and stops it when the server stops.
    It answers to loopback names and `allowed_hosts` in the Host header; with `api_key`, every
    route but /health needs it."""
    server = Server(engine, model_name, api_key, limits or Limits())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if not engine.alive:
            engine.start()
        yield
        engine.shutdown()

    app = FastAPI(title="tokenmill", lifespan=lifespan)
    app.state.server = server
    app.state.guard = {"allowed_hosts": tuple(allowed_hosts), "api_key": api_key}  # for apps mounted on this one
    app.add_middleware(Guard, **app.state.guard)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, e: RequestValidationError) -> JSONResponse:
        where = ".".join(str(part) for part in e.errors()[0]["loc"])
        return JSONResponse(APIError(400, f"{where}: {e.errors()[0]['msg']}", param=where).body(), status_code=400)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, e: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return JSONResponse(APIError(500, "the server failed on this request", type="server_error",
                                     code="internal_error").body(), status_code=500)

    @app.get("/health", responses={503: ERRORS[503]})
    async def health() -> JSONResponse:
        ok = engine.alive
        return JSONResponse({"status": "ok" if ok else "engine stopped"}, status_code=200 if ok else 503)

    @app.get("/metrics", responses={s: ERRORS[s] for s in (401, 421)},
             response_class=Response)  # Prometheus text, not JSON
    async def metrics() -> Response:
        return Response(generate_latest(engine.engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": server.created, "owned_by": "tokenmill",
                "max_model_len": server.context_length}

    @app.get("/v1/models", responses={s: ERRORS[s] for s in (401, 421)})
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", responses={s: ERRORS[s] for s in (400, 401, 404, 421)})
    async def model(name: str) -> dict[str, Any]:
        server.check_model(name)
        return model_card()

    bounds = (model_name, server.limits, server.limits.max_tokens or server.context_length,
              engine.engine.model.config.vocab_size)
    completion_body, completion_defs = request_body_schema(CompletionRequest, *bounds)
    generate_answers = {200: {"content": {"application/json": {}, "text/event-stream": {}}},
                        **{s: e for s, e in ERRORS.items()}}

    @app.post("/v1/completions", openapi_extra={"requestBody": completion_body}, responses=generate_answers)
    async def completions(request: Request) -> Response:
        body: CompletionRequest = parse(CompletionRequest, await server.read_json(request))
        server.check_model(body.model)
        server.check_n(body.n, prompt_count(body.prompt))
        prompts = tokenize_prompts(server, body.prompt)
        max_tokens = server.max_tokens(body.max_tokens, max(map(len, prompts)), COMPLETION_MAX_TOKENS)
        if body.stream and (body.echo or max_tokens == 0):
            raise APIError(400, "echo and max_tokens 0 are answered whole, not streamed", param="stream")
        # With max_tokens 0 nothing is generated; the parameters of one token still check the request.
        params = server.sampling_params(body, max(max_tokens, 1), body.logprobs)
        for i, ids in enumerate(prompts):
            server.check_prompt(ids, params, "prompt" if len(prompts) == 1 else f"prompt.{i}")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name}
        want_logprobs = body.logprobs is not None
        # Scored before the generation is admitted, so that a failed scoring holds nothing.
        echoes = [await server.echo(p, ids, body.logprobs) for p, ids in zip(text_prompts(server, body.prompt, prompts), prompts)
                  ] if body.echo else None
        if max_tokens == 0:
            choices = {i * body.n + j: Choice(finish_reason="length") for i in range(len(prompts)) for j in range(body.n)}
            counts = usage(dict(enumerate(map(len, prompts))), {})
            return JSONResponse({**head, "choices": completion_choices(server, choices, body.n, echoes, want_logprobs),
                                 "usage": counts})
        generation = server.generation(prompts, params)

        if body.stream:
            async def stream() -> AsyncIterator[str]:
                offsets: dict[int, int] = {}
                prompt_tokens: dict[int, int] = {}
                completion_tokens: dict[int, int] = {}
                extra = {"usage": None} if body.include_usage else {}
                try:
                    async with contextlib.aclosing(generation.events()) as events:
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

            return EventStream(stream(), generation.aclose)

        choices, counts = await collect(request, generation, body.n)
        return JSONResponse({**head, "choices": completion_choices(server, choices, body.n, echoes, want_logprobs),
                             "usage": counts})

    chat_body, chat_defs = request_body_schema(ChatCompletionRequest, *bounds)

    @app.post("/v1/chat/completions", openapi_extra={"requestBody": chat_body}, responses=generate_answers)
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
        generation = server.generation([ids], params)

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
                    async with contextlib.aclosing(generation.events()) as events:
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

            return EventStream(stream(), generation.aclose)

        choices, counts = await collect(request, generation, body.n)
        return JSONResponse({**head, "choices": [
            {"index": index, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
             "logprobs": server.chat_logprobs(c.logprobs) if body.logprobs else None}
            for index, c in choices.items()
        ], "usage": counts})

    openapi = app.openapi

    def openapi_with_bodies() -> dict[str, Any]:
        """The schema, with the component schemas the request bodies refer to."""
        schema = openapi()
        schema.setdefault("components", {}).setdefault("schemas", {}).update({**completion_defs, **chat_defs})
        return schema

    app.openapi = openapi_with_bodies
    return app


def text_prompts(server: Server, prompt: str | list, prompts: list[list[int]]) -> list[str]:
    """Each prompt's text as `echo` repeats it: as sent, or decoded where it was sent as token ids."""
    if isinstance(prompt, str):
        return [prompt]
    texts = [p for p in prompt if isinstance(p, str)] if prompt and isinstance(prompt[0], str) else []
    return texts or [server.tokenizer.decode(ids) for ids in prompts]


def completion_choices(server: Server, choices: dict[int, Choice], n: int,
                       echoes: list[tuple[str, dict[str, Any] | None]] | None, want_logprobs: bool
                       ) -> list[dict[str, Any]]:
    """The choices of a whole completion answer, each after its prompt's echo when asked for."""
    out = []
    for index, c in choices.items():
        text, logprobs = c.text, server.completion_logprobs(c.logprobs, 0) if want_logprobs else None
        if echoes is not None:
            echo_text, echo_logprobs = echoes[index // n]
            text = echo_text + text
            if logprobs is not None and echo_logprobs is not None:
                logprobs = {"tokens": echo_logprobs["tokens"] + logprobs["tokens"],
                            "token_logprobs": echo_logprobs["token_logprobs"] + logprobs["token_logprobs"],
                            "top_logprobs": echo_logprobs["top_logprobs"] + logprobs["top_logprobs"],
                            "text_offset": echo_logprobs["text_offset"]
                            + [len(echo_text) + o for o in logprobs["text_offset"]]}
        out.append({"index": index, "text": text, "finish_reason": c.finish_reason, "logprobs": logprobs})
    return out


def prompt_count(prompt: str | list) -> int:
    """How many prompts `prompt` holds (a list of token ids is one), before any is tokenized."""
    return len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1


def tokenize_prompts(server: Server, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    """Token ids of each prompt: text as the model reads a document (its tokenizer's BOS, where it has
    one, then the text); ids are taken as given."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "the prompt is empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    tokenizer = server.tokenizer
    return [tokenizer.prompt_ids(p) if isinstance(p, str) else list(p) for p in prompt]
