"""Stage 06 for the run pipeline: SFT on the pre-trained model, then the reward model, DPO, PPO and
constitutional AI, and the figures that say whether it worked: the reward model's held-out
accuracy, DPO's held-out preference accuracy, and how often the reward model prefers DPO's and
PPO's answers to SFT's on held-out prompts."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch

from tokenmill.align.cai import run_cai
from tokenmill.align.config import AlignConfig
from tokenmill.align.data import encode_prompts, load_conversations, load_preferences, load_prompts
from tokenmill.align.dpo import train_dpo
from tokenmill.align.ppo import train_ppo
from tokenmill.align.reward import load_reward_model, train_reward_model
from tokenmill.align.sft import train_sft
from tokenmill.align.winrate import sample_and_score, win_rate
from tokenmill.atomic import atomic_open, write_json
from tokenmill.compression import TRUNCATION_ERRORS, open_binary
from tokenmill.device import pick_device
from tokenmill.errors import TokenmillError
from tokenmill.model.io import load_model
from tokenmill.pretrain.distributed import init_data_parallel
from tokenmill.sources.document import SkipLog
from tokenmill.tokenizer import Tokenizer

SETS = ("sft_train", "sft_eval", "pref_train", "pref_eval", "prompts_train", "prompts_eval")


def prepare_data(config: AlignConfig, shard_dirs: list[Path], data_dir: Path) -> dict:
    """The six data files in `data_dir`: the user's where given, the rest built from the corpus."""
    from tokenmill.align.builtin import build_builtin_sets

    given = config.data.given()
    stats = {"given": given}
    if len(given) < len(SETS):
        stats["builtin"] = build_builtin_sets(shard_dirs, data_dir, config.builtin)
    for name, path in given.items():
        # A decompressed copy, so that the run folder holds what this run was trained on.
        try:
            with open_binary(path) as src, atomic_open(data_dir / f"{name}.jsonl") as dst:
                shutil.copyfileobj(src, dst)
        except TRUNCATION_ERRORS as e:
            raise TokenmillError(f"align.data.{name}: {path} is truncated or corrupt: {e}") from None
    return stats


def dpo_win_rate(config: AlignConfig, out_dir: Path, prompts: list[list[dict]]) -> dict:
    """How often the reward model scores DPO's answer above SFT's on the same held-out prompt (ties
    half), sampled exactly as train_ppo samples its own win rate: the same prompts, settings and seed."""
    device = pick_device(config.ppo.device)
    tokenizer = Tokenizer.load(out_dir / "sft")
    reward_model = load_reward_model(out_dir / "rm", device=device)
    settings = config.ppo
    room = reward_model.backbone.config.context_length - settings.max_new_tokens
    ids = encode_prompts(tokenizer, prompts, room)[0][: settings.eval_prompts]

    def score(name: str):
        model = load_model(out_dir / name, device=device, dtype=torch.float32).eval()
        return sample_and_score(model, reward_model, tokenizer, ids, settings.max_new_tokens,
                                settings.temperature, seed=settings.seed)

    sft, dpo = score("sft"), score("dpo")
    return {"win_rate_prompts": len(ids), "sft_mean_reward": float(sft.scores.mean()),
            "dpo_win_rate": win_rate(dpo.scores, sft.scores), "dpo_mean_reward": float(dpo.scores.mean())}


def align_stage(config: AlignConfig, pretrained_dir: Path, shard_dirs: list[Path], out_dir: Path) -> dict:
    """Run SFT and `config.methods` from the model folder `pretrained_dir` into `out_dir` (one folder
    per method, see docs/alignment.md); write summary.json and return its key figures."""
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, **kwargs) -> dict:
        print(f"  06 {name}", file=sys.stderr)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 1)
        return result

    # Under torchrun the first process builds the data; SFT, RM and DPO run on every process
    # (data-parallel), the rest on the first alone, which writes summary.json.
    d = init_data_parallel(config.sft.device)
    data_dir = out_dir / "data"
    if d.is_main:
        data_dir.mkdir(parents=True)
        data = timed("data", prepare_data, config, shard_dirs, data_dir)
    d.barrier()
    skips = SkipLog()
    loaded: dict[str, list] = {}

    def load(loader, name: str) -> list:
        # Each file read once: several methods share a set, and a bad record is counted once.
        if name not in loaded:
            loaded[name] = loader(data_dir / f"{name}.jsonl", skips)
        return loaded[name]

    def conversations(name: str):
        return load(load_conversations, name)

    def preferences(name: str):
        return load(load_preferences, name)

    def prompts(name: str):
        return load(load_prompts, name)

    summaries = {"sft": timed("sft", train_sft, config.sft, pretrained_dir, conversations("sft_train"),
                              conversations("sft_eval"), out_dir / "sft")}
    sft_dir = out_dir / "sft"
    if "rm" in config.methods:
        summaries["rm"] = timed("rm", train_reward_model, config.rm, sft_dir, preferences("pref_train"),
                                preferences("pref_eval"), out_dir / "rm")
    if "dpo" in config.methods:
        summaries["dpo"] = timed("dpo", train_dpo, config.dpo, sft_dir, preferences("pref_train"),
                                 preferences("pref_eval"), out_dir / "dpo")
    if not d.is_main:
        return {}
    if "ppo" in config.methods:
        summaries["ppo"] = timed("ppo", train_ppo, config.ppo, sft_dir, out_dir / "rm", prompts("prompts_train"),
                                 out_dir / "ppo", eval_prompts=prompts("prompts_eval"))
    if "cai" in config.methods:
        # The model that goes on to deployment critiques and revises its own answers.
        summaries["cai"] = timed("cai", run_cai, config.cai, out_dir / config.deploy, prompts("prompts_eval"),
                                 out_dir / "cai")
    wins = {}
    if "ppo" in config.methods and "win_rate_vs_sft" in summaries["ppo"]:  # PPO measures it as it ends
        ppo = summaries["ppo"]
        wins.update({"win_rate_prompts": ppo["prompts_eval"], "sft_mean_reward": ppo["eval_reward_sft"],
                     "ppo_win_rate": ppo["win_rate_vs_sft"], "ppo_mean_reward": ppo["eval_reward_ppo"]})
    if {"rm", "dpo"} <= set(config.methods):
        wins.update(timed("dpo win rate", dpo_win_rate, config, out_dir, prompts("prompts_eval")))

    metrics = {
        "deploy": config.deploy,
        "sft_eval_loss": summaries["sft"].get("eval_loss"),
        "rm_accuracy": summaries.get("rm", {}).get("eval_accuracy"),
        "dpo_accuracy": summaries.get("dpo", {}).get("eval_accuracy"),
        "dpo_margin": summaries.get("dpo", {}).get("eval_margin"),
        "ppo_kl": summaries.get("ppo", {}).get("kl_mean"),
        **wins,
        "seconds": timings,
        "skipped_records": skips.summary()["skipped_total"],
    }
    write_json(out_dir / "summary.json", {**metrics, "data": data, "skips": skips.summary(), "methods": summaries})
    return metrics
