"""The server fuzzed from its own OpenAPI schema (schemathesis), in process: whatever the schema allows,
and what it does not, is answered without a 5xx and as the schema says."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serve_helpers import NAME

from tokenmill.deploy.serve.engine import AsyncEngine, Engine, EngineConfig
from tokenmill.deploy.serve.server import Limits, create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    engine = AsyncEngine(Engine(model, tokenizer, EngineConfig(num_blocks=40, max_num_seqs=8))).start()
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def api(engine):
    # Small limits, so that what the fuzzer draws is cheap to generate; "testserver" is the in-process client's Host.
    app = create_app(engine, NAME, limits=Limits(max_tokens=6, max_n=2, max_seqs_per_request=4),
                     allowed_hosts=["testserver"])

    async def one_engine(scope, receive, send) -> None:
        """The app, its lifespan answered without stopping the engine: the in-process client starts and
        stops the app around every call, the engine lives as long as the module."""
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    return schemathesis.openapi.from_asgi("/openapi.json", one_engine)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_schema_holds_and_nothing_is_a_server_error(api, engine, mode):
    generated = engine.engine.metrics.generation_tokens._value.get()
    for operation in (result.ok() for result in api.get_all_operations()):
        if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # nothing in a GET of these routes can be malformed
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def fuzz(case) -> None:
            case.call_and_validate(checks=CHECKS)

        fuzz()
    assert engine.alive
    if mode is GenerationMode.POSITIVE:  # valid requests reached the engine, and left it empty
        assert engine.engine.metrics.generation_tokens._value.get() > generated
    blocks = engine.engine.blocks
    assert blocks.num_free_blocks == blocks.num_usable_blocks and not engine.engine.requests


def test_the_schema_states_the_bounds(api):
    raw = api.raw_schema
    body = raw["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    fields = body["properties"]
    # The server's own limits (Limits above, the model's vocabulary of 400 tokens) and the protocol's.
    assert fields["model"]["enum"] == [NAME] and fields["n"]["maximum"] == 2
    assert next(s for s in fields["max_tokens"]["anyOf"] if s.get("type") == "integer")["maximum"] == 6
    assert fields["stop_token_ids"]["items"]["maximum"] == 399 and fields["temperature"]["maximum"] == 2
    seed = next(s for s in fields["seed"]["anyOf"] if s.get("type") == "integer")
    assert (seed["minimum"], seed["maximum"]) == pytest.approx((-(2**63), 2**63 - 1))  # int64
    stop = next(s for s in fields["stop"]["anyOf"] if s.get("type") == "array")
    assert stop["maxItems"] == 4 and stop["items"]["maxLength"] == 256
    assert fields["stop_token_ids"]["maxItems"] == 256 and body["additionalProperties"] is False
    assert "429" in raw["paths"]["/v1/chat/completions"]["post"]["responses"]
