"""Stage 04, the architecture: model.json plus its parameter and FLOP breakdown, before any weight exists."""

from __future__ import annotations

from pathlib import Path

from tokenmill.atomic import write_json, write_text
from tokenmill.model.anatomy import role_totals, roles_chart, tensor_rows
from tokenmill.model.config import config_json
from tokenmill.model.plan import Layout, make_plan
from tokenmill.model.section import ModelSection


def build_model_stage(section: ModelSection, vocab_size: int | None, out_dir: str | Path) -> dict:
    """Write model.json, params.json (parameters per role, FLOPs per token, memory) and params.svg
    into `out_dir`; `vocab_size` is the tokenizer's. Returns the stage's key metrics."""
    out_dir = Path(out_dir)
    config = section.resolve(vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "model.json", config_json(config))
    totals = role_totals(tensor_rows(config))
    plan = make_plan(config, section.preset, Layout())
    write_json(out_dir / "params.json", {
        "preset": section.preset,
        "attention": config.attention_kind,
        "parameters": plan["parameters"],
        "roles": totals,
        "flops_per_token": plan["flops_per_token"],
        "training_memory_one_gpu": plan["training"],
        "serving_memory": plan["serving"],
        "seq_len": plan["seq_len"],
    })
    write_text(out_dir / "params.svg", roles_chart(totals))
    return {
        "params": plan["parameters"]["total"],
        "non_embedding_params": plan["parameters"]["non_embedding"],
        "training_flops_per_token": plan["flops_per_token"]["training"],
        "kv_bytes_per_token": plan["serving"]["kv_per_token"],
        "vocab_size": config.vocab_size,
    }
