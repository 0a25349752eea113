"""The `tokenmill quantize` verb."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from tokenmill.errors import TokenmillError

FORMATS = ("tokenmill", "gguf", "gptq")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="quantize a model's weights to INT8 or INT4 (RTN, GPTQ, AWQ) and measure the cost (stage 08)",
        description=(
            "Quantize every linear layer of the model in MODEL_DIR and write the result to --output. int8: "
            "per-channel round-to-nearest; rtn4: INT4 round-to-nearest in groups; gptq and awq: INT4 calibrated "
            "on --calib (token shards or curated documents; without it, a sample of the built-in corpus, which "
            "the command names on stderr). --format tokenmill (default) writes a self-contained model folder "
            "(model.json, model.safetensors with INT8 or packed INT4 codes, float16 scales and zero points, "
            "quantization.json, the tokenizer files) that `tokenmill.model.load_model` loads like any other; "
            "--format gguf writes OUTPUT/model.gguf (Q8_0 or Q4_0, with the tokenizer and chat template) for "
            "llama.cpp and Ollama; --format gptq writes the Hugging Face GPTQ layout (qweight, qzeros, scales, "
            "g_idx; quantization_config in config.json) that transformers and vLLM load. With --eval, FP32, "
            "BF16, INT8, INT4-RTN, INT4-GPTQ and INT4-AWQ are compared on size on disk, validation perplexity "
            "and decoding tokens/s at batch 1 and 16 (eval.json and charts in --output)."
        ),
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder (model.json, model.safetensors)")
    p.add_argument("--method", required=True, choices=("int8", "rtn4", "gptq", "awq"), help="how to quantize")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="the quantized model folder to write")
    p.add_argument("--format", default="tokenmill", choices=FORMATS,
                   help="tokenmill: a tokenmill model folder (default); gguf: OUTPUT/model.gguf for llama.cpp and Ollama; "
                        "gptq: the Hugging Face GPTQ layout for transformers and vLLM")
    p.add_argument("--group-size", type=int, metavar="N", default=128,
                   help="INT4 input columns per scale (default 128; 0: one group per output channel)")
    p.add_argument("--asym", action="store_true", help="asymmetric grids (a zero point per group) instead of symmetric")
    p.add_argument("--calib", metavar="TOKENS_DIR|DOCS",
                   help="calibration data: a folder of token shards (train-*.bin), or document shards (*.jsonl.zst); "
                        "default: a sample of the built-in corpus, tokenized with the model's tokenizer")
    p.add_argument("--samples", type=int, default=128, metavar="N", help="calibration sequences (default 128)")
    p.add_argument("--seq-len", type=int, metavar="N", help="calibration sequence length (default the model's context)")
    p.add_argument("--damp", type=float, default=0.01, help="GPTQ damping, share of the mean Hessian diagonal (default 0.01)")
    p.add_argument("--no-act-order", action="store_true", help="GPTQ: quantize columns in their own order")
    p.add_argument("--no-clip", action="store_true", help="AWQ: skip the clipping search")
    p.add_argument("--eval", action="store_true", help="compare every variant: size, perplexity, decoding speed")
    p.add_argument("--val", metavar="TOKENS_DIR", help="token shards with a val split for --eval (default --calib)")
    p.add_argument("--eval-batches", type=int, metavar="N", help="validation batches of 16 windows (default all)")
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from tokenmill.deploy.quant.config import QuantizeConfig
    from tokenmill.deploy.quant.stage import quantize_folder

    try:
        config = QuantizeConfig(
            method=args.method, group_size=args.group_size or None, symmetric=not args.asym, calib_samples=args.samples,
            calib_seq_len=args.seq_len, gptq_damp=args.damp, gptq_act_order=not args.no_act_order,
            awq_clip=not args.no_clip, eval=args.eval, eval_batches=args.eval_batches,
        )
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise TokenmillError(f"invalid quantize options: {problems}") from None
    calib = Path(args.calib) if args.calib else None
    if calib is not None and not calib.exists():
        raise TokenmillError(f"--calib {calib}: no such file or folder")
    val = Path(args.val) if args.val else calib
    metrics = quantize_folder(args.model_dir, args.output, config, calib, val, args.output, args.format)
    json.dump(metrics, sys.stdout, indent=2)
    print()
    return 0
