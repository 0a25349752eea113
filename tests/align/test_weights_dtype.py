"""`--dtype bf16`: every alignment method trains in bfloat16 weights (half the memory of an open
model) and writes a bfloat16 model folder; fp32, the default, stays fp32."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from rl_helpers import load_tokenizer, model_folder, tiny_model, train_tiny_tokenizer
from safetensors.torch import load_file
from test_dpo import PREFS
from test_sft import CONVERSATIONS

from tokenmill.align.data import conversation_record, preference_record, write_jsonl
from tokenmill.align.ppo import PpoConfig, train_ppo
from tokenmill.align.reward import RewardModel, save_reward_model

pytestmark = pytest.mark.usefixtures("one_thread")


def run_verb(*argv: str) -> int:
    from tokenmill.align.cli import register

    parser = argparse.ArgumentParser(prog="tokenmill")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def dtypes(folder) -> set[torch.dtype]:
    return {t.dtype for t in load_file(folder / "model.safetensors").values()}


@pytest.mark.parametrize("verb", ["sft", "rm", "dpo"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_alignment_verbs_train_in_the_dtype_asked_for(verb, dtype, model_dir, tmp_path):
    records = [conversation_record(c) for c in CONVERSATIONS * 2] if verb == "sft" else [preference_record(p) for p in PREFS * 3]
    write_jsonl(tmp_path / "train.jsonl", records)
    out = tmp_path / "out"
    assert run_verb(verb, str(model_dir), "--train", str(tmp_path / "train.jsonl"), "-o", str(out), "--dtype", dtype,
                    "--set", "steps=2", "--set", "batch_size=2", "--set", "lr=1e-2", "--set", "device=cpu",
                    *(["--set", "samples=0"] if verb == "sft" else [])) == 0
    assert dtypes(out) == {torch.bfloat16 if dtype == "bf16" else torch.float32}
    if verb == "rm":
        assert {t.dtype for t in load_file(out / "reward_head.safetensors").values()} == dtypes(out)
    before, after = load_file(model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k].to(after[k].dtype), after[k]) for k in before)  # it trained
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_ppo_trains_in_the_dtype_asked_for(dtype, tmp_path):
    tokenizer_dir = train_tiny_tokenizer(tmp_path / "tok")
    vocab = load_tokenizer(tokenizer_dir).vocab_size
    sft_dir = model_folder(tiny_model(vocab, context_length=64), tokenizer_dir, tmp_path / "sft")
    save_reward_model(RewardModel(tiny_model(vocab, context_length=64, seed=5)), tmp_path / "rm", tokenizer_dir)
    prompts = [[{"role": "user", "content": f"What does the {w} statement do?"}] for w in ("if", "for", "with", "try")] * 3
    config = PpoConfig(steps=1, batch_size=4, minibatch_size=2, max_new_tokens=4, eval_prompts=2, device="cpu", dtype=dtype)
    train_ppo(config, sft_dir, tmp_path / "rm", prompts, tmp_path / "ppo")
    assert dtypes(tmp_path / "ppo") == {torch.bfloat16 if dtype == "bf16" else torch.float32}
