"""Calling TRL's own loss code on a tokenmill model exported to transformers, for parity tests.

TRL's trainers compute their losses in methods that read a handful of trainer attributes; a
stand-in object carrying just those lets the tests run the real methods on one batch, without
building a trainer, datasets or an accelerator."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

from tokenmill.model.hf import export_hf
from tokenmill.model.io import save_model


def stand_in_accelerator() -> SimpleNamespace:
    same = lambda x: x  # noqa: E731 - one process: gathering is the identity
    return SimpleNamespace(device=torch.device("cpu"), gather=same, gather_for_metrics=same, unwrap_model=same)


def to_hf(model, folder: Path, kind: str = "causal", pad_id: int = 0):
    """The tokenmill model as a transformers model (Llama layout), via tokenmill's own export."""
    import transformers

    save_model(model, folder / "tokenmill")
    export_hf(folder / "tokenmill", folder / "hf")
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModelForSequenceClassification
    extra = {} if kind == "causal" else {"num_labels": 1, "pad_token_id": pad_id}
    return auto.from_pretrained(folder / "hf", dtype=torch.float32, **extra).eval()


def trl_dpo_loss(policy_hf, ref_hf, batch, beta: float, loss_type: str) -> tuple[torch.Tensor, dict]:
    """DPOTrainer._compute_loss on a pair batch (chosen rows, then rejected rows): loss and metrics."""
    from trl import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(policy_hf, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    add_fused_lm_head(ref_hf)
    trainer = SimpleNamespace(
        model=policy_hf, ref_model=ref_hf, accelerator=stand_in_accelerator(), aux_loss_enabled=False,
        precompute_ref_logps=False, args=SimpleNamespace(gradient_checkpointing_kwargs=None), ld_alpha=None,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta, use_weighting=False,
        label_smoothing=0.0, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "completion_mask": batch.loss_mask}
    loss = DPOTrainer._compute_loss(trainer, policy_hf, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["eval"].items()}


def trl_reward_loss(rm_hf, batch, center_rewards: float | None) -> tuple[torch.Tensor, dict]:
    """RewardTrainer.compute_loss on a pair batch: loss and metrics."""
    from trl import RewardTrainer

    trainer = SimpleNamespace(
        model=rm_hf, accelerator=stand_in_accelerator(), args=SimpleNamespace(center_rewards_coefficient=center_rewards),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    loss = RewardTrainer.compute_loss(trainer, rm_hf, inputs)
    return loss, {k: v[-1] for k, v in trainer._metrics["eval"].items()}
