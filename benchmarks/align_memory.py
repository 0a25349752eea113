"""Peak memory of DPO steps on a Qwen2.5-0.5B-shaped model, full fine-tuning against LoRA.

    python benchmarks/align_memory.py [--device cuda] [--steps 3] [--pairs 4] [--seq 256] [--rank 16]

The model is random (no download): Qwen2.5-0.5B's config.json read through tokenmill's Qwen2
import, built in bfloat16, trained with bf16 weights and autocast as `--dtype bf16` trains. Each
variant runs in its own process, so that one's allocations do not count in the next's peak:

- full: every weight trained, a frozen copy as the reference, AdamW moments for all 494M weights;
- lora: rank-R adapters on every attention and MLP projection, the reference being the same
  weights with the adapters switched off;
- lora-int4: the same adapters on INT4 (RTN, groups of 128) base weights.

The peak is torch.cuda.max_memory_allocated on CUDA, the process's peak resident set on the CPU.
Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tokenmill.align.config import DpoConfig, LoraConfig
from tokenmill.align.dpo import DpoObjective
from tokenmill.align.packing import Batch
from tokenmill.align.train import optimize
from tokenmill.model.config import make_config
from tokenmill.model.hf_families import FAMILIES
from tokenmill.model.io import build_model
from tokenmill.model.lora import apply_lora

# Qwen/Qwen2.5-0.5B's config.json (the fields the import reads).
QWEN25_05B = {
    "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "hidden_act": "silu",
    "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 21, "attention_dropout": 0.0,
}
VARIANTS = ("full", "lora", "lora-int4")


def pair_batches(n: int, pairs: int, seq: int, vocab: int) -> list[Batch]:
    """Random pair batches (chosen rows, then rejected rows), the answer being the second half."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        ids = torch.randint(vocab, (2 * pairs, seq), generator=g)
        mask = torch.zeros_like(ids)
        mask[:, seq // 2:] = 1
        batches.append(Batch(ids, mask, torch.ones_like(ids), None))
    return batches


def run(variant: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    family = FAMILIES[QWEN25_05B["model_type"]]
    config = make_config(family.from_hf(QWEN25_05B), "Qwen2.5-0.5B config")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: an fp32 copy would set the CPU's peak
    model = build_model(config, device=device)
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    lora = None
    if variant != "full":
        lora = LoraConfig(rank=args.rank, alpha=2.0 * args.rank)
        if variant == "lora-int4":
            from tokenmill.deploy.quant.quantize import quantize_model, scheme_for

            quantize_model(model, "rtn4", scheme_for("rtn4", group_size=128))
        apply_lora(model, **lora.model_dump())
    dpo = DpoConfig(steps=args.steps, batch_size=args.pairs, seq_len=args.seq, dtype="bf16", warmup_steps=0,
                    eval_every=10**6, device=args.device, lora=lora, logging={"backends": []})
    batches = pair_batches(args.steps, args.pairs, args.seq, config.vocab_size)
    objective = DpoObjective(model, dpo, batches, device)

    def loss_fn(batch: Batch):
        loss, figures = objective(batch)
        return loss, {"accuracy": figures["accuracy"].float().mean().item()}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        metrics = optimize(model, batches, loss_fn, dpo, lambda: {}, Path(out), "dpo")
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "variant": variant, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "params": params, "trained_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "steps": args.steps, "pairs": args.pairs, "seq": args.seq, "rank": None if lora is None else args.rank,
        "peak_gib": round(peak / 2**30, 2), "seconds_per_step": round(seconds / args.steps, 3),
        "losses": [round(m["loss"], 4) for m in metrics],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--pairs", type=int, default=4, help="preference pairs per step")
    p.add_argument("--seq", type=int, default=256, help="tokens per row")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--variant", choices=VARIANTS, help="run this one in this process (default: each in a child)")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run(args.variant, args)), flush=True)
        return
    for variant in VARIANTS:
        subprocess.run([sys.executable, *sys.argv, "--variant", variant], check=True)


if __name__ == "__main__":
    main()
