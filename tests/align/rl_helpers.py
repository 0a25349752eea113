"""Helpers of the PPO, sampling and constitutional-AI tests: a tiny tokenizer and tiny models."""

from __future__ import annotations

import shutil
from pathlib import Path
from pydoc_data.topics import topics

import torch

from tokenmill.model import ModelConfig, build_model, save_model
from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document
from tokenmill.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

# Architectures that reach the KV cache differently: RoPE with grouped-query attention, a learned
# position table, ALiBi, and a sliding window shorter than the sequences.
ARCHITECTURES = {
    "llama": dict(position="rope", n_kv_heads=2, mlp="swiglu", norm="rmsnorm"),
    "gpt2": dict(position="learned", mlp="gelu", norm="layernorm", bias=True),
    "bloom": dict(position="alibi", mlp="gelu", norm="layernorm", embedding_norm=True),
    "mistral": dict(position="rope", n_kv_heads=1, sliding_window=12),
}


def train_tiny_tokenizer(folder: Path) -> Path:
    """A BPE tokenizer of 400 tokens trained on a few topics of the Python language reference."""
    corpus = folder / "corpus"
    with ShardWriter(corpus) as writer:
        for i, name in enumerate(sorted(topics)[:12]):
            writer.write(Document(f"reference/{i}", topics[name][:3000], "reference"))
    out = folder / "tokenizer"
    train_tokenizer(writer.paths, TokenizerConfig(kind="bpe", vocab_size=400, min_frequency=2), out)
    return out


def tiny_model(vocab_size: int, arch: str = "llama", context_length: int = 96, seed: int = 0, d_model: int = 32):
    config = ModelConfig(
        vocab_size=vocab_size, context_length=context_length, d_model=d_model, n_layers=2, n_heads=4,
        init_std=0.1, **ARCHITECTURES[arch],
    )
    torch.manual_seed(seed)
    return build_model(config, device="cpu").eval()


def model_folder(model, tokenizer_dir: Path, folder: Path) -> Path:
    """A self-contained model folder: weights, model.json and the tokenizer's files."""
    save_model(model, folder)
    for f in tokenizer_dir.iterdir():
        shutil.copyfile(f, folder / f.name)
    return folder


def load_tokenizer(folder: Path) -> Tokenizer:
    return Tokenizer.load(folder)


class LiveServer:
    """tokenmill's OpenAI-compatible server for a model folder, on a free loopback port."""

    def __init__(self, model_dir: Path, name: str, api_key: str | None = None, limits=None) -> None:
        import socket
        import threading
        import time

        import uvicorn

        from tokenmill.deploy.serve.engine import AsyncEngine, Engine, EngineConfig
        from tokenmill.deploy.serve.server import create_app
        from tokenmill.model import load_model

        engine = AsyncEngine(Engine(load_model(model_dir, device="cpu"), Tokenizer.load(model_dir),
                                    EngineConfig(num_blocks=64, block_size=16, max_num_seqs=16)))
        app = create_app(engine, name, api_key=api_key, limits=limits)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
