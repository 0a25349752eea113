"""Pre-training throughput: tokenmill's loop against a plain nanoGPT-style loop on the same shapes.

    python benchmarks/pretrain.py [--models nano,gpt2-small] [--steps N] [--device cuda] [--compile]

For the quickstart model (`nano`) and a GPT-2-small-shaped model (124M parameters, vocabulary
padded to 50,304 as nanoGPT does), runs a few steps of tokenmill's loop (`Trainer.step`, the
body of `train`'s loop: memory-mapped token shards, accumulation, the global gradient norm
agreed and clipped, the schedule, the step's metrics) and, in the same process, of a
reference: the same architecture written
as a minimal PyTorch module (fused QKV, SDPA, as in nanoGPT and llama2.c) trained by a plain
loop with AdamW (fused on CUDA), autocast, clipping and `loss.item()` each step, as nanoGPT
logs. Both read the same kind of batches from the same shards, use the same precision and
the same compile setting. The two take their steps in turn, so that other work on a shared
machine slows both alike; tokens per second are medians over the timed steps (the first
`--warmup` are left out), and the ratio is the median of ours over the reference's, step by
step. MFU is against the device's dense 16-bit peak when known (training FLOPs per token
6N + 12·L·H·Q·T, as `tokenmill plan` counts them). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenmill.device import autocast_dtype, pick_device
from tokenmill.model import load_preset
from tokenmill.model.config import ModelConfig
from tokenmill.model.plan import flops_per_token, parameter_counts
from tokenmill.pretrain.config import PretrainConfig
from tokenmill.pretrain.distributed import init_distributed
from tokenmill.pretrain.loop import Trainer
from tokenmill.pretrain.report import peak_flops
from tokenmill.pretrain.state import TrainState
from tokenmill.tokenizer.dataset import TokenDataset
from tokenmill.tokenizer.tokens import TokenShardWriter, token_dtype

# --- the reference: a minimal GPT / LLaMA in plain PyTorch ------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def norm(c: ModelConfig) -> nn.Module:
    return RMSNorm(c.d_model, c.norm_eps) if c.norm == "rmsnorm" else nn.LayerNorm(c.d_model, bias=c.norm_bias)


class Block(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.c, self.ln_1, self.ln_2 = c, norm(c), norm(c)
        self.split = [c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim]
        self.c_attn = nn.Linear(c.d_model, sum(self.split), bias=c.bias)
        self.c_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=c.bias)
        self.w1 = nn.Linear(c.d_model, c.d_ff, bias=c.bias)
        self.w3 = nn.Linear(c.d_model, c.d_ff, bias=c.bias) if c.gated else None
        self.w2 = nn.Linear(c.d_ff, c.d_model, bias=c.bias)

    def forward(self, x, rope):
        B, T, _ = x.shape
        c = self.c
        q, k, v = self.c_attn(self.ln_1(x)).split(self.split, dim=-1)
        q = q.view(B, T, c.n_heads, c.head_dim).transpose(1, 2)
        k = k.view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = v.view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=c.n_kv_heads != c.n_heads)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, -1))
        h = self.ln_2(x)
        h = F.silu(self.w1(h)) * self.w3(h) if c.gated else F.gelu(self.w1(h), approximate=c.gelu_approx)
        return x + self.w2(h)


class GPT(nn.Module):
    """GPT-2 (learned positions, LayerNorm, GELU) or LLaMA (RoPE, RMSNorm, SwiGLU, GQA), tied head."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.c = c
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.wpe = nn.Embedding(c.context_length, c.d_model) if c.position == "learned" else None
        self.h = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.ln_f = norm(c)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.ndim == 2:
                std = c.init_std / math.sqrt(2 * c.n_layers) if name.endswith(("c_proj.weight", "w2.weight")) else c.init_std
                nn.init.normal_(p, std=std)
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2).float() / c.head_dim))
        angles = torch.outer(torch.arange(c.context_length).float(), inv_freq).repeat(1, 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        rope = (self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)) if self.c.position == "rope" else None
        for block in self.h:
            x = block(x, rope)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


class ReferenceLoop:
    """A nanoGPT-style training step."""

    def __init__(self, c: ModelConfig, data: TokenDataset, settings: dict, device: torch.device) -> None:
        torch.manual_seed(0)
        self.model = GPT(c).to(device)
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        rest = [p for p in self.model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
            lr=3e-4, betas=(0.9, 0.95), fused=device.type == "cuda" or None,
        )
        self.forward = torch.compile(self.model) if settings["compile"] else self.model
        self.data, self.settings, self.device = data, settings, device

    def step(self, step: int) -> float:
        """Seconds taken by training step `step`."""
        s, device = self.settings, self.device
        micro, accum, dtype = s["micro_batch"], s["accum"], s["amp_dtype"]
        start = time.perf_counter()
        x, y = self.data.batch(step, micro * accum, device=device)
        for i in range(accum):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = self.forward(x[i * micro : (i + 1) * micro], y[i * micro : (i + 1) * micro]) / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss every step to log it
        return time.perf_counter() - start


# --- the benchmark ----------------------------------------------------------------------------------


def shapes(name: str, device: torch.device) -> tuple[ModelConfig, dict]:
    gpu = device.type == "cuda"
    if name == "nano":
        config = load_preset("nano")
        seq, micro, accum = 256, (64 if gpu else 16), 2
    elif name == "gpt2-small":
        config = load_preset("gpt2").model_copy(update={"vocab_size": 50_304})  # a multiple of 64, as nanoGPT pads it
        seq, micro, accum = (1024, 16, 2) if gpu else (128, 2, 1)
    else:
        raise SystemExit(f"unknown model {name!r}; choose nano or gpt2-small")
    return config, {"seq_len": seq, "micro_batch": micro, "accum": accum}


def write_tokens(folder: Path, vocab_size: int, n_tokens: int) -> None:
    """A training split of random tokens (speed does not depend on what they say)."""
    dtype = token_dtype(vocab_size)
    writer = TokenShardWriter(folder, "train", dtype, n_tokens)
    writer.write(np.random.default_rng(0).integers(0, vocab_size, n_tokens).astype(dtype), np.array([n_tokens]))
    writer.close()


def our_trainer(c: ModelConfig, tokens: Path, work: Path, s: dict) -> Trainer:
    """tokenmill's loop, whose `step` is the body of `train`'s loop."""
    config = PretrainConfig(
        steps=s["steps"], batch_tokens=s["seq_len"] * s["micro_batch"] * s["accum"], micro_batch=s["micro_batch"],
        seq_len=s["seq_len"], precision=s["precision"], compile=s["compile"], warmup_steps=2, lr=3e-4, spike_factor=None,
        device=s["device"],
    )
    return Trainer(c, tokens, None, config, init_distributed(config), work, work / "out")


def summary(rates: list[float], flops: float, peak: float | None) -> dict:
    median = statistics.median(rates)
    return {"tokens_per_s": round(median, 1), "mfu": round(median * flops / peak, 4) if peak else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="nano,gpt2-small")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--steps", type=int, help="steps per run (default 15 on a GPU, 5 on the CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: on a GPU)")
    args = parser.parse_args()
    device = pick_device(args.device)
    compile_ = args.compile if args.compile is not None else device.type == "cuda"
    steps = args.steps or (15 if device.type == "cuda" else 5)
    amp_dtype = autocast_dtype(args.precision, device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    result = {
        "benchmark": "pretrain",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": str(amp_dtype or torch.float32).removeprefix("torch."),
        "compile": compile_,
        "steps": steps,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            c, s = shapes(name, device)
            s.update(steps=steps, precision=args.precision, compile=compile_, amp_dtype=amp_dtype, device=device.type)
            tokens = Path(tmp) / f"{name}-tokens"
            write_tokens(tokens, c.vocab_size, max(2_000_000, 2 * steps * s["seq_len"] * s["micro_batch"] * s["accum"]))
            data = TokenDataset(tokens, "train", s["seq_len"])
            batch_tokens = s["seq_len"] * s["micro_batch"] * s["accum"]
            flops = flops_per_token(c, parameter_counts(c), s["seq_len"])["training"]
            peak = peak_flops(device, amp_dtype)
            trainer, reference = our_trainer(c, tokens, Path(tmp) / name, s), ReferenceLoop(c, data, s, device)
            state = TrainState()
            ours_rates, ref_rates = [], []
            # Step by step in turn, so that whatever else the machine does slows both alike.
            for step in range(steps):
                state, record = trainer.step(state)
                ref_seconds = reference.step(step)
                if step >= args.warmup:
                    ours_rates.append(record["tokens_per_s"])
                    ref_rates.append(batch_tokens / ref_seconds)
            del trainer, reference
            result["models"][name] = {
                "params": parameter_counts(c)["total"],
                "seq_len": s["seq_len"],
                "batch_tokens": batch_tokens,
                "micro_batch": s["micro_batch"],
                "flops_per_token": flops,
                "ours": summary(ours_rates, flops, peak),
                "reference": summary(ref_rates, flops, peak),
                "ratio": round(statistics.median(o / r for o, r in zip(ours_rates, ref_rates)), 3),
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
