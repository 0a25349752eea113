"""The `tokenmill sft`, `tokenmill rm` and `tokenmill dpo` verbs."""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

from pydantic import BaseModel, ValidationError

from tokenmill.cliargs import add_output, add_overrides
from tokenmill.errors import ConfigError, validation_problems

VERBS = {
    "sft": (
        "supervised fine-tuning on conversations (loss on assistant tokens only)",
        "Fine-tune a model folder on conversations: the pre-training cross-entropy on the assistant's tokens only "
        "(system, user and template tokens are context), every assistant turn of a multi-turn conversation trained, "
        "short conversations packed into full rows with attention and positions reset per conversation. DATA files "
        "are Alpaca JSON/JSONL, ShareGPT, OpenAI `messages` or prompt/completion records. Writes into OUT a model "
        "folder (model.json, model.safetensors, tokenizer files) with metrics.jsonl, loss.svg, accuracy.svg and "
        "summary.json (held-out loss, token accuracy, sample answers). See docs/alignment.md.",
    ),
    "rm": (
        "train a reward model on preference pairs (Bradley-Terry)",
        "Train a reward model from a (usually SFT) model folder: the LM head set aside, a scalar head read at the "
        "last token, the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected). DATA files hold preference triples "
        "(prompt, chosen, rejected) as text or messages, or HH-RLHF `chosen`/`rejected` transcripts. Writes into "
        "OUT the reward model folder (the backbone as a model folder plus reward_head.safetensors) with "
        "metrics.jsonl, loss.svg, accuracy.svg and summary.json (held-out pairwise accuracy). See docs/alignment.md.",
    ),
    "dpo": (
        "direct preference optimisation (DPO or IPO) against a frozen reference",
        "Train a (usually SFT) model folder on preference pairs with DPO: the implicit reward beta * log(pi/pi_ref) "
        "against a frozen copy of the starting model (or its log-probabilities precomputed, --set "
        "precompute_ref=true), the sigmoid loss or IPO (--set loss=ipo), beta 0.1 by default. DATA files as for "
        "`tokenmill rm`. Writes into OUT a model folder with metrics.jsonl (loss, implicit rewards, margins, "
        "accuracy), loss.svg, rewards.svg, accuracy.svg and summary.json (held-out preference accuracy). "
        "See docs/alignment.md.",
    ),
}


def register(sub: argparse._SubParsersAction) -> None:
    for verb, (help_text, description) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=description)
        p.add_argument("model", metavar="MODEL_DIR", help="model folder to start from (with its tokenizer files)")
        p.add_argument("--train", required=True, metavar="DATA", help="training data file (JSON, JSONL, .gz or .zst)")
        p.add_argument("--eval", metavar="DATA", help="held-out data file (default: --eval-fraction of --train)")
        p.add_argument("--eval-fraction", type=float, default=0.05, metavar="F",
                       help="share of --train held out when --eval is not given (default 0.05)")
        add_output(p, "folder to write (replaced when it exists)", metavar="OUT")
        add_dtype(p)
        add_overrides(p, f"override a {verb} setting, e.g. --set lr=3e-4 --set steps=100 (repeatable)")
        p.set_defaults(func=_run, verb=verb)


def add_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["fp32", "bf16"],
                   help="the weights' dtype in training (the `dtype` setting): bf16 halves the memory of a large open model")
    p.add_argument("--lora-rank", type=int, metavar="R",
                   help="train low-rank adapters of rank R instead of every weight (the `lora` setting; "
                   "--set lora.alpha=..., lora.dropout=..., lora.targets=[...] for the rest), merged when saved")


def make_config(cls: type[BaseModel], overrides: list[str], verb: str, dtype: str | None = None,
                lora_rank: int | None = None) -> BaseModel:
    from tokenmill.overrides import apply_override, parse_override

    fields: dict = {} if dtype is None else {"dtype": dtype}
    if lora_rank is not None:
        fields["lora"] = {"rank": lora_rank}
    for item in overrides:
        keys, value = parse_override(item)
        if keys[0] == verb and len(keys) > 1:  # `--set sft.lr=...` reads the same
            keys = keys[1:]
        apply_override(fields, keys, value)  # `--set lora.rank=16` sets a nested setting
    try:
        return cls.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(f"tokenmill {verb}: " + "; ".join(validation_problems(e, "setting"))) from None


def split_held_out(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded share of `records` held out (at least one, when there are two or more)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--eval-fraction must lie between 0 and 1, got {fraction}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n = min(max(1, round(fraction * len(records))), len(records) - 1)
    held = set(order[:n])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def _run(args: argparse.Namespace) -> int:
    from tokenmill.align.data import load_conversations, load_preferences

    if args.verb == "sft":
        from tokenmill.align.sft import SftConfig as config_class
        from tokenmill.align.sft import train_sft as train
        load = load_conversations
    elif args.verb == "rm":
        from tokenmill.align.reward import RewardConfig as config_class
        from tokenmill.align.reward import train_reward_model as train
        load = load_preferences
    else:
        from tokenmill.align.dpo import DpoConfig as config_class
        from tokenmill.align.dpo import train_dpo as train
        load = load_preferences
    config = make_config(config_class, args.overrides, args.verb, args.dtype, args.lora_rank)
    records = load(args.train)
    if args.eval:
        train_set, eval_set = records, load(args.eval)
    else:
        train_set, eval_set = split_held_out(records, args.eval_fraction, config.seed)
    try:
        summary = train(config, Path(args.model), train_set, eval_set, Path(args.output))
    finally:
        end_processes()
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, every process trained the same replica
        print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2))
    return 0


def end_processes() -> None:
    """Leave torchrun's process group, when training joined one."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
