"""tokenmill's reward model against TRL's RewardTrainer, step by step, on the same pairs.

Both start from the same weights (the model folder, exported for transformers as
`tokenmill convert --to hf` does), see the same token ids (tokenmill's chat template, cut to
the same length), in batches of the same size, with the same AdamW settings and the same
schedule (linear warmup, cosine to 10% of the peak); only the scalar head's random start
differs. The loss of each step and the held-out pairwise accuracy every `--eval-every` steps
are printed side by side, then one JSON line:

    python benchmarks/reward_trl.py RUN/06_align/sft --pairs RUN/06_align/data/pref_train.jsonl \\
        [--train 400] [--eval 200] [--lr 1e-3] [--epochs 2] [--batch-size 16]

`--pairs` takes any preference file `tokenmill rm` reads (HH-RLHF transcripts included).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

from tokenmill.align.config import RewardConfig
from tokenmill.align.data import load_preferences
from tokenmill.align.packing import encode_preferences
from tokenmill.align.reward import train_reward_model
from tokenmill.model.hf import export_hf
from tokenmill.model.io import load_model
from tokenmill.tokenizer import Tokenizer


def run_tokenmill(config: RewardConfig, model_dir: Path, train: list, held: list, out: Path) -> tuple[list[float], dict[int, float]]:
    train_reward_model(config, model_dir, train, held, out)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in metrics], {m["step"]: m["eval_accuracy"] for m in metrics if "eval_accuracy" in m}


def run_trl(config: RewardConfig, model_dir: Path, train: list, held: list, seq_len: int, out: Path
            ) -> tuple[list[float], dict[int, float]]:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig as TrlRewardConfig
    from trl import RewardTrainer

    tokenizer = Tokenizer.load(model_dir)
    export_hf(model_dir, out / "hf")

    def dataset(prefs: list) -> Dataset:
        pairs, _ = encode_preferences(tokenizer, prefs, seq_len)
        return Dataset.from_list([{"chosen_ids": c[0], "rejected_ids": r[0]} for c, r in pairs])

    torch.manual_seed(config.seed)
    model = AutoModelForSequenceClassification.from_pretrained(out / "hf", num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_id
    steps_per_epoch = -(-len(train) // config.batch_size)
    args = TrlRewardConfig(
        output_dir=str(out / "trl"), learning_rate=config.lr, num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        warmup_steps=config.warmup_steps, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio}, weight_decay=config.weight_decay,
        adam_beta1=config.betas[0], adam_beta2=config.betas[1], adam_epsilon=config.eps,
        max_grad_norm=config.grad_clip, eval_strategy="steps", eval_steps=config.eval_every, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, seed=config.seed, max_length=seq_len,
        center_rewards_coefficient=config.center_rewards, dataloader_drop_last=False,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset(train), eval_dataset=dataset(held),
                            processing_class=AutoTokenizer.from_pretrained(out / "hf"))
    trainer.train()
    final = trainer.evaluate()
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h and "step" in h][: round(config.epochs * steps_per_epoch)]
    accuracy = {h["step"]: h["eval_accuracy"] for h in history if "eval_accuracy" in h}
    accuracy[trainer.state.global_step] = final["eval_accuracy"]
    return losses, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="the model folder both start from (e.g. RUN/06_align/sft)")
    parser.add_argument("--pairs", type=Path, required=True, help="preference pairs (JSONL)")
    parser.add_argument("--train", type=int, default=400, help="training pairs")
    parser.add_argument("--eval", type=int, default=200, help="held-out pairs")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    prefs = load_preferences(args.pairs)
    random.Random(args.seed).shuffle(prefs)
    held, train = prefs[: args.eval], prefs[args.eval : args.eval + args.train]
    config = RewardConfig(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, eval_every=args.eval_every,
                          seed=args.seed, device="cpu", group_by_length=False)
    seq_len = load_model(args.model_dir).config.context_length
    with tempfile.TemporaryDirectory() as tmp:
        tm_loss, tm_acc = run_tokenmill(config, args.model_dir, train, held, Path(tmp) / "tokenmill")
        trl_loss, trl_acc = run_trl(config, args.model_dir, train, held, seq_len, Path(tmp))

    print(f"{'step':>5} {'tokenmill loss':>15} {'TRL loss':>9} {'tokenmill acc':>14} {'TRL acc':>8}")
    for step in range(1, max(len(tm_loss), len(trl_loss)) + 1):
        row = [tm_loss[step - 1] if step <= len(tm_loss) else None, trl_loss[step - 1] if step <= len(trl_loss) else None]
        accs = [tm_acc.get(step), trl_acc.get(step)]
        if step % args.eval_every == 0 or step == 1 or any(a is not None for a in accs):
            cells = [f"{v:15.4f}" if v is not None else " " * 15 for v in row[:1]]
            cells += [f"{row[1]:9.4f}" if row[1] is not None else " " * 9]
            cells += [f"{accs[0]:14.3f}" if accs[0] is not None else " " * 14, f"{accs[1]:8.3f}" if accs[1] is not None else ""]
            print(f"{step:5d} " + " ".join(cells))
    print(json.dumps({
        "train_pairs": len(train), "eval_pairs": len(held), "lr": args.lr, "epochs": args.epochs,
        "tokenmill_eval_accuracy": tm_acc[max(tm_acc)], "trl_eval_accuracy": trl_acc[max(trl_acc)],
        "tokenmill_final_loss": sum(tm_loss[-5:]) / len(tm_loss[-5:]), "trl_final_loss": sum(trl_loss[-5:]) / len(trl_loss[-5:]),
    }))


if __name__ == "__main__":
    main()
