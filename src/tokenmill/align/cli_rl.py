"""The `tokenmill ppo` and `tokenmill cai` verbs."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import BaseModel, ValidationError

from tokenmill.align.cli import add_dtype
from tokenmill.cliargs import add_output, add_overrides
from tokenmill.errors import ConfigError, TokenmillError, validation_problems


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ppo",
        help="PPO: optimise the SFT model against a reward model, with a KL penalty to the SFT model",
        description=(
            "Reinforcement learning from a reward model with PPO (Ziegler et al., 2019; Ouyang et al., 2022). "
            "The policy starts as SFT_DIR and a frozen copy of it is the reference; each step samples one "
            "answer per prompt through the KV cache, scores it with the reward model of --rm, pays a per-token "
            "KL penalty to the reference (β fixed, or adapted towards kl_target), estimates advantages by GAE "
            "with a value head on the policy, whitens them and takes a few epochs of clipped policy and value "
            "updates. Writes into DIR: model/ (the policy, a model folder), metrics.jsonl (reward, kl, "
            "entropy, clip_fraction, kl_coef ... per step), reward.svg, kl.svg, kl_coef.svg, policy.svg, samples.jsonl "
            "(held-out answers of SFT and PPO with their scores) and summary.json (with the win rate over the "
            "SFT model as the reward model judges it). See docs/alignment-rl.md."
        ),
    )
    p.add_argument("sft_dir", metavar="SFT_DIR", help="the model folder to start from (e.g. RUN/06_align/sft)")
    p.add_argument("--rm", required=True, metavar="RM_DIR", help="reward model folder written by `tokenmill rm`")
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help="prompts as JSONL/JSON: {'prompt': ...}, {'messages': [...]} ending with a user turn, or Alpaca")
    p.add_argument("--eval-prompts", metavar="FILE",
                   help="held-out prompts for the win rate over SFT (default: eval_prompts held out of --prompts)")
    add_output(p)
    add_dtype(p)
    add_overrides(p, "a PPO setting, e.g. --set steps=40 --set kl_target=4 --set adaptive_kl=false (repeatable)")
    p.set_defaults(func=_cmd_ppo)

    p = sub.add_parser(
        "cai",
        help="constitutional AI: answers critiqued against a constitution and revised, as SFT and preference data",
        description=(
            "Constitutional AI (Bai et al., 2022). For each prompt the model answers, critiques its answer "
            "against a principle drawn from the constitution, and revises it, as one conversation. The model "
            "is MODEL_DIR run in process, or any OpenAI-compatible endpoint (--endpoint: tokenmill serve, "
            "vLLM, a hosted API). The constitution (one principle a line) and the critique and revision "
            "requests are text files you can edit; the defaults are printed by --show-defaults. Writes into "
            "DIR: critiques.jsonl, sft.jsonl (prompt + revision, for `tokenmill sft`), pref.jsonl (revision "
            "chosen over the original answer, for `tokenmill dpo` or `tokenmill rm`), the constitution and "
            "requests used, and summary.json. See docs/alignment-rl.md."
        ),
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", nargs="?", help="model folder to run in process (or give --endpoint)")
    p.add_argument("--prompts", metavar="FILE", help="prompts as JSONL/JSON, in the formats `tokenmill ppo` reads")
    add_output(p, required=False)
    p.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--endpoint-model", metavar="NAME", help="the model name the endpoint serves")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable that holds the endpoint's API key")
    p.add_argument("--constitution", metavar="FILE", help="principles, one a line (# starts a comment)")
    p.add_argument("--critique-prompt", metavar="FILE", help="the critique request; may use {principle}, {prompt}, {answer}")
    p.add_argument("--revision-prompt", metavar="FILE", help="the revision request; may also use {critique}")
    p.add_argument("--show-defaults", action="store_true", help="print the shipped constitution and requests, and exit")
    add_overrides(p, "a setting, e.g. --set max_prompts=100 --set temperature=0.9 --set endpoint.concurrency=16")
    p.set_defaults(func=_cmd_cai)


def section(cls: type[BaseModel], name: str, fields: dict, overrides: list[str]) -> BaseModel:
    """`cls` from `fields` with --set KEY=VALUE overrides; errors name the key as `name.KEY`."""
    from tokenmill.overrides import apply_override, parse_override

    fields = dict(fields)
    for item in overrides:
        keys, value = parse_override(item)
        if keys[0] == name and len(keys) > 1:  # `--set ppo.lr=...` reads as well as `--set lr=...`
            keys = keys[1:]
        apply_override(fields, keys, value)
    try:
        return cls.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(f"invalid {name} settings: " + "; ".join(validation_problems(e, prefix=(name,)))) from None


def _cmd_ppo(args: argparse.Namespace) -> int:
    from tokenmill.align.data import load_prompts
    from tokenmill.align.ppo import PpoConfig, train_ppo

    fields = {} if args.dtype is None else {"dtype": args.dtype}
    if args.lora_rank is not None:
        fields["lora"] = {"rank": args.lora_rank}
    config = section(PpoConfig, "ppo", fields, args.overrides)
    held = load_prompts(args.eval_prompts) if args.eval_prompts else None
    summary = train_ppo(config, Path(args.sft_dir), Path(args.rm), load_prompts(args.prompts), Path(args.output), held)
    print(f"{summary['steps']} PPO steps in {summary['seconds']:.1f} s: reward {summary['reward_first_quarter']:.3f} "
          f"(first quarter) -> {summary['reward_last_quarter']:.3f} (last quarter), KL at most {summary['kl_max']:.2f} "
          f"nats per answer (target {summary['kl_target']:g})")
    if "win_rate_vs_sft" in summary:
        print(f"held-out: reward-model score {summary['eval_reward_sft']:.3f} (SFT) -> {summary['eval_reward_ppo']:.3f} "
              f"(PPO), win rate over SFT {summary['win_rate_vs_sft']:.2f}")
    print(f"policy: {Path(args.output) / 'model'}")
    return 0


def _cmd_cai(args: argparse.Namespace) -> int:
    from tokenmill.align.cai import DEFAULTS, CaiConfig, run_cai
    from tokenmill.align.data import load_prompts

    if args.show_defaults:
        for name in ("constitution.txt", "critique.txt", "revision.txt"):
            print(f"--- {DEFAULTS / name}\n{(DEFAULTS / name).read_text(encoding='utf-8')}")
        return 0
    if not args.prompts or not args.output:
        raise TokenmillError("tokenmill cai needs --prompts FILE and --output DIR")
    fields: dict = {k: v for k, v in (("constitution", args.constitution), ("critique_prompt", args.critique_prompt),
                                      ("revision_prompt", args.revision_prompt)) if v}
    if args.endpoint:
        if not args.endpoint_model:
            raise TokenmillError("--endpoint needs --endpoint-model: the name of the model the endpoint serves")
        fields["endpoint"] = {"base_url": args.endpoint, "model": args.endpoint_model, "api_key_env": args.api_key_env}
    elif not args.model_dir:
        raise TokenmillError("give a MODEL_DIR to run in process, or --endpoint URL --endpoint-model NAME")
    config = section(CaiConfig, "cai", fields, args.overrides)
    out = Path(args.output)
    summary = run_cai(config, args.model_dir and Path(args.model_dir), load_prompts(args.prompts), out)
    print(f"{summary['prompts']} prompts with {summary['model']} in {summary['seconds']:.1f} s: "
          f"{summary['critiques']} critiques, {summary['revisions']} revisions, {summary['preference_pairs']} "
          f"preference pairs; skipped {summary['skipped'] or 'none'}")
    print(f"files: {out / 'critiques.jsonl'}, {out / 'sft.jsonl'}, {out / 'pref.jsonl'}")
    return 0
