"""Stage 08, part I, for the run pipeline and the CLI: quantize a model folder, and measure what it cost."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from tokenmill.atomic import write_json, write_text
from tokenmill.deploy.quant.calib import builtin_calibration_ids, calibration_ids
from tokenmill.deploy.quant.config import QuantizeConfig
from tokenmill.deploy.quant.evaluate import VARIANTS, compare, folder_bytes, layer_bytes, report_charts
from tokenmill.deploy.quant.quantize import CALIBRATED, quantize_model, scheme_for
from tokenmill.deploy.quant.save import save_quantized
from tokenmill.errors import TokenmillError
from tokenmill.figures import bar_chart
from tokenmill.model.config import read_config
from tokenmill.model.io import WEIGHTS, copy_tokenizer, load_model
from tokenmill.model.transformer import Transformer

ROW_OF_METHOD = {method: row for row, method in VARIANTS.items() if method is not None}


def method_settings(config: QuantizeConfig) -> dict:
    """quantize_model's keyword arguments from the config section."""
    return {
        "batch_size": config.batch_size,
        "gptq_block_size": config.gptq_block_size,
        "gptq_damp": config.gptq_damp,
        "gptq_act_order": config.gptq_act_order,
        "awq_grid": config.awq_grid,
        "awq_clip": config.awq_clip,
    }


def quantize_folder(
    model_dir: str | Path, out_model: str | Path, config: QuantizeConfig, calib: str | Path | None,
    val_dir: str | Path | None, report_dir: str | Path, fmt: str = "tokenmill",
) -> dict:
    """Quantize `model_dir` into the model folder `out_model` by `config.method`, calibrating on `calib`
    (token shards or documents; None: a sample of the built-in corpus) for GPTQ and AWQ; with `config.eval`, compare every variant on the
    validation split of `val_dir` and write eval.json and charts into `report_dir`. `fmt` is what
    `out_model` becomes: a tokenmill model folder, a folder with model.gguf, or a transformers GPTQ
    checkpoint (see save_as). Returns the key metrics."""
    model_dir, out_model, report_dir = Path(model_dir), Path(out_model), Path(report_dir)
    if not (model_dir / WEIGHTS).is_file():
        raise TokenmillError(f"{model_dir} is not a model folder with weights ({WEIGHTS} is missing)")
    if (model_dir / "quantization.json").is_file():
        raise TokenmillError(f"{model_dir} is already quantized; quantize the full-precision model")
    model = load_model(model_dir, dtype=torch.float32)
    seq_len = config.calib_seq_len or min(model.config.context_length, 2048)
    calib_ids, calibration = None, None
    if config.method in CALIBRATED or config.eval:
        if calib is None:
            calib_ids, calibration = builtin_calibration_ids(config.calib_samples, seq_len, config.seed, model_dir)
        else:
            calib_ids = calibration_ids(calib, config.calib_samples, seq_len, config.seed, model_dir)
            calibration = {"source": str(calib), "samples": len(calib_ids), "seq_len": seq_len, "tokens": calib_ids.numel()}
        calibration["seed"] = config.seed
        print(f"calibration: {calibration['samples']} samples of {seq_len} tokens ({calibration['tokens']:,} tokens) "
              f"from {calibration['source']}", file=sys.stderr)
    scheme = scheme_for(config.method, config.group_size, config.symmetric)
    progress = partial(tqdm, desc=f"{config.method} blocks", file=sys.stderr, leave=False)
    info = quantize_model(model, config.method, scheme, calib_ids if config.method in CALIBRATED else None,
                          progress=progress, **method_settings(config))
    if config.method in CALIBRATED:
        info["calibration"] = calibration
    weights = save_as(fmt, model, info, model_dir, out_model)
    stored, fp32 = layer_bytes(model)
    metrics = {
        "method": config.method,
        "bits": scheme.bits,
        "group_size": scheme.group_size,
        "file_bytes": weights.stat().st_size,
        "source_file_bytes": folder_bytes(model_dir),
        "layer_compression": fp32 / stored,
    }
    if config.method in CALIBRATED:
        metrics["calibration"] = calibration
    report_dir.mkdir(parents=True, exist_ok=True)
    chart = method_chart(info)
    if chart is not None:
        write_text(report_dir / "layers.svg", chart)
    del model
    if config.eval:
        if val_dir is None:
            raise TokenmillError("--eval needs a validation split: token shards with val-*.bin (--calib or --val)")
        from tokenmill.tokenizer.dataset import TokenDataset

        val = TokenDataset(val_dir, "val", seq_len=read_config(model_dir).context_length)
        rows = compare(model_dir, val, calib_ids, {"group_size": config.group_size, "symmetric": config.symmetric,
                       **method_settings(config)}, done={ROW_OF_METHOD[config.method]: out_model} if fmt == "tokenmill" else {},
                       decode_tokens=config.decode_tokens, eval_batch_size=config.eval_batch_size,
                       eval_batches=config.eval_batches, log=lambda line: print(line, file=sys.stderr))
        write_json(report_dir / "eval.json", rows)
        for name, svg in report_charts(rows).items():
            write_text(report_dir / name, svg)
        row = rows[ROW_OF_METHOD[config.method]]
        metrics.update({"fp32_perplexity": rows["fp32"]["perplexity"], "perplexity": row["perplexity"],
                        "perplexity_change": row["perplexity_change"],
                        **{k: v for k, v in row.items() if k.startswith("decode_")}})
    return metrics


def save_as(fmt: str, model: Transformer, info: dict, model_dir: Path, out_model: Path) -> Path:
    """Write the quantized model as a tokenmill folder, model.gguf in a folder, or a transformers GPTQ
    checkpoint. Returns the file that holds the weights."""
    if fmt == "tokenmill":
        save_quantized(model, out_model, info)
        copy_tokenizer(model_dir, out_model)
        return out_model / WEIGHTS
    if fmt == "gguf":
        try:
            from tokenmill.deploy.quant.export_gguf import write_gguf
        except ImportError:
            raise TokenmillError("--format gguf needs the gguf package: pip install 'tokenmill[gguf]'") from None
        return write_gguf(model, model_dir, out_model / "model.gguf", model_dir.resolve().name)
    if fmt == "gptq":
        from tokenmill.deploy.quant.export_gptq import write_hf_gptq

        write_hf_gptq(model, model_dir, out_model)
        return out_model / WEIGHTS
    raise TokenmillError(f"unknown output format '{fmt}'; choose tokenmill, gguf or gptq")


def method_chart(info: dict) -> str | None:
    """GPTQ's estimated output error per layer, or AWQ's block output error against RTN's per scaling group."""
    if info["method"] == "gptq":
        rows = [(name.removeprefix("layers."), r["loss"], f"{r['loss']:.3g}") for name, r in info["layers"].items()]
        return bar_chart("GPTQ: estimated output error per layer", rows, "estimated squared output error (GPTQ's objective)")
    if info["method"] == "awq":
        rows = [(name.removeprefix("layers."), r["awq_error"] / r["rtn_error"] if r["rtn_error"] else 1.0,
                 f"α={r['alpha']:.2f}, {r['awq_error'] / r['rtn_error']:.2f}× RTN" if r["rtn_error"] else "exact")
                for name, r in info["groups"].items()]
        return bar_chart("AWQ: block output error, as a share of RTN's", rows, "output error / RTN's output error")
    return None


def quantize_stage(model_dir: str | Path, tokens_dir: str | Path, config: QuantizeConfig, out_dir: str | Path) -> dict:
    """The pipeline's stage: `out_dir/model` is the quantized model folder; `out_dir` gets eval.json
    and its charts (with config.eval) and layers.svg (GPTQ, AWQ). Calibration and validation come
    from the token shards of `tokens_dir`."""
    out_dir = Path(out_dir)
    return quantize_folder(model_dir, out_dir / "model", config, tokens_dir, tokens_dir, out_dir)
