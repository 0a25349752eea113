"""What INT8 and INT4 (RTN, GPTQ, AWQ) cost a trained model in quality and gain in size and speed.

    python benchmarks/quantize.py [--model runs/quickstart/05_pretrain/model] [--tokens runs/quickstart/03_encode]
    python benchmarks/quantize.py --random-llama --threads 2

Quantizes the model every way (calibrating GPTQ and AWQ on --samples windows of the train
split) and measures, next to FP32 and BF16: model.safetensors size, the quantized layers'
compression against FP32, validation perplexity over the whole val split, and greedy decoding
tokens/s at batch 1 and 16. The peer is the FP32 model of the same run: every figure also
appears as a ratio to it. A second part times one LLaMA-7B-sized linear layer (4,096 × 4,096)
as FP32 `F.linear` and as `QuantLinear` with and without PyTorch's weight-only kernels. Checks
the acceptance figures: INT8 within 1% of FP32 perplexity; INT4-GPTQ's increase at most half
of INT4-RTN's; INT4 layers at least 3.5× smaller; and the usual claim (INT8 < 1%, INT4 1-5%).
Prints one JSON line.

With --random-llama it measures decoding speed only, on a LLaMA-shaped model with random weights
(12 layers × 768, GQA 12/4 heads, SwiGLU 2,048, vocab 32k): greedy tokens/s at batch 1 and 16 for
FP32, INT8 (W8A8) and INT4 (RTN, group 128), the variants taking turns in one process over
several rounds (best of each), so that load from other processes on a shared machine falls on
all of them alike; the ratios to FP32 are the figures to quote.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch
import torch.nn.functional as F

from tokenmill.deploy.quant.calib import calibration_ids
from tokenmill.deploy.quant.evaluate import compare, decode_speed
from tokenmill.deploy.quant.quantize import quantize_model, scheme_for
from tokenmill.deploy.quant.rtn import rtn
from tokenmill.model import build_model, load_preset
from tokenmill.model.config import make_config, read_config
from tokenmill.model.quant.grid import Scheme
from tokenmill.model.quant.linear import QuantLinear
from tokenmill.tokenizer.dataset import TokenDataset


def time_layer(device: str, rows: int, repeat: int) -> dict[str, float]:
    """Microseconds per product of `rows` inputs with a 4,096 × 4,096 weight: FP32, and INT8 and INT4
    QuantLinear with (CPU only) and without PyTorch's quantized kernels (W8A8 `_int_mm`, INT4 tinygemm)."""
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(4096, 4096, generator=g) * 0.02).to(device)
    x = torch.randn(rows, 4096, generator=g).to(device)
    layers = {f"int{s.bits}": QuantLinear.from_codes(*rtn(w, s), s) for s in (Scheme(8, None, True), Scheme(4, 128, True))}
    runs = {"fp32": (lambda: F.linear(x, w), False)}
    for name, layer in layers.items():
        runs[f"{name}_dequantize"] = (lambda layer=layer: layer(x), False)
        if device == "cpu":
            runs[f"{name}_kernel"] = (lambda layer=layer: layer(x), True)
    out = {}
    for name, (fn, kernels) in runs.items():
        QuantLinear.use_kernels = kernels
        fn()
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        _sync(device)
        out[name] = round((time.perf_counter() - start) / repeat * 1e6, 1)
    QuantLinear.use_kernels = True
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_llama(device: str, decode_tokens: int, rounds: int) -> dict:
    """Decoding tokens/s of a random LLaMA-shaped model in FP32, INT8 (W8A8) and INT4 (RTN), taking turns."""
    fields = load_preset("llama-7b").model_dump()
    fields.update(vocab_size=32000, context_length=512, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4,
                  head_dim=64, d_ff=2048)
    config = make_config(fields, "random LLaMA")
    torch.manual_seed(0)
    fp32 = build_model(config, device).eval()
    models = {"fp32": fp32}
    for name, method in (("int8", "int8"), ("int4-rtn", "rtn4")):
        models[name] = copy.deepcopy(fp32)
        quantize_model(models[name], method, scheme_for(method, 128, True))
    best = {name: {1: 0.0, 16: 0.0} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            for batch in (1, 16):
                best[name][batch] = max(best[name][batch], decode_speed(model, batch, decode_tokens, repeats=2))
    return {
        "architecture": {k: getattr(config, k) for k in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")},
        "decode_tokens": decode_tokens,
        "rounds": rounds,
        "tok_s": {name: {f"batch{b}": round(v, 1) for b, v in r.items()} for name, r in best.items()},
        "vs_fp32": {name: {f"batch{b}": round(v / best["fp32"][b], 2) for b, v in r.items()} for name, r in best.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/quickstart/05_pretrain/model")
    p.add_argument("--tokens", default="runs/quickstart/03_encode")
    p.add_argument("--samples", type=int, default=128, help="calibration windows")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--eval-batches", type=int, default=None, help="validation batches of 16 windows (default all)")
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default torch's)")
    p.add_argument("--random-llama", action="store_true", help="only decoding speed, on a random LLaMA-shaped model")
    p.add_argument("--rounds", type=int, default=3, help="turns of the variants in --random-llama")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.random_llama:
        start = time.perf_counter()
        print(json.dumps({"benchmark": "quantize_decode", "device": device, "threads": torch.get_num_threads(),
                          **random_llama(device, args.decode_tokens, args.rounds),
                          "wall_s": round(time.perf_counter() - start, 1)}))
        return
    config = read_config(args.model)
    calib = calibration_ids(args.tokens, args.samples, config.context_length)
    val = TokenDataset(args.tokens, "val", seq_len=config.context_length)
    start = time.perf_counter()
    rows = compare(args.model, val, calib, {"group_size": args.group_size, "symmetric": True}, device=device,
                   decode_tokens=args.decode_tokens, eval_batches=args.eval_batches,
                   log=lambda line: print(line, file=sys.stderr))
    fp32 = rows["fp32"]
    vs_fp32 = {name: {
        "size": round(r["file_bytes"] / fp32["file_bytes"], 4),
        "perplexity_change": round(r["perplexity_change"], 5),
        "decode_batch1": round(r["decode_tok_s_batch1"] / fp32["decode_tok_s_batch1"], 3),
        "decode_batch16": round(r["decode_tok_s_batch16"] / fp32["decode_tok_s_batch16"], 3),
    } for name, r in rows.items()}
    change = {name: r["perplexity_change"] for name, r in rows.items()}
    checks = {
        "int8_within_1pct": abs(change["int8"]) < 0.01,
        "gptq_increase_at_most_half_of_rtn": change["int4-gptq"] <= 0.5 * change["int4-rtn"],
        "int4_layers_at_least_3.5x_smaller": all(rows[n]["layer_compression"] >= 3.5 for n in ("int4-rtn", "int4-gptq", "int4-awq")),
        "claim_int8_under_1pct": change["int8"] < 0.01,
        "claim_int4_1_to_5pct": {n: 0.01 <= change[n] <= 0.05 for n in ("int4-rtn", "int4-gptq", "int4-awq")},
    }
    print(json.dumps({
        "benchmark": "quantize",
        "model": args.model,
        "architecture": {k: getattr(config, k) for k in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")},
        "device": device,
        "threads": torch.get_num_threads(),
        "calibration": {"samples": len(calib), "seq_len": config.context_length},
        "validation_tokens": len(val) * config.context_length,
        "rows": {n: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for n, r in rows.items()},
        "vs_fp32": vs_fp32,
        "linear_4096x4096_us": {"batch1": time_layer(device, 1, 20), "batch16": time_layer(device, 16, 5)},
        "checks": checks,
        "wall_s": round(time.perf_counter() - start, 1),
    }))


if __name__ == "__main__":
    main()
