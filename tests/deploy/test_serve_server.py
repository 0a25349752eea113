"""The server through the official `openai` client and raw HTTP, on a real uvicorn server on loopback."""

from __future__ import annotations

import argparse
import asyncio
import json
import random

import httpx
import openai
import pytest
from serve_helpers import EXTRA, NAME, LiveServer, reference_greedy

from tokenmill.deploy.serve import cli
from tokenmill.deploy.serve.engine import EngineConfig
from tokenmill.deploy.serve.server import Limits
from tokenmill.errors import TokenmillError

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def live(model_dir):
    # 59 blocks of 16 tokens: 32 streams of up to ~60 tokens do not all fit, so the load test preempts.
    config = EngineConfig(num_blocks=60, block_size=16, max_num_seqs=32, max_num_batched_tokens=256)
    server = LiveServer(model_dir, config, Limits(max_body_bytes=20_000, max_n=4, max_tokens=100), api_key=KEY)
    yield server
    server.stop()
    assert not server.engine.alive  # the engine thread stops with the server


def expected(live: LiveServer, prompt: list[int], max_tokens: int) -> tuple[list[int], str, str]:
    """Tokens, text and finish reason of the plain greedy loop, stopping where the server stops."""
    tok = live.tokenizer
    tokens = reference_greedy(live.model, prompt, max_tokens, {tok.eos_id, tok.end_id})
    if tokens[-1] in (tok.eos_id, tok.end_id):
        return tokens, tok.decode(tokens[:-1]), "stop"
    return tokens, tok.decode(tokens), "length"


def test_models_and_health(live):
    models = live.client().models.list()
    assert [m.id for m in models.data] == [NAME]
    assert live.client().models.retrieve(NAME).id == NAME
    assert httpx.get(f"{live.url}/health").json() == {"status": "ok"}


def test_completion_is_the_greedy_continuation_and_usage_counts_tokens(live):
    prompt = "Compound statements contain groups of other statements"
    r = live.client().completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0)
    ids = [live.tokenizer.bos_id, *live.tokenizer.encode(prompt)]
    tokens, text, finish = expected(live, ids, 24)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (text, finish)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(tokens))
    assert r.usage.total_tokens == len(ids) + len(tokens)


def test_chat_uses_the_chat_template(live):
    messages = [{"role": "system", "content": EXTRA[0]}, {"role": "user", "content": "What is a lambda?"}]
    r = live.client().chat.completions.create(model=NAME, messages=messages, max_tokens=20, temperature=0)
    ids = live.tokenizer.encode_chat(messages, add_generation_prompt=True).ids
    tokens, text, finish = expected(live, ids, 20)
    assert r.choices[0].message.role == "assistant"
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (text, finish)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(tokens))


@pytest.mark.parametrize("kind", ["completions", "chat"])
def test_a_stream_puts_together_the_same_text_with_one_finish_reason_per_choice(live, kind):
    client = live.client()
    common = dict(model=NAME, max_tokens=30, temperature=0.9, seed=11, n=2)
    if kind == "completions":
        create, args = client.completions.create, dict(prompt="Straße, café and 人人生而自由", **common)
    else:
        messages = [{"role": "user", "content": "Größe 👍🏽"}]
        create, args = client.chat.completions.create, dict(messages=messages, **common)
    whole = create(**args)
    pieces, finishes, usage = {0: "", 1: ""}, {0: [], 1: []}, None
    for chunk in create(**args, stream=True, stream_options={"include_usage": True}):
        if not chunk.choices:
            usage = chunk.usage
            continue
        choice = chunk.choices[0]
        pieces[choice.index] += (choice.text if kind == "completions" else choice.delta.content) or ""
        if choice.finish_reason is not None:
            finishes[choice.index].append(choice.finish_reason)
    for i, c in enumerate(whole.choices):
        assert pieces[i] == (c.text if kind == "completions" else c.message.content)
        assert finishes[i] == [c.finish_reason]
    assert usage == whole.usage


def test_n_choices_and_logprobs(live):
    r = live.client().completions.create(model=NAME, prompt="def f(x):", max_tokens=12, temperature=1.0, seed=5,
                                         n=3, logprobs=2)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert len({c.text for c in r.choices}) > 1
    # Usage counts every choice's tokens: one log-probability per generated token.
    assert r.usage.completion_tokens == sum(len(c.logprobs.token_logprobs) for c in r.choices)
    for c in r.choices:
        assert all(len(top) == 2 for top in c.logprobs.top_logprobs)
    chat = live.client().chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0, n=2,
        logprobs=True, top_logprobs=3)
    assert chat.choices[0].message.content == chat.choices[1].message.content  # greedy: the same twice
    entry = chat.choices[0].logprobs.content[0]
    assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)


def test_errors_are_openai_errors_and_the_server_recovers(live):
    client = live.client()
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="word " * 200, max_tokens=5)  # over the context
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="allows at most 100"):
        client.completions.create(model=NAME, prompt="x", max_tokens=101)
    with pytest.raises(openai.BadRequestError, match="at most 4"):
        client.completions.create(model=NAME, prompt="x", n=5)
    with pytest.raises(openai.BadRequestError, match="answered whole, not streamed"):
        client.completions.create(model=NAME, prompt="x", echo=True, stream=True)
    # echo with max_tokens 0 scores the prompt alone: its text, and a logprob for each token but the first.
    echoed = client.completions.create(model=NAME, prompt="the word", echo=True, max_tokens=0, logprobs=1).choices[0]
    assert echoed.text == "the word" and len(echoed.logprobs.tokens) == len(echoed.logprobs.token_logprobs) > 1
    assert echoed.logprobs.token_logprobs[0] is None and all(v <= 0 for v in echoed.logprobs.token_logprobs[1:])
    with pytest.raises(openai.BadRequestError, match="assistant turn before any user turn"):
        client.chat.completions.create(model=NAME, messages=[{"role": "assistant", "content": "x"}])
    with pytest.raises(openai.AuthenticationError) as e:
        live.client(api_key="wrong").completions.create(model=NAME, prompt="x")
    assert e.value.body["code"] == "invalid_api_key"
    assert httpx.get(f"{live.url}/v1/models").status_code == 401  # no key at all
    headers = {"Authorization": f"Bearer {KEY}"}
    big = httpx.post(f"{live.url}/v1/completions", headers=headers, json={"model": NAME, "prompt": "x" * 30_000})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    bad = httpx.post(f"{live.url}/v1/completions", headers={**headers, "Content-Type": "application/json"},
                     content=b"{not json")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    # And after all that, a plain request still works.
    assert client.completions.create(model=NAME, prompt="x", max_tokens=3, temperature=0).choices[0].finish_reason


def test_a_client_that_disconnects_mid_stream_frees_its_blocks(live):
    before = live.metrics().get('tokenmill_requests_finished_total{finish_reason="abort"}', 0.0)
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": NAME, "prompt": "A long answer:", "max_tokens": 100, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{live.url}/v1/completions", headers=headers, json=body) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    m = live.wait_idle()
    assert m['tokenmill_requests_finished_total{finish_reason="abort"}'] == before + 1
    assert m["tokenmill_kv_cache_usage_ratio"] == 0


def test_prefix_cache_hits_show_in_metrics(live):
    system = {"role": "system", "content": EXTRA[0] * 2}  # several full blocks
    before = live.metrics()["tokenmill_prefix_cache_hits_tokens_total"]
    for question in ("Why?", "How?"):
        live.client().chat.completions.create(model=NAME, messages=[system, {"role": "user", "content": question}],
                                              max_tokens=2, temperature=0)
    m = live.metrics()
    assert m["tokenmill_prefix_cache_hits_tokens_total"] - before >= 16
    assert m["tokenmill_time_to_first_token_seconds_count"] > 0
    assert m["tokenmill_inter_token_latency_seconds_count"] > 0


def test_load_with_disconnecting_clients_gives_no_5xx_and_frees_every_block(live):
    rng = random.Random(0)
    headers = {"Authorization": f"Bearer {KEY}"}
    statuses: list[int] = []
    kinds = [rng.choice(["stream", "stream", "whole", "drop-stream", "drop-whole"]) for _ in range(200)]

    async def one(client: httpx.AsyncClient, i: int, kind: str) -> None:
        body = {"model": NAME, "prompt": f"Request {i}: " + "word " * rng.randint(1, 30),
                "max_tokens": rng.randint(1, 40), "temperature": 0.8, "seed": i}
        if kind.endswith("stream"):
            async with client.stream("POST", "/v1/completions", headers=headers, json={**body, "stream": True}) as r:
                statuses.append(r.status_code)
                async for line in r.aiter_lines():
                    if kind == "drop-stream" and line.startswith("data:"):
                        return  # leave mid-stream: the connection is closed
                    if line.startswith("data: {"):
                        assert "error" not in json.loads(line[6:])
        elif kind == "drop-whole":
            try:
                r = await asyncio.wait_for(client.post("/v1/completions", headers=headers, json=body), timeout=0.05)
                statuses.append(r.status_code)
            except TimeoutError:
                statuses.append(0)  # gave up waiting: the connection is closed
        else:
            r = await client.post("/v1/completions", headers=headers, json=body)
            statuses.append(r.status_code)

    async def main() -> None:
        limit = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=live.url, timeout=120, limits=httpx.Limits(max_connections=64)) as client:
            async def bounded(i: int, kind: str) -> None:
                async with limit:
                    await one(client, i, kind)
            await asyncio.gather(*(bounded(i, k) for i, k in enumerate(kinds)))

    asyncio.run(main())
    assert len(statuses) == 200
    assert not [s for s in statuses if s >= 500]
    assert statuses.count(200) >= kinds.count("stream") + kinds.count("whole")
    m = live.wait_idle()
    assert m["tokenmill_kv_cache_usage_ratio"] == 0 and m["tokenmill_preemptions_total"] > 0
    assert m['tokenmill_requests_finished_total{finish_reason="abort"}'] >= kinds.count("drop-stream")
    blocks = live.engine.engine.blocks
    assert blocks.num_free_blocks == blocks.num_usable_blocks and not any(blocks.ref) and not blocks.tables


def test_cli_registers_serve_and_refuses_a_missing_folder(tmp_path):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", str(tmp_path / "nothing"), "--port", "0"])
    assert (args.host, args.max_n, args.block_size) == ("127.0.0.1", 8, 16)
    with pytest.raises(TokenmillError, match="model folder not found"):
        args.func(args)
    args = parser.parse_args(["serve", str(tmp_path)])
    with pytest.raises(TokenmillError, match="holds no tokenizer .* point --tokenizer"):
        args.func(args)
