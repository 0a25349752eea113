"""Helpers of the serving tests: test texts, tiny models of several architectures, a plain greedy loop,
and the server on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import torch
import uvicorn

from tokenmill.deploy.serve.engine import AsyncEngine, Engine, EngineConfig
from tokenmill.deploy.serve.server import Limits, create_app
from tokenmill.model import ModelConfig, build_model, load_model
from tokenmill.tokenizer import Tokenizer

NAME = "tiny-llama"

# Written for these tests: a shared system prompt, and text in more than one script so that
# some tokens are parts of a character.
EXTRA = [
    "You are a helpful assistant. Answer briefly and cite the language reference when you can.",
    "Größe, Straße, café, naïve; Все люди рождаются свободными; "
    "人人生而自由; 👍🏽 ✔︎",
]

# Architectures that reach the cache differently: RoPE with grouped-query attention, a learned
# position table, ALiBi, and a sliding window shorter than the sequences.
ARCHITECTURES = {
    "llama": dict(position="rope", n_kv_heads=2, mlp="swiglu", norm="rmsnorm"),
    "gpt2": dict(position="learned", mlp="gelu", norm="layernorm", bias=True),
    "bloom": dict(position="alibi", mlp="gelu", norm="layernorm", embedding_norm=True),
    "mistral": dict(position="rope", n_kv_heads=1, sliding_window=24),
    # Sliding-window layers alternating with global ones, soft-capped scores and logits, post-norms.
    "gemma2": dict(n_kv_heads=2, mlp="geglu", gelu_approx="tanh", norm_unit_offset=True, scale_embeddings=True,
                   post_norms=True, sliding_window=12, sliding_window_pattern=2, query_pre_attn_scalar=24,
                   attn_logit_softcap=5.0, final_logit_softcap=3.0),
    # ... and with q/k norms and a RoPE base of their own in the local layers instead of soft-capping.
    "gemma3": dict(n_kv_heads=2, mlp="geglu", gelu_approx="tanh", norm_unit_offset=True, scale_embeddings=True,
                   post_norms=True, qk_norm=True, sliding_window=12, sliding_window_pattern=2, rope_local_theta=100.0),
}


def tiny_model(tokenizer: Tokenizer, arch: str = "llama", context_length: int = 160, seed: int = 0):
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, context_length=context_length, d_model=64, n_layers=2, n_heads=4,
        init_std=0.1, **ARCHITECTURES[arch],
    )
    torch.manual_seed(seed)
    return build_model(config, device="cpu").eval()


@torch.no_grad()
def reference_greedy(model, prompt: list[int], max_tokens: int, stop_ids: set[int] = frozenset()) -> list[int]:
    """The plainest greedy loop: the whole sequence through the model for every token, no cache."""
    ids = list(prompt)
    for _ in range(max_tokens):
        token = int(model(torch.tensor([ids]))[0, -1].argmax())
        ids.append(token)
        if token in stop_ids:
            break
    return ids[len(prompt):]


class LiveServer:
    """`create_app` under a real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, model_dir, engine_config: EngineConfig, limits: Limits, api_key: str | None = None,
                 **app_options) -> None:
        # Loaded as `tokenmill serve` loads it: the model folder holds model and tokenizer.
        self.tokenizer = Tokenizer.load(model_dir)
        self.model = load_model(model_dir, device="cpu")
        self.engine = AsyncEngine(Engine(self.model, self.tokenizer, engine_config))
        self.api_key = api_key
        self.app = create_app(self.engine, NAME, api_key=api_key, limits=limits, **app_options)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # a free port
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, api_key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key or self.api_key or "none", max_retries=0,
                             timeout=60)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", headers=self.headers).text
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}

    def wait_idle(self) -> dict[str, float]:
        """The metrics once nothing runs or waits (aborts reach the engine a moment after the disconnect)."""
        for _ in range(500):
            m = self.metrics()
            if m["tokenmill_requests_running"] == m["tokenmill_requests_waiting"] == 0:
                return m
            time.sleep(0.02)
        raise AssertionError(f"the engine did not become idle: {m}")

    def all_blocks_free(self) -> bool:
        blocks = self.engine.engine.blocks
        return blocks.num_free_blocks == blocks.num_usable_blocks and not any(blocks.ref) and not blocks.tables

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
