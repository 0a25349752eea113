"""The OpenAI API's request bodies: read strictly, checked, and turned into sampling parameters.

Everything a request may ask for is bounded here, before the engine sees it: the body is
strict JSON (no NaN or Infinity, which Python's json would accept, at most `MAX_JSON_DEPTH`
levels deep), every number is in range (a seed fits an int64, a float is finite), every list
has a length limit (`stop` at most 4 strings, as OpenAI documents), and the bounds are in the
models, so the OpenAPI schema says them too. A request is refused with an `APIError`, answered
as OpenAI answers: {"error": {"message", "type", "param", "code"}}.

Fields the OpenAI API defines but this server does not implement (suffix, best_of,
tools, ...) are refused by name rather than silently ignored. `top_k`,
`repetition_penalty`, `stop_token_ids` and `ignore_eos` are extensions, as in vLLM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokenmill.deploy.serve.api_error import APIError
from tokenmill.model.sampling import SamplingParams

INT64 = {"ge": -(2**63), "le": 2**63 - 1}
INT32 = {"ge": 0, "le": 2**31 - 1}
MAX_JSON_DEPTH = 32  # a chat body is 5 levels deep; 100,000 would exhaust the parser's stack
MAX_N = 128  # the most any --max-n may allow: n sequences of one request share a batch
MAX_STOP = 4  # as the OpenAI API documents
MAX_STOP_CHARS = 256  # each is looked for in the text's tail after every token
MAX_STOP_TOKEN_IDS = 256
MAX_LOGIT_BIAS = 300  # OpenAI's limit on the tokens one request may bias
# Below this a temperature divides logits into infinities; vLLM samples greedily there too.
GREEDY_BELOW = 1e-5


@dataclass
class Limits:
    """What one request, and all of them together, may ask for; more is refused with a 4xx."""

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None  # None: the context length less one token to generate
    max_tokens: int | None = None  # None: the context length
    max_n: int = 8
    max_seqs_per_request: int = 64  # prompts × n of one request
    # Generation requests accepted and not finished (running or waiting), and the tokens they
    # may hold in the KV cache (prompt + max_tokens, per choice); beyond either: 429.
    max_queued_requests: int = 256
    max_queued_tokens: int | None = None  # None: four times the KV cache's capacity
    request_timeout: float | None = 600.0  # seconds from arrival to the last token; None: no limit

    def __post_init__(self) -> None:
        if not 1 <= self.max_n <= MAX_N:
            raise ValueError(f"max_n must be in 1..{MAX_N}, got {self.max_n}")
        for name in ("max_body_bytes", "max_seqs_per_request", "max_queued_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


# -- the body as JSON ---------------------------------------------------------------------------

def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large for a float")
    return value


def loads(body: bytes) -> Any:
    """The body as JSON, strictly: NaN, Infinity, numbers that overflow a float, integers of more
    digits than Python converts, and nesting deeper than MAX_JSON_DEPTH are a 400."""
    try:
        data = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:  # deeper than the parser's stack, so deeper than MAX_JSON_DEPTH too
        raise APIError(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if depth(data) > MAX_JSON_DEPTH:
        raise APIError(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
    return data


def depth(data: Any) -> int:
    """How deeply lists and objects nest in `data` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack += [(child, level + 1) for child in (node.values() if isinstance(node, dict) else node)
                      if isinstance(child, dict | list)]
    return deepest


# -- the request bodies -------------------------------------------------------------------------

StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
TOKEN_ID = "token id"
TokenId = Annotated[int, Field(title=TOKEN_ID, **INT32)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, **INT32)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    # Bounded both ways: a penalty of 1e-300 or 1e300 turns finite logits into infinities.
    repetition_penalty: float = Field(1.0, ge=0.01, le=100)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    stop_token_ids: list[TokenId] = Field([], max_length=MAX_STOP_TOKEN_IDS)
    # Token id (a JSON object's keys are strings) -> a bias added to its logit, -100 bans it.
    logit_bias: dict[TokenId, Annotated[float, Field(ge=-100, le=100)]] = Field({}, max_length=MAX_LOGIT_BIAS)
    ignore_eos: bool = False
    seed: int | None = Field(None, **INT64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and unused, as the API allows

    def sampling_params(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            n=self.n, max_tokens=max_tokens, temperature=0.0 if self.temperature < GREEDY_BELOW else self.temperature,
            # The sampler compares top_p in float32, where below ~1e-45 it is 0 and would cut every token;
            # from 1e-5 down only the most likely token is kept anyway (its probability is at least 1/vocab).
            top_k=self.top_k, top_p=max(self.top_p, GREEDY_BELOW),
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, stop=stop, stop_token_ids=list(self.stop_token_ids),
            ignore_eos=self.ignore_eos, seed=self.seed, logprobs=logprobs, logit_bias=dict(self.logit_bias),
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Common):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    # None: the API's default for completions, 16 (or less, when the server's limit is less);
    # 0: nothing generated, which with `echo` scores the prompt alone (how lm-eval asks for log-likelihoods)
    max_tokens: int | None = Field(None, ge=0, le=2**31 - 1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False  # the prompt before the completion, with its tokens' logprobs when logprobs is set


class TextPart(BaseModel):
    """A part of a message's content; text is the only kind this server reads."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]  # developer: the API's newer name for system
    content: str | list[TextPart]
    name: str | None = None  # accepted and unused


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


def parse(model: type[BaseModel], data: Any) -> Any:
    """`data` as `model`, or a 400 naming the first field that is wrong."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        error = e.errors()[0]
        where = ".".join(str(part) for part in error["loc"] if not _union_branch(part))
        if error["type"] == "extra_forbidden":
            raise APIError(400, f"{where} is not supported by this server", param=where) from None
        raise APIError(400, f"{where}: {error['msg']}", param=where or None) from None


def _union_branch(part: str | int) -> bool:
    """Whether a part of an error's location names which type of a union was tried ('str',
    'list[constrained-str]'), not a field."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "dict", "list", "none"}
                                      or "[" in part or "-" in part)


def chat_messages(request: ChatCompletionRequest) -> list[dict[str, str]]:
    """The messages as the chat template takes them: text content, roles system/user/assistant."""
    return [{"role": "system" if m.role == "developer" else m.role,
             "content": m.content if isinstance(m.content, str) else "".join(part.text for part in m.content)}
            for m in request.messages]


def request_body_schema(model: type[BaseModel], served: str, limits: Limits, max_tokens: int, vocab_size: int
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenAPI requestBody of a route that reads `model` from its raw body itself (strictly,
    see `loads`), and the component schemas it refers to; with this server's own bounds, so that
    the schema says what it accepts: its model's name, n, max_tokens, token ids in its vocabulary."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    fields = schema["properties"]
    fields["model"]["enum"] = [served]
    fields["n"]["maximum"] = limits.max_n
    for branch in fields.get("prompt", {}).get("anyOf", []):
        if branch.get("type") == "array" and branch["items"].get("type") in ("string", "array"):
            branch["maxItems"] = limits.max_seqs_per_request  # prompts, each one sequence at least
    for name in ("max_tokens", "max_completion_tokens"):
        for branch in fields.get(name, {}).get("anyOf", []):
            if branch.get("type") == "integer":
                branch["maximum"] = max_tokens

    def token_ids(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("title") == TOKEN_ID:
                node["maximum"] = vocab_size - 1
            for child in node.values():
                token_ids(child)
        elif isinstance(node, list):
            for child in node:
                token_ids(child)

    token_ids(schema)
    return {"required": True, "content": {"application/json": {"schema": schema}}}, defs
