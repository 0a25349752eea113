"""The `tokenmill pretrain` verb, for one process or for each process under torchrun."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tokenmill.cliargs import add_output, add_overrides
from tokenmill.errors import ConfigError, TokenmillError, validation_problems


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train a model on token shards (one process, or every parallel layout under torchrun)",
        description=(
            "Train a model by next-token prediction on the token shards of `tokenmill encode`: AdamW, warmup and "
            "cosine decay, gradient accumulation, autocast, checkpoints of the full state (torch.distributed."
            "checkpoint) with golden checkpoints and a loss-spike guard. Writes into DIR: checkpoints/, "
            "metrics.jsonl, samples.jsonl, events.jsonl, loss.svg, lr.svg, grad_norm.svg, report.json and model/ (model.json, "
            "model.safetensors and the tokenizer). Under torchrun, pretrain.dp/fsdp/tp/pp choose the layout, "
            "e.g. `torchrun --nproc_per_node 4 -m tokenmill pretrain CONFIG ... --set pretrain.fsdp=2 --set "
            "pretrain.tp=2`. See docs/pretrain.md."
        ),
    )
    p.add_argument("config", metavar="CONFIG", nargs="?",
                   help="YAML file or shipped config name (e.g. quickstart) with a `pretrain` section and, "
                   "unless --model is given, a `model` section")
    p.add_argument("--model", metavar="MODEL_JSON", help="model.json (or a folder holding one) of `tokenmill model`")
    p.add_argument("--init", metavar="MODEL_DIR",
                   help="continue pre-training a model folder (say an imported one): its architecture and weights, "
                        "and its tokenizer unless --tokenizer is given")
    p.add_argument("--tokens", required=True, metavar="DIR", help="token shards written by `tokenmill encode`")
    p.add_argument("--tokenizer", metavar="DIR", help="the tokenizer folder: decodes samples, copied into the model folder")
    add_output(p)
    p.add_argument("--work-dir", metavar="DIR", help="where checkpoints and logs go (default: the output folder)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint (any layout may have written it). A checkpoint folder is "
                        "trusted like code (torch.distributed.checkpoint pickles its metadata): resume only from your "
                        "own; one whose files no longer match the SHA-256 digests written when it was saved is refused")
    add_overrides(p, "override a value, e.g. --set pretrain.lr=3e-4 --set model.n_layers=2 (repeatable)")
    p.set_defaults(func=_cmd_pretrain)


def read_sections(path: str | None, overrides: list[str]) -> dict[str, Any]:
    """The `model` and `pretrain` sections of a YAML run config, with --set overrides applied;
    other sections (other stages') are left alone. The run's top-level seed seeds pre-training."""
    from tokenmill.config import read_config_tree
    from tokenmill.overrides import apply_override, parse_override

    tree = read_config_tree(path)[0] if path is not None else {}
    tree = {k: ({} if v is None else v) for k, v in tree.items()}
    for item in overrides:
        keys, value = parse_override(item)
        if keys[0] not in ("model", "pretrain"):
            raise ConfigError(f"--set {item}: tokenmill pretrain reads the model and pretrain sections only")
        apply_override(tree, keys, value)
    pretrain = dict(tree.get("pretrain") or {})
    if "seed" in tree and "seed" not in pretrain:
        pretrain["seed"] = tree["seed"]
    return {"model": tree.get("model"), "pretrain": pretrain}


def _pretrain_config(fields: dict):
    from tokenmill.pretrain.config import PretrainConfig

    try:
        return PretrainConfig.model_validate(fields)
    except ValidationError as e:
        raise ConfigError("invalid pretrain config: " + "; ".join(validation_problems(e, prefix=("pretrain",)))) from None


def _model_config(args: argparse.Namespace, section: dict | None):
    from tokenmill.model.config import describe_validation_error, read_config
    from tokenmill.model.section import ModelSection

    if args.init:
        if args.model:
            raise TokenmillError("give --init MODEL_DIR or --model MODEL_JSON, not both: --init brings its own model.json")
        return read_config(args.init)
    if args.model:
        return read_config(args.model)
    if section is None:
        raise TokenmillError("no model: give --model MODEL_JSON, or a CONFIG with a model section")
    try:
        model = ModelSection.model_validate(section)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, "(the model section)")) from None
    vocab = None
    if args.tokenizer:
        from tokenmill.tokenizer import Tokenizer

        vocab = Tokenizer.load(args.tokenizer).vocab_size
    return model.resolve(vocab)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from tokenmill.pretrain.loop import train

    sections = read_sections(args.config, args.overrides)
    config = _pretrain_config(sections["pretrain"])
    model_config = _model_config(args, sections["model"])
    output = Path(args.output)
    tokenizer = args.tokenizer or args.init
    report = train(model_config, Path(args.tokens), tokenizer and Path(tokenizer), config,
                   Path(args.work_dir) if args.work_dir else output, output, args.resume, args.init and Path(args.init))
    if os.environ.get("RANK", "0") == "0":
        final = report["final"]
        val = ""
        if final["val_loss"] is not None:
            val = f", validation loss {final['val_loss']:.4f} (perplexity {final['val_ppl']:.1f})"
        print(f"{report['steps']:,} steps, {report['tokens']:,} tokens: train loss {final['train_loss']:.4f}{val}")
        c = report["chinchilla"]
        print(f"{c['tokens_per_param']:.2f} tokens per parameter; compute-optimal for this budget: "
              f"{c['compute_optimal_params']:,} parameters on {c['compute_optimal_tokens']:,} tokens")
        print(f"model folder: {output / 'model'}")
    return 0
