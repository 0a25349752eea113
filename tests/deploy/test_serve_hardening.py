"""The server against what a hostile or unlucky client sends, as `tokenmill serve` runs it (no API key):
every answer a 2xx or a 4xx with an OpenAI error body, the engine's blocks all free afterwards."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from serve_helpers import NAME, LiveServer

from tokenmill.deploy.serve.engine import (
    AsyncEngine,
    Engine,
    EngineConfig,
    RequestFailed,
)
from tokenmill.deploy.serve.server import Limits
from tokenmill.model.sampling import SamplingParams

CONFIG = EngineConfig(num_blocks=60, block_size=16, max_num_seqs=16, max_num_batched_tokens=256)
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def live(model_dir):
    server = LiveServer(model_dir, CONFIG, Limits(max_n=4, max_tokens=100, max_seqs_per_request=16))
    yield server
    server.stop()


def post(live: LiveServer, body: dict | bytes | str, path: str = "/v1/completions", **kwargs) -> httpx.Response:
    """A POST of `body` as it is: JSON for a dict, else the raw bytes or text, with a JSON Content-Type."""
    content = json.dumps(body) if isinstance(body, dict) else body
    headers = {**JSON, **kwargs.pop("headers", {})}
    return httpx.post(f"{live.url}{path}", content=content, headers=headers, **{"timeout": 30, **kwargs})


def refused(r: httpx.Response, status: int, param: str | None = None) -> dict:
    """The OpenAI error of a refusal: its status, its body's four fields, no internal text."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"] and "Error(" not in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def completion(**fields) -> dict:
    return {"model": NAME, "prompt": "Compound statements", "max_tokens": 4, **fields}


def test_a_seed_is_an_int64(live):
    refused(post(live, completion(seed=2**64)), 400, "seed")
    refused(post(live, completion(seed=2**64 - 1, n=2)), 400, "seed")
    refused(post(live, completion(seed=-(2**63) - 1)), 400, "seed")
    # The largest int64, with n choices seeded seed + i, still draws.
    r = post(live, completion(seed=2**63 - 1, n=2, temperature=0.9))
    assert r.status_code == 200 and len(r.json()["choices"]) == 2
    again = post(live, completion(seed=2**63 - 1, n=2, temperature=0.9))
    assert again.json()["choices"] == r.json()["choices"]


def test_a_temperature_below_1e_5_is_greedy(live):
    greedy = post(live, completion(temperature=0, max_tokens=12)).json()["choices"][0]["text"]
    for t in (1e-45, 5e-324, 9e-6):
        r = post(live, completion(temperature=t, max_tokens=12))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == greedy
    # A top_p too small for float32 keeps the most likely token rather than none.
    r = post(live, completion(temperature=1.0, top_p=5e-324, max_tokens=12))
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == greedy


@pytest.mark.parametrize("raw", [
    '"repetition_penalty": Infinity', '"repetition_penalty": -Infinity', '"temperature": NaN',
    '"top_p": 1e400', '"seed": 1' + "0" * 5000,
])
def test_nan_infinity_and_overflowing_numbers_are_not_json(live, raw):
    body = f'{{"model": "{NAME}", "prompt": "x", {raw}}}'
    error = refused(post(live, body), 400)
    assert "not valid JSON" in error["message"]


def test_a_body_nested_100_000_deep_is_refused_as_json(live):
    for body in ("[" * 100_000 + "]" * 100_000, '{"model": "x", "prompt": ' + "[" * 40 + "1" + "]" * 40 + "}"):
        assert "nested more than" in refused(post(live, body), 400)["message"]


def test_20_000_prompts_are_refused_at_once(live):
    start = time.perf_counter()
    error = refused(post(live, completion(prompt=["x"] * 20_000)), 400, "prompt")
    assert time.perf_counter() - start < 2 and "at most 16" in error["message"]
    refused(post(live, completion(prompt=["x"] * 5, n=4)), 400, "prompt")  # 20 sequences
    assert post(live, completion(prompt=["x"] * 4, n=4)).status_code == 200
    assert live.wait_idle()["tokenmill_requests_waiting"] == 0


def test_stop_strings_and_stop_token_ids_are_bounded(live):
    refused(post(live, completion(stop=[f"s{i}" for i in range(10_000)])), 400, "stop")
    refused(post(live, completion(stop=["a", "b", "c", "d", "e"])), 400, "stop")
    refused(post(live, completion(stop="x" * 257)), 400, "stop")
    refused(post(live, completion(stop=[""])), 400)
    refused(post(live, completion(stop_token_ids=list(range(257)))), 400, "stop_token_ids")
    assert post(live, completion(stop=["a", "b", "c", "x" * 256])).status_code == 200
    refused(post(live, completion(logit_bias={"1": 5})), 400, "logit_bias")  # not implemented: refused by name


def test_a_post_must_be_json(live):
    body = json.dumps(completion())
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": content_type} if content_type else {}
        r = httpx.post(f"{live.url}/v1/completions", content=body, headers=headers)
        assert refused(r, 415)["code"] == "unsupported_media_type"
    r = httpx.post(f"{live.url}/v1/completions", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200


def test_the_host_header_must_be_in_the_allow_list(live, model_dir):
    for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", "[::2]", ""):
        r = httpx.get(f"{live.url}/v1/models", headers={"Host": host})
        assert refused(r, 421)["code"] == "invalid_host", host
        assert refused(post(live, completion(), headers={"Host": host}), 421)
    for host in ("localhost", "LOCALHOST:8000", "127.0.0.1", f"127.0.0.1:{live.port}", "[::1]", "[::1]:80", "localhost."):
        assert httpx.get(f"{live.url}/v1/models", headers={"Host": host}).status_code == 200, host
    other = LiveServer(model_dir, CONFIG, Limits(), allowed_hosts=["serve.example", "10.0.0.5"])
    try:
        for host in ("serve.example:8000", "10.0.0.5", "localhost"):
            assert httpx.get(f"{other.url}/v1/models", headers={"Host": host}).status_code == 200, host
        assert httpx.get(f"{other.url}/v1/models", headers={"Host": "attacker.example"}).status_code == 421
    finally:
        other.stop()


def test_errors_never_carry_internal_text(live):
    for r, status in [
        (post(live, b"\xff\xfe"), 400), (post(live, "[1, 2]"), 400), (post(live, completion(n="many")), 400),
        (post(live, completion(prompt=[[10**30]])), 400), (httpx.get(f"{live.url}/nowhere"), 404),
        (httpx.delete(f"{live.url}/v1/models"), 405), (post(live, {"model": NAME, "messages": [
            {"role": "tool", "content": "x"}]}, "/v1/chat/completions"), 400),
    ]:
        refused(r, status)


def test_a_client_that_disconnects_without_streaming_frees_its_blocks(live):
    before = live.metrics().get('tokenmill_requests_finished_total{finish_reason="abort"}', 0.0)
    with pytest.raises(httpx.ReadTimeout):
        post(live, completion(max_tokens=100, ignore_eos=True, n=4), timeout=0.05)
    m = live.wait_idle()
    assert m['tokenmill_requests_finished_total{finish_reason="abort"}'] == before + 1
    assert live.all_blocks_free()


def test_overload_is_answered_429_with_retry_after(model_dir):
    async def burst(url: str, body: dict, count: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(count)))

    body = completion(max_tokens=100, ignore_eos=True)  # 3 prompt tokens + 100: 103 tokens queued each
    for limits, busy in [(Limits(max_queued_requests=2), "requests are in progress"),
                         (Limits(max_queued_tokens=300), "tokens this server queues")]:
        live = LiveServer(model_dir, CONFIG, limits)
        try:
            answers = asyncio.run(burst(live.url, body, 12))
            statuses = sorted(r.status_code for r in answers)
            assert set(statuses) == {200, 429} and statuses.count(200) >= 2, statuses
            for r in answers:
                if r.status_code == 429:
                    assert busy in refused(r, 429)["message"] and r.headers["Retry-After"] == "1"
            live.wait_idle()
            assert live.all_blocks_free()
        finally:
            live.stop()
    # One request asking for more than the whole queue may hold could never run: 400, not 429.
    live = LiveServer(model_dir, CONFIG, Limits(max_queued_tokens=300))
    try:
        assert "queues at most 300" in refused(post(live, completion(max_tokens=100, n=4)), 400)["message"]
    finally:
        live.stop()


def test_a_request_past_its_timeout_is_aborted(model_dir):
    live = LiveServer(model_dir, CONFIG, Limits(request_timeout=0.05))
    try:
        body = completion(max_tokens=150, ignore_eos=True, n=4)
        assert refused(post(live, body), 408)["code"] == "timeout"
        with httpx.stream("POST", f"{live.url}/v1/completions", json={**body, "stream": True}) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "timeout"
        live.wait_idle()
        assert live.all_blocks_free()
    finally:
        live.stop()


def test_a_failing_sequence_fails_its_own_request_only(model, tokenizer):
    """A temperature that the protocol would have made greedy, given to the engine itself: the sampler
    divides by it into infinities and fails on that row; the batch goes on without it."""
    prompt = [tokenizer.bos_id, *tokenizer.encode("Compound statements contain")]
    good = {"greedy": SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
            "seeded": SamplingParams(temperature=0.8, seed=3, n=2, max_tokens=20, ignore_eos=True)}

    def run(requests: dict[str, SamplingParams]) -> tuple[dict[str, list[list[int]]], dict[str, str], Engine]:
        engine = Engine(model, tokenizer, CONFIG)
        for rid, params in requests.items():
            engine.add_request(rid, prompt, params)
        tokens: dict[str, list[list[int]]] = {rid: [[], []] for rid in requests}
        errors: dict[str, str] = {}
        while engine.has_unfinished():
            for out in engine.step():
                if out.error:
                    errors[out.request_id] = out.error
                for d in out.deltas:
                    tokens[out.request_id][d.index] += d.token_ids
        return tokens, errors, engine

    alone, errors, _ = run(good)
    assert not errors
    bad = SamplingParams(temperature=1e-45, max_tokens=20, ignore_eos=True)
    batched, errors, engine = run({"bad": bad, **good, "bad too": bad})
    assert set(errors) == {"bad", "bad too"}
    assert {rid: batched[rid] for rid in good} == alone  # the same tokens, seeded ones too
    assert engine.blocks.num_free_blocks == engine.blocks.num_usable_blocks and not engine.requests

    async def through_the_async_engine() -> None:
        async_engine = AsyncEngine(Engine(model, tokenizer, CONFIG)).start()
        try:
            async def collect(params: SamplingParams) -> list[int]:
                return [t for out in [o async for o in async_engine.generate(prompt, params)]
                        for d in out.deltas for t in d.token_ids]

            results = await asyncio.gather(collect(bad), collect(good["greedy"]), return_exceptions=True)
            assert isinstance(results[0], RequestFailed) and results[1] == alone["greedy"][0]
            assert async_engine.alive and async_engine.failures == 0
        finally:
            async_engine.shutdown()

    asyncio.run(through_the_async_engine())


def test_when_the_engine_stops_requests_fail_fast_and_health_says_so(model_dir):
    live = LiveServer(model_dir, CONFIG, Limits())
    try:
        assert httpx.get(f"{live.url}/health").json() == {"status": "ok"}
        body = completion(max_tokens=150, ignore_eos=True, stream=True)
        with httpx.stream("POST", f"{live.url}/v1/completions", json=body, timeout=10) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            threading.Thread(target=live.engine.shutdown).start()  # the engine thread ends mid-stream
            events = [line[6:] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "engine_unavailable"
        health = httpx.get(f"{live.url}/health")
        assert health.status_code == 503 and health.json() == {"status": "engine stopped"}
        start = time.perf_counter()
        for stream in (False, True):
            r = post(live, completion(stream=stream), timeout=5)
            assert refused(r, 503)["code"] == "engine_unavailable"
        assert time.perf_counter() - start < 2
    finally:
        live.stop()


def test_with_an_api_key_every_route_but_health_needs_it(model_dir):
    key = "hardening-key-0123"
    live = LiveServer(model_dir, CONFIG, Limits(), api_key=key)
    try:
        for path in ("/metrics", "/docs", "/openapi.json", "/v1/models", f"/v1/models/{NAME}", "/redoc"):
            assert refused(httpx.get(f"{live.url}{path}"), 401)["code"] == "invalid_api_key", path
            assert httpx.get(f"{live.url}{path}", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        refused(post(live, completion(), headers={"Authorization": "Bearer wrong"}), 401)
        assert httpx.get(f"{live.url}/health").status_code == 200
        # A browser opens /docs?key=KEY once: redirected to /docs, with a cookie that /openapi.json then carries.
        with httpx.Client(base_url=live.url) as browser:
            refused(browser.get("/docs", params={"key": "wrong"}), 401)
            login = browser.get("/docs", params={"key": key})
            assert login.status_code == 303 and login.headers["location"] == "/docs"
            assert "httponly" in login.headers["set-cookie"].lower() and key not in login.headers["set-cookie"]
            assert "samesite=strict" in login.headers["set-cookie"].lower()
            assert browser.get("/openapi.json").status_code == 200
    finally:
        live.stop()
