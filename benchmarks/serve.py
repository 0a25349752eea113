"""The serving engine against one-at-a-time and static batching on the same requests: throughput, latency, KV waste.

    python benchmarks/serve.py [--device cuda] [--requests 128] [--concurrency 1,8,32,64] [--model-dir DIR]

One set of requests (random prompts, lengths drawn as below, greedy, `ignore_eos` so that
every request produces exactly its number of tokens) is served three ways:

- engine: `Engine` (paged KV cache, continuous batching, chunked prefill) with C clients in a
  closed loop: each client sends its next request as soon as the last one finished;
- one at a time: each request alone with the model's contiguous `KVCache`, prefill then one
  token per step. Measured once; since the server is serial, the latency at C clients is the
  same service times queued C deep (request j waits for request j-1 to finish);
- static batching: batches of C requests in arrival order, prompts padded to the longest, the
  batch decoding until its longest request is done (contiguous `KVCache`, one row each). With
  C = 1 this is the one-at-a-time server, whose figures are reused.

Throughput is output tokens per second of wall time. TTFT runs from a request's submission to
its first token, ITL between two tokens of one request (for static batching: the batch's
steps, as if streamed). KV waste is 1 − (token slots written ÷ token slots allocated), summed
over the engine's steps at the largest concurrency not above 32: paged (whole blocks) against a
contiguous buffer of the context length per running sequence (and one of exactly
prompt + max_tokens, which needs the output length in advance). Prints one JSON line.

Without --model-dir the model is a random LLaMA-style model (4M parameters: d_model 256, 4 layers,
4 query heads sharing one key/value head, SwiGLU, RoPE, context 1,024) with a byte-level BPE
tokenizer trained on the Python standard library.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tokenmill.deploy.serve.engine import Engine, EngineConfig
from tokenmill.model import KVCache, ModelConfig, build_model, load_model
from tokenmill.model.sampling import SamplingParams
from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document
from tokenmill.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

Request = tuple[list[int], int]  # prompt ids, output tokens


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def stdlib_tokenizer(out: Path, vocab_size: int) -> Tokenizer:
    lib = Path(sysconfig.get_paths()["stdlib"])
    with ShardWriter(out / "docs") as writer:
        for path in sorted(lib.glob("*.py"))[:80]:
            writer.write(Document(path.name, path.read_text(encoding="utf-8", errors="replace"), "code"))
    train_tokenizer(writer.paths, TokenizerConfig(vocab_size=vocab_size), out / "tokenizer")
    return Tokenizer.load(out / "tokenizer")


def workload(n: int, vocab_size: int, context: int, seed: int) -> list[Request]:
    """Lengths shaped like chat traffic (ShareGPT, as used in the vLLM paper): prompts of 8..512 tokens and
    outputs of 16..512 tokens, both log-uniform, so most are short and a few long, which is what makes
    waiting for the slowest costly. Prompt tokens are drawn at random from the vocabulary."""
    rng = random.Random(seed)
    requests = []
    for _ in range(n):
        prompt_len = round(math.exp(rng.uniform(math.log(8), math.log(512))))
        out_len = min(round(math.exp(rng.uniform(math.log(16), math.log(512)))), context - prompt_len)
        requests.append(([rng.randrange(8, vocab_size) for _ in range(prompt_len)], out_len))
    return requests


def summary(tokens: int, seconds: float, ttft: list[float], itl: list[float]) -> dict[str, float]:
    ms = lambda xs, q: round(float(np.percentile(xs, q)) * 1000, 2) if xs else None  # noqa: E731
    return {"output_tokens_per_s": round(tokens / seconds, 1), "ttft_p50_ms": ms(ttft, 50), "ttft_p99_ms": ms(ttft, 99),
            "itl_p50_ms": ms(itl, 50), "itl_p99_ms": ms(itl, 99), "seconds": round(seconds, 2)}


def run_engine(engine: Engine, requests: list[Request], concurrency: int, waste: dict | None) -> dict:
    pending = list(enumerate(requests))[::-1]
    submitted, last_token, ttft, itl = {}, {}, [], []
    tokens = in_flight = 0
    context = engine.context_length
    start = time.perf_counter()
    while pending or engine.has_unfinished():
        while in_flight < concurrency and pending:
            i, (prompt, out_len) = pending.pop()
            engine.add_request(str(i), prompt, SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True))
            submitted[str(i)], in_flight = time.perf_counter(), in_flight + 1
        outputs = engine.step()
        now = time.perf_counter()
        if waste is not None:
            used, allocated = engine.blocks.slots()
            running = engine.scheduler.running
            waste["used"] += used
            waste["paged"] += allocated
            waste["max_length"] += len(running) * context
            waste["exact"] += sum(s.num_prompt + s.request.params.max_tokens for s in running)
        for out in outputs:
            n = sum(len(d.token_ids) for d in out.deltas)
            tokens += n
            if out.request_id in last_token:
                itl.append(now - last_token[out.request_id])
            else:
                ttft.append(now - submitted[out.request_id])
            last_token[out.request_id] = now
            if out.finished:
                in_flight -= 1
    return summary(tokens, time.perf_counter() - start, ttft, itl)


@torch.inference_mode()
def one_at_a_time(model, requests: list[Request], device: torch.device) -> list[dict]:
    """Each request alone with a contiguous KV cache: its prefill time and its step times."""
    timings = []
    for prompt, out_len in requests:
        start = time.perf_counter()
        cache = KVCache(model.config, 1, len(prompt) + out_len)
        ids, positions = torch.tensor([prompt], device=device), torch.arange(len(prompt), device=device)
        logits = model(ids, positions=positions, cache=cache)
        token = logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        times = [time.perf_counter()]
        for i in range(out_len - 1):
            logits = model(token, positions=torch.tensor([len(prompt) + i], device=device), cache=cache)
            token = logits[:, -1].argmax(-1, keepdim=True)
            token.item()  # a server hands each token out as it comes
            times.append(time.perf_counter())
        timings.append({"start": start, "times": times})
    return timings


def queued(timings: list[dict], requests: list[Request], concurrency: int) -> dict:
    """The serial server's latencies with `concurrency` clients: request j is submitted when request
    j - concurrency finishes and starts when request j - 1 finishes."""
    finish, clock, ttft, itl = [], 0.0, [], []
    for j, t in enumerate(timings):
        submit = finish[j - concurrency] if j >= concurrency else 0.0
        first = t["times"][0] - t["start"]
        ttft.append(clock - submit + first)
        itl += list(np.diff(t["times"]))
        clock += t["times"][-1] - t["start"]
        finish.append(clock)
    return summary(sum(n for _, n in requests), clock, ttft, itl)


@torch.inference_mode()
def static_batching(model, requests: list[Request], batch_size: int, device: torch.device) -> dict:
    """Batches in arrival order; pad to the longest prompt; decode until the longest output is done."""
    ttft, itl, tokens = [], [], 0
    start = time.perf_counter()
    for b in range(0, len(requests), batch_size):
        batch = requests[b : b + batch_size]
        batch_start = time.perf_counter()
        lengths = torch.tensor([len(p) for p, _ in batch], device=device)
        longest, steps = int(lengths.max()), max(n for _, n in batch)
        ids = torch.zeros(len(batch), longest, dtype=torch.long, device=device)
        for r, (prompt, _) in enumerate(batch):
            ids[r, : len(prompt)] = torch.tensor(prompt, device=device)
        cache = KVCache(model.config, len(batch), longest + steps)
        logits = model(ids, positions=torch.arange(longest, device=device), cache=cache)
        rows = torch.arange(len(batch), device=device)
        token = logits[rows, lengths - 1].argmax(-1, keepdim=True)
        token.cpu()
        previous = time.perf_counter()
        ttft += [previous - batch_start] * len(batch)
        for i in range(steps - 1):
            # Each row continues from its own length, overwriting its padding.
            logits = model(token, positions=(lengths + i)[:, None], cache=cache)
            token = logits[:, -1].argmax(-1, keepdim=True)
            token.cpu()
            now = time.perf_counter()
            itl += [now - previous] * sum(1 for _, n in batch if n > i + 1)
            previous = now
        tokens += sum(n for _, n in batch)
    return summary(tokens, time.perf_counter() - start, ttft, itl)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--model-dir", help="a model folder with its tokenizer (default: a random nano-shaped model)")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        if args.model_dir:
            tokenizer, model = Tokenizer.load(args.model_dir), load_model(args.model_dir, device=device, dtype=dtype)
        else:
            tokenizer = stdlib_tokenizer(Path(tmp), 4096)
            config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=1024, d_model=256, n_layers=4,
                                 n_heads=4, n_kv_heads=1, d_ff=768)
            torch.manual_seed(args.seed)
            model = build_model(config, device=device, dtype=dtype).eval()
    requests = workload(args.requests, model.config.vocab_size, model.config.context_length, args.seed)

    # Warm-up (allocator, kernels), then the three servers on the same requests.
    run_engine(Engine(model, tokenizer, EngineConfig(max_num_seqs=max(levels))), requests[:8], 8, None)
    alone = one_at_a_time(model, requests, device)
    waste_level = max(c for c in levels if c <= 32)
    waste = {"used": 0, "paged": 0, "max_length": 0, "exact": 0}
    results = {}
    for c in levels:
        engine = Engine(model, tokenizer, EngineConfig(max_num_seqs=max(levels)))
        results[c] = {
            "engine": run_engine(engine, requests, c, waste if c == waste_level else None),
            "one_at_a_time": queued(alone, requests, c),
            "static_batching": queued(alone, requests, c) if c == 1 else static_batching(model, requests, c, device),
        }
        assert engine.blocks.num_free_blocks == engine.blocks.num_usable_blocks
        for name in ("one_at_a_time", "static_batching"):
            results[c][f"engine_vs_{name}"] = round(
                results[c]["engine"]["output_tokens_per_s"] / results[c][name]["output_tokens_per_s"], 2)

    print(json.dumps({
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
        "params": sum(p.numel() for p in model.parameters()), "context_length": model.config.context_length,
        "requests": len(requests), "prompt_tokens_mean": round(float(np.mean([len(p) for p, _ in requests])), 1),
        "output_tokens_mean": round(float(np.mean([n for _, n in requests])), 1),
        "block_size": 16,
        "concurrency": results,
        f"kv_waste_at_concurrency_{waste_level}": {
            "paged": round(1 - waste["used"] / waste["paged"], 4),
            "contiguous_max_length": round(1 - waste["used"] / waste["max_length"], 4),
            "contiguous_prompt_plus_max_tokens": round(1 - waste["used"] / waste["exact"], 4),
        },
    }))


if __name__ == "__main__":
    main()
