"""tokenmill's transformer against transformers' on the same weights: agreement, forward and decoding speed.

    python benchmarks/model_forward.py [--device cuda] [--d-model 1024] [--layers 8] [--batch 8] [--seq 512]

Builds a random LLaMA-shaped `transformers` model (grouped-query attention), converts it
through the model folders (`import_hf`, as `tokenmill convert` does) and checks that the logits
agree in float32. Then, in --dtype, times the forward pass over batch × seq tokens and greedy
decoding of --new tokens with a KV cache (ours: `KVCache`; transformers: `generate`, greedy,
its own cache). On the device it also checks that KV-cached decoding equals the uncached
forward for RoPE, ALiBi and sliding-window models. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import transformers

from tokenmill.model.config import ModelConfig
from tokenmill.model.hf import import_hf
from tokenmill.model.io import build_model, load_model
from tokenmill.model.kv_cache import KVCache


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int = 3) -> float:
    fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


@torch.no_grad()
def decode(model, ids: torch.Tensor, new: int) -> torch.Tensor:
    batch, seq = ids.shape
    cache = KVCache(model.config, batch, seq + new)
    logits = model(ids, positions=torch.arange(seq, device=ids.device), cache=cache)
    tokens = [logits[:, -1].argmax(-1, keepdim=True)]
    for i in range(new - 1):
        logits = model(tokens[-1], positions=torch.tensor([seq + i], device=ids.device), cache=cache)
        tokens.append(logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(tokens, dim=1)


@torch.no_grad()
def cached_equals_uncached(device: str) -> dict[str, float]:
    """Largest |cached − uncached| logit over a prefill and 6 decoding steps, per kind of model."""
    base = dict(vocab_size=128, context_length=64, d_model=64, n_layers=2, n_heads=8, n_kv_heads=2)
    kinds = {"rope": {}, "alibi": {"position": "alibi"}, "sliding_window": {"sliding_window": 5},
             "learned_post_norm": {"position": "learned", "norm_place": "post", "norm": "layernorm"}}
    out = {}
    for name, fields in kinds.items():
        torch.manual_seed(0)
        model = build_model(ModelConfig(**base, **fields), device=device).eval()
        ids = torch.randint(0, 128, (3, 16), device=device)
        cache = KVCache(model.config, 3, 32)
        steps = [model(ids[:, :10], positions=torch.arange(10, device=device), cache=cache)]
        for i in range(10, 16):
            steps.append(model(ids[:, i : i + 1], positions=torch.tensor([i], device=device), cache=cache))
        out[name] = (torch.cat(steps, 1) - model(ids)).abs().max().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="timing dtype (default bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--new", type=int, default=64)
    args = parser.parse_args()
    device = args.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    transformers.logging.set_verbosity_error()

    heads = args.d_model // 64
    hf_config = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=int(args.d_model * 8 / 3) // 64 * 64,
        num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
        max_position_embeddings=args.seq + args.new,
    )
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(Path(tmp) / "hf")
        import_hf(Path(tmp) / "hf", Path(tmp) / "tokenmill")
        ours = load_model(Path(tmp) / "tokenmill", device=device)
    hf.to(device)

    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    with torch.no_grad():
        max_diff = (ours(ids[:2, :128]) - hf(ids[:2, :128]).logits).abs().max().item()
        same_greedy = torch.equal(decode(ours, ids[:2, :32], 16),
                                  hf.generate(ids[:2, :32], max_new_tokens=16, min_new_tokens=16, do_sample=False)[:, 32:])

    ours.to(dtype)
    hf.to(dtype)
    with torch.no_grad():
        ours_forward = timed(lambda: ours(ids), device)
        hf_forward = timed(lambda: hf(ids).logits, device)
        prompt = ids[:, :128]
        ours_decode = timed(lambda: decode(ours, prompt, args.new), device, repeat=1)
        hf_decode = timed(lambda: hf.generate(prompt, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False),
                          device, repeat=1)
    tokens = args.batch * args.seq
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "dtype": str(dtype).removeprefix("torch."),
        "params": sum(p.numel() for p in ours.parameters()), "fp32_max_abs_logit_diff": max_diff,
        "same_greedy_tokens_fp32": same_greedy,
        "forward_tokens_per_s": round(tokens / ours_forward), "hf_forward_tokens_per_s": round(tokens / hf_forward),
        "forward_ratio": round(hf_forward / ours_forward, 3),
        "decode_tokens_per_s": round(args.batch * args.new / ours_decode),
        "hf_decode_tokens_per_s": round(args.batch * args.new / hf_decode),
        "decode_ratio": round(hf_decode / ours_decode, 3),
        "cached_minus_uncached_fp32": cached_equals_uncached(device),
    }))


if __name__ == "__main__":
    main()
