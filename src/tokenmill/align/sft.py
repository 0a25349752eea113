"""Supervised fine-tuning: the pre-training cross-entropy, on the assistant's tokens only.

    loss = − Σ_t m_t log p(x_t | x_<t) / Σ_t m_t,   m_t = 1 on assistant content and its <|end|>

System, user and template tokens are context, never targets (the chat template's loss mask,
`tokenmill.tokenizer.chat`); every assistant turn of a multi-turn conversation is trained.
Short conversations are packed into full rows without cross-contamination (packing.py), so the
loss of a packed batch is the loss of the same conversations padded one a row.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tokenmill.align.config import SftConfig
from tokenmill.align.data import Conversation
from tokenmill.align.logprobs import labelled_logits
from tokenmill.align.packing import Batch, Example, make_batches, truncate
from tokenmill.align.train import amp, held_out, load_for_training, optimize, output_dir, write_charts
from tokenmill.atomic import write_json
from tokenmill.model.generate import fit_context, generate
from tokenmill.model.io import copy_tokenizer, save_model
from tokenmill.model.lora import merge_lora
from tokenmill.model.transformer import Transformer
from tokenmill.tokenizer import Tokenizer


def sft_loss(model: Transformer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the batch's target tokens, and the share of them predicted exactly."""
    logits, targets, _ = labelled_logits(model, batch.input_ids, batch.loss_mask, batch.segment_ids, batch.labels)
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return F.cross_entropy(logits.float(), targets), accuracy


def encode_conversations(tokenizer: Tokenizer, conversations: list[Conversation], seq_len: int) -> tuple[list[Example], dict]:
    encoded = [tokenizer.encode_chat(c.messages) for c in conversations]
    examples, truncated, dropped = truncate([(e.ids, e.loss_mask) for e in encoded], seq_len)
    return examples, {"conversations": len(conversations), "truncated": truncated, "dropped": dropped}


def held_out_figures(model: Transformer, batches: list[Batch], device: torch.device) -> dict[str, float]:
    """Token-weighted held-out loss and next-token accuracy on the assistant tokens."""
    total = correct = n = 0.0
    for batch in batches:
        batch = batch.to(device)
        logits, targets, _ = labelled_logits(model, batch.input_ids, batch.loss_mask, batch.segment_ids)
        total += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        correct += (logits.argmax(-1) == targets).sum().item()
        n += targets.numel()
    return {"eval_loss": total / max(n, 1), "eval_token_accuracy": correct / max(n, 1)}


def sample_answers(model: Transformer, tokenizer: Tokenizer, conversations: list[Conversation], config: SftConfig, device) -> list[dict]:
    """Greedy answers to the first user turns of held-out conversations, beside the reference."""
    out = []
    for c in conversations[: config.samples]:
        prompt = c.messages[: next(i for i, m in enumerate(c.messages) if m["role"] == "assistant")]
        ids = tokenizer.encode_chat(prompt, add_generation_prompt=True).ids
        ids, n_tokens = fit_context(ids, config.sample_tokens, model.config.context_length)
        with amp(config, device):
            answer = generate(model, [ids], n_tokens, temperature=0, stop_ids={tokenizer.end_id})
        new = answer.response_ids(0, strip_stop=True)
        reference = c.messages[len(prompt)]["content"]
        out.append({"prompt": prompt[-1]["content"], "answer": tokenizer.decode(new), "reference": reference})
    return out


def train_sft(config: SftConfig, base_dir: Path, train: list[Conversation], eval: list[Conversation], out_dir: Path) -> dict:
    """Fine-tune the model of `base_dir` on `train`; write the model folder, metrics.jsonl,
    loss.svg, accuracy.svg and summary.json into `out_dir`; return the summary."""
    start = time.perf_counter()
    device, tokenizer, model, seq_len = load_for_training(config, base_dir)
    train_ex, train_stats = encode_conversations(tokenizer, train, seq_len)
    eval_ex, eval_stats = encode_conversations(tokenizer, eval, seq_len)
    batches = make_batches(train_ex, tokenizer.pad_id, config.batch_size, seq_len, config.packing)
    eval_batches = make_batches(eval_ex, tokenizer.pad_id, config.batch_size, seq_len, config.packing)

    def loss_fn(batch: Batch):
        loss, accuracy = sft_loss(model, batch.to(device))
        return loss, {"token_accuracy": accuracy.item()}

    with output_dir(out_dir, config) as tmp:
        def evaluate() -> dict[str, float]:
            return held_out_figures(model, eval_batches, device)

        before = held_out(model, evaluate, config, device) if eval_batches else {}
        metrics = optimize(model, batches, loss_fn, config, evaluate, tmp, "sft")
        save_model(merge_lora(model), tmp)
        copy_tokenizer(base_dir, tmp)
        charts = write_charts(tmp, "SFT", metrics, {
            "loss": (["loss", "eval_loss"], "cross-entropy (nats per answer token)"),
            "accuracy": (["token_accuracy", "eval_token_accuracy"], "next-token accuracy on answers"),
        })
        final = metrics[-1]
        summary = {
            "steps": len(metrics),
            "train_conversations": train_stats["conversations"],
            "eval_conversations": eval_stats["conversations"],
            "truncated": train_stats["truncated"] + eval_stats["truncated"],
            "dropped": train_stats["dropped"] + eval_stats["dropped"],
            "packing": config.packing,
            "rows": sum(b.input_ids.shape[0] for b in batches),
            "target_tokens": sum(b.targets for b in batches),
            "train_loss": final["loss"],
            "eval_loss_before": before.get("eval_loss"),
            "eval_loss": final.get("eval_loss"),
            "eval_token_accuracy": final.get("eval_token_accuracy"),
            "samples": sample_answers(model, tokenizer, eval, config, device),
            "charts": charts,
            "seconds": round(time.perf_counter() - start, 1),
        }
        write_json(tmp / "summary.json", summary)
    return summary
