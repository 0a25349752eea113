"""The OpenAI-compatible server under hostile load: disconnecting clients and malformed bodies.

    python benchmarks/serve_stress.py [--requests 200] [--concurrency 32] [--threads 1] [--seed 0]

Starts `tokenmill serve`'s app (create_app, default limits, no API key) under uvicorn on
127.0.0.1 with a small random LLaMA-style model (context 256) and a byte-level BPE tokenizer
trained on the Python standard library, then sends `--requests` requests from `--concurrency`
clients in a closed loop: a fifth of them leave mid-stream (the connection closed after the
first event), a tenth send a malformed body (bad JSON, NaN, a body nested 100,000 deep, a
text/plain POST, a seed past int64, 20,000 prompts, 10,000 stop strings, a foreign Host
header, a field of the wrong type), the others ask for completions and chats, streamed or
whole. Prints one JSON line: the answers by status, how many were 5xx (must be 0), the KV
cache's free blocks at the end against its total (must be equal), and the process's resident
memory (RSS) after a warm-up against at the end (the growth should stay within 10%).
Loopback only; it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import torch
import uvicorn

sys.path.insert(0, str(Path(__file__).parent))
from serve import stdlib_tokenizer

from tokenmill.deploy.serve.engine import AsyncEngine, Engine, EngineConfig
from tokenmill.deploy.serve.server import create_app
from tokenmill.model import ModelConfig, build_model

NAME = "stress"
JSON = {"Content-Type": "application/json"}


def rss_mb() -> float:
    """This process's resident memory, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def malformed(i: int) -> tuple[dict[str, str], bytes]:
    """Headers and body of the i-th malformed request, each kind in turn."""
    ok = {"model": NAME, "prompt": "x", "max_tokens": 4}
    kinds = [
        (JSON, b'{"model": "stress", "prompt": '),
        (JSON, b'{"model": "stress", "prompt": "x", "temperature": NaN}'),
        (JSON, b"[" * 100_000 + b"]" * 100_000),
        ({"Content-Type": "text/plain"}, json.dumps(ok).encode()),
        (JSON, json.dumps({**ok, "seed": 2**64}).encode()),
        (JSON, json.dumps({**ok, "prompt": ["x"] * 20_000}).encode()),
        (JSON, json.dumps({**ok, "stop": [f"s{k}" for k in range(10_000)]}).encode()),
        ({**JSON, "Host": "attacker.example"}, json.dumps(ok).encode()),
        (JSON, json.dumps({**ok, "n": "two", "max_tokens": -1}).encode()),
    ]
    return kinds[i % len(kinds)]


def body(rng: random.Random, i: int, chat: bool, stream: bool) -> dict:
    common = {"model": NAME, "max_tokens": rng.randint(4, 48), "temperature": rng.choice([0, 0.8]), "seed": i,
              "stream": stream}
    words = " ".join(rng.choice(["def", "class", "return", "import", "value", "list", "for", "in"])
                     for _ in range(rng.randint(1, 40)))
    if chat:
        return {**common, "messages": [{"role": "user", "content": words}]}
    return {**common, "prompt": words, "n": rng.choice([1, 1, 2])}


async def load(url: str, requests: int, concurrency: int, seed: int) -> Counter:
    rng = random.Random(seed)
    statuses: Counter = Counter()
    order = list(range(requests))
    rng.shuffle(order)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        if i % 10 == 0:  # a tenth: malformed
            headers, content = malformed(i // 10)
            r = await client.post("/v1/completions", content=content, headers=headers)
            statuses[r.status_code] += 1
            return
        chat = i % 3 == 0
        path = "/v1/chat/completions" if chat else "/v1/completions"
        if i % 5 == 1:  # a fifth: leave mid-stream
            async with client.stream("POST", path, json=body(rng, i, chat, True)) as r:
                statuses[r.status_code] += 1
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        return  # the connection is closed with the stream half read
            return
        stream = i % 2 == 0
        if stream:
            async with client.stream("POST", path, json=body(rng, i, chat, True)) as r:
                statuses[r.status_code] += 1
                async for line in r.aiter_lines():
                    if line.startswith('data: {"error"'):  # an error after the stream began
                        statuses["error event"] += 1
        else:
            r = await client.post(path, json=body(rng, i, chat, False))
            statuses[r.status_code] += 1

    queue: asyncio.Queue = asyncio.Queue()
    for i in order:
        queue.put_nowait(i)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            await one(client, queue.get_nowait())

    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = stdlib_tokenizer(Path(tmp), 1024)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=256, d_model=128, n_layers=2, n_heads=4,
                         n_kv_heads=1, d_ff=384)
    torch.manual_seed(args.seed)
    model = build_model(config, device="cpu").eval()
    engine = AsyncEngine(Engine(model, tokenizer, EngineConfig(max_num_seqs=32)))
    app = create_app(engine, NAME)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    try:
        asyncio.run(load(url, 20, 8, args.seed + 1))  # warm-up: allocator, scratch buffers, every kind of request
        gc.collect()
        rss_start = rss_mb()
        start = time.perf_counter()
        statuses = asyncio.run(load(url, args.requests, args.concurrency, args.seed))
        seconds = time.perf_counter() - start
        for _ in range(1000):  # the aborts of the last disconnects reach the engine a moment later
            if not engine.engine.has_unfinished() and not engine.engine.requests:
                break
            time.sleep(0.01)
        gc.collect()
        rss_end = rss_mb()
        health = httpx.get(f"{url}/health").status_code
    finally:
        server.should_exit = True
        thread.join(timeout=30)

    blocks = engine.engine.blocks
    print(json.dumps({
        "requests": args.requests, "concurrency": args.concurrency, "seconds": round(seconds, 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
        "answers": sum(v for k, v in statuses.items() if isinstance(k, int)),
        "server_errors_5xx": sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500),
        "health_at_end": health,
        "kv_blocks_free_at_end": blocks.num_free_blocks, "kv_blocks_total": blocks.num_usable_blocks,
        "kv_all_free": blocks.num_free_blocks == blocks.num_usable_blocks and not blocks.tables,
        "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
        "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2),
        "model_params": sum(p.numel() for p in model.parameters()), "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
