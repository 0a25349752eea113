"""The reward model: the SFT transformer with its LM head set aside and a scalar head read at
the last token of each sequence, trained on preference pairs with the Bradley–Terry loss

    loss = −log σ(r(prompt, chosen) − r(prompt, rejected))

(Ouyang et al., 2022, InstructGPT §3.5). Its held-out pairwise accuracy — how often it scores
the chosen answer above the rejected one — is the figure that says whether PPO can trust it.

A reward model folder is a model folder (model.json, model.safetensors: the backbone, so it
still loads as a language model) plus `reward_head.safetensors` (the scalar head).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from tokenmill.align.config import RewardConfig
from tokenmill.align.data import Preference
from tokenmill.align.packing import Batch, preference_batches
from tokenmill.align.train import held_out, load_for_training, optimize, output_dir, write_charts
from tokenmill.atomic import write_json
from tokenmill.device import pick_device
from tokenmill.errors import TokenmillError
from tokenmill.model.io import copy_tokenizer, load_model, save_model, write_weights
from tokenmill.model.lora import merge_lora
from tokenmill.model.transformer import Transformer

HEAD = "reward_head.safetensors"


class RewardModel(nn.Module):
    """A Transformer backbone (the LM head unused) and a scalar head read at the last non-pad token."""

    def __init__(self, backbone: Transformer) -> None:
        super().__init__()
        self.backbone = backbone
        weight = backbone.tok_embeddings.weight
        self.score = nn.Linear(backbone.config.d_model, 1, bias=False, device=weight.device, dtype=weight.dtype)
        nn.init.normal_(self.score.weight, std=backbone.config.init_std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch,) float rewards of right-padded rows: the head applied to the hidden state at the
        last position where attention_mask is 1. A causal model's hidden state there never saw
        the padding after it, so no attention mask is needed inside the backbone."""
        hidden, _ = self.backbone.hidden_states(input_ids)
        index = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (index * attention_mask.bool()).argmax(-1)
        h = hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]
        return self.score(h).squeeze(-1).float()


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean −log σ(r_chosen − r_rejected) over the pairs."""
    return -F.logsigmoid(chosen - rejected).mean()


def save_reward_model(model: RewardModel, folder: Path, tokenizer_dir: Path) -> None:
    """Write the backbone as a model folder, the head beside it, and the tokenizer files."""
    folder = Path(folder)
    save_model(model.backbone, folder)
    write_weights({"score.weight": model.score.weight.detach()}, folder / HEAD)
    copy_tokenizer(tokenizer_dir, folder)


def load_reward_model(folder: Path, device: torch.device | str | None = None) -> RewardModel:
    """The reward model of a folder written by `save_reward_model`, in eval mode."""
    folder = Path(folder)
    if not (folder / HEAD).is_file():
        raise TokenmillError(f"{folder} is not a reward model folder: {HEAD} is missing (train one with `tokenmill rm`)")
    device = pick_device(device)
    model = RewardModel(load_model(folder, device=device))
    head = load_file(str(folder / HEAD), device=str(device))
    if set(head) != {"score.weight"} or tuple(head["score.weight"].shape) != tuple(model.score.weight.shape):
        raise TokenmillError(
            f"{folder / HEAD} holds {sorted(head)} with shapes {[tuple(t.shape) for t in head.values()]}; "
            f"expected score.weight of shape {tuple(model.score.weight.shape)}"
        )
    model.score.weight.data.copy_(head["score.weight"].to(model.score.weight.dtype))
    return model.eval()


# --- training --------------------------------------------------------------------------------


def reward_loss(
    model: RewardModel, batch: Batch, center_rewards: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bradley–Terry loss of a pair batch (chosen rows, then rejected rows), and the two rewards."""
    rewards = model(batch.input_ids, batch.attention_mask)
    chosen, rejected = rewards.chunk(2)
    loss = bradley_terry_loss(chosen, rejected)
    if center_rewards is not None:
        loss = loss + center_rewards * ((chosen + rejected) ** 2).mean()
    return loss, chosen, rejected


def pairwise_figures(model: RewardModel, batches: list[Batch], device: torch.device, prefix: str = "eval_") -> dict[str, float]:
    """Held-out pairwise accuracy (chosen scored above rejected), mean margin, loss and reward."""
    margins, chosen_all = [], []
    for batch in batches:
        _, chosen, rejected = reward_loss(model, batch.to(device))
        margins.append(chosen - rejected)
        chosen_all.append(torch.cat([chosen, rejected]))
    if not margins:
        return {}
    margin = torch.cat(margins).float()
    rewards = torch.cat(chosen_all).float()
    return {
        f"{prefix}accuracy": (margin > 0).float().mean().item(),
        f"{prefix}margin": margin.mean().item(),
        f"{prefix}loss": -F.logsigmoid(margin).mean().item(),
        f"{prefix}reward_mean": rewards.mean().item(),
        f"{prefix}reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
    }


def train_reward_model(
    config: RewardConfig, sft_dir: Path, train: list[Preference], eval: list[Preference], out_dir: Path
) -> dict:
    """Train a reward model initialised from the model of `sft_dir` on preference pairs; write
    the reward model folder, metrics.jsonl, loss.svg, accuracy.svg and summary.json into
    `out_dir`; return the summary (eval_accuracy: held-out pairwise accuracy)."""
    start = time.perf_counter()
    device, tokenizer, backbone, seq_len = load_for_training(config, sft_dir)
    model = RewardModel(backbone)
    batches, eval_batches, counts = preference_batches(
        tokenizer, train, eval, seq_len, config.batch_size, config.group_by_length
    )

    def loss_fn(batch: Batch):
        loss, chosen, rejected = reward_loss(model, batch.to(device), config.center_rewards)
        return loss, {"accuracy": (chosen > rejected).float().mean().item(), "margin": (chosen - rejected).mean().item()}

    def evaluate() -> dict[str, float]:
        return pairwise_figures(model, eval_batches, device)

    with output_dir(out_dir, config) as tmp:
        before = held_out(model, evaluate, config, device)
        metrics = optimize(model, batches, loss_fn, config, evaluate, tmp, "rm", paired=True)
        merge_lora(model.backbone)
        save_reward_model(model, tmp, sft_dir)
        charts = write_charts(tmp, "reward model", metrics, {
            "loss": (["loss", "eval_loss"], "-log σ(r chosen - r rejected) (nats per pair)"),
            "accuracy": (["accuracy", "eval_accuracy"], "share of pairs ranked right"),
        })
        final = metrics[-1]
        summary = {
            "steps": len(metrics),
            **counts,
            "train_loss": final["loss"],
            "eval_accuracy_before": before.get("eval_accuracy"),
            **{k: final[k] for k in final if k.startswith("eval_")},
            "charts": charts,
            "seconds": round(time.perf_counter() - start, 1),
        }
        write_json(tmp / "summary.json", summary)
    return summary
