"""Stage 05 for the run pipeline: pre-train the model of stage 04 on the token shards of stage 03."""

from __future__ import annotations

from pathlib import Path

from tokenmill.model.config import read_config
from tokenmill.pretrain.config import PretrainConfig
from tokenmill.pretrain.loop import train


def pretrain_stage(
    model_json: Path,
    tokens_dir: Path,
    tokenizer_dir: Path | None,
    config: PretrainConfig,
    out_dir: Path,
    work_dir: Path,
    resume: bool,
) -> dict:
    """Train; checkpoints and logs go to `work_dir` (which should outlive a killed run, so that
    `resume` continues it), and `out_dir` gets model/ (model.json, model.safetensors, tokenizer
    files), metrics.jsonl, samples.jsonl, events.jsonl, loss.svg, lr.svg, grad_norm.svg and report.json.
    Returns the key metrics."""
    report = train(read_config(model_json), Path(tokens_dir), tokenizer_dir, config, Path(work_dir), Path(out_dir), resume)
    final, speed = report.get("final", {}), report.get("throughput", {})
    return {
        "params": report.get("params"),
        "steps": report.get("steps"),
        "tokens": report.get("tokens"),
        "train_loss": final.get("train_loss"),
        "val_loss": final.get("val_loss"),
        "val_ppl": final.get("val_ppl"),
        "unigram_entropy": report.get("baselines", {}).get("unigram_entropy"),
        "tokens_per_s": speed.get("tokens_per_s"),
        "mfu": speed.get("mfu"),
        "tokens_per_param": report.get("chinchilla", {}).get("tokens_per_param"),
        "rollbacks": report.get("spikes", {}).get("rollbacks"),
    }
