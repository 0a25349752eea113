"""Direct preference optimisation (Rafailov et al., 2023): the policy learns from preference
pairs directly, its implicit reward being β times its log-ratio to a frozen reference,

    r(x, y) = β (log π(y|x) − log π_ref(y|x))
    sigmoid:  loss = −log σ(r(x, y_chosen) − r(x, y_rejected))
    IPO:      loss = (h/len − 1/(2β))²,  h the log-ratio difference, per answer token
              (Azar et al., 2023; normalised by answer length as TRL does)

The reference is the SFT model itself, kept frozen, or its log-probabilities computed once
before training so that it need not stay in memory (`precompute_ref`). Logged: the implicit
rewards of chosen and rejected answers, their margin, and the preference accuracy — the share
of pairs whose chosen answer gains more log-probability over the reference than the rejected.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tokenmill.align.config import DpoConfig
from tokenmill.align.data import Preference
from tokenmill.align.logprobs import token_logprobs
from tokenmill.align.packing import Batch, preference_batches
from tokenmill.align.train import amp, held_out, load_for_training, optimize, output_dir, write_charts
from tokenmill.atomic import write_json
from tokenmill.errors import TokenmillError
from tokenmill.model.io import copy_tokenizer, save_model
from tokenmill.model.lora import adapters_disabled, has_lora, merge_lora
from tokenmill.model.transformer import Transformer
from tokenmill.pretrain.distributed import init_data_parallel


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards) from summed answer log-probs; IPO also
    needs the answer lengths in tokens."""
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the IPO loss needs the answer lengths (chosen_tokens, rejected_tokens)")
        h = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}; use sigmoid or ipo")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def pair_logps(model: Transformer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probs of the chosen rows and of the rejected rows of a pair batch."""
    return token_logprobs(model, batch.input_ids, batch.loss_mask).sum(-1).chunk(2)


def answer_tokens(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    return batch.loss_mask[:, 1:].sum(-1).chunk(2)


class DpoObjective:
    """The DPO loss of a pair batch against a frozen reference model or stored reference log-probs."""

    def __init__(
        self,
        policy: Transformer,
        config: DpoConfig,
        batches: list[Batch],
        device: torch.device,
        reference: Transformer | None = None,
    ) -> None:
        """`reference` defaults to a frozen copy of the policy as it is now (the SFT model); a policy
        with low-rank adapters is its own reference with the adapters switched off."""
        self.policy, self.config, self.device = policy, config, device
        self.stored: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.reference: Transformer | None = None
        if config.precompute_ref:
            # Before its first step the policy is the reference: the memory of a second model,
            # which precomputing saves, is not spent even for a moment.
            scorer = reference if reference is not None else policy
            was_training = scorer.training
            scorer.eval()
            with torch.no_grad(), amp(config, device):
                self.stored = {id(b): pair_logps(scorer, b.to(device)) for b in batches}
            scorer.train(was_training)
        elif reference is None and has_lora(policy):
            self.reference = policy
        else:
            self.reference = (reference if reference is not None else copy.deepcopy(policy)).eval().requires_grad_(False)

    def ref_logps(self, key: Batch, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference is None:
            if id(key) not in self.stored:
                raise TokenmillError("reference log-probs were precomputed for other batches")
            return self.stored[id(key)]
        if self.reference is self.policy:  # LoRA: the base weights are the reference
            was_training = self.policy.training
            self.policy.eval()
            with torch.no_grad(), adapters_disabled(self.policy):
                logps = pair_logps(self.policy, batch)
            self.policy.train(was_training)
            return logps
        with torch.no_grad():
            return pair_logps(self.reference, batch)

    def __call__(self, key: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = key.to(self.device)
        chosen, rejected = pair_logps(self.policy, batch)
        ref_chosen, ref_rejected = self.ref_logps(key, batch)
        n_chosen, n_rejected = answer_tokens(batch)
        losses, r_chosen, r_rejected = dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, self.config.beta, self.config.loss, n_chosen, n_rejected
        )
        figures = {
            "rewards_chosen": r_chosen, "rewards_rejected": r_rejected, "margin": r_chosen - r_rejected,
            "accuracy": (r_chosen > r_rejected).float(), "logps_chosen": chosen.detach(),
            "logps_accuracy": (chosen > rejected).float(),
        }
        return losses.mean(), figures


def held_out_figures(objective: DpoObjective, batches: list[Batch]) -> dict[str, float]:
    """Held-out loss, implicit reward margin and preference accuracy (chosen log-ratio above rejected)."""
    losses, parts = [], {}
    for batch in batches:
        loss, figures = objective(batch)
        losses.append(loss.item() * (batch.input_ids.shape[0] // 2))
        for k, v in figures.items():
            parts.setdefault(k, []).append(v.float())
    n = sum(b.input_ids.shape[0] // 2 for b in batches)
    out = {f"eval_{k}": torch.cat(v).mean().item() for k, v in parts.items()}
    out["eval_loss"] = sum(losses) / max(n, 1)
    return out


def train_dpo(config: DpoConfig, sft_dir: Path, train: list[Preference], eval: list[Preference], out_dir: Path) -> dict:
    """Train the model of `sft_dir` with DPO (or IPO) on preference pairs; write the model folder,
    metrics.jsonl, loss.svg, rewards.svg, accuracy.svg and summary.json into `out_dir`; return
    the summary (eval_accuracy: held-out preference accuracy)."""
    start = time.perf_counter()
    device, tokenizer, policy, seq_len = load_for_training(config, sft_dir)
    if config.precompute_ref and init_data_parallel(config.device).world > 1:
        raise TokenmillError("dpo: precompute_ref works in one process; under torchrun the reference stays in memory "
                             "(or use LoRA, whose reference costs no memory)")
    batches, eval_batches, counts = preference_batches(
        tokenizer, train, eval, seq_len, config.batch_size, config.group_by_length
    )
    objective = DpoObjective(policy, config, batches + eval_batches, device)

    def loss_fn(batch: Batch):
        loss, figures = objective(batch)
        return loss, {k: v.float().mean().item() for k, v in figures.items()}

    with output_dir(out_dir, config) as tmp:
        def evaluate() -> dict[str, float]:
            return held_out_figures(objective, eval_batches)

        before = held_out(policy, evaluate, config, device) if eval_batches else {}
        metrics = optimize(policy, batches, loss_fn, config, evaluate, tmp, "dpo", paired=True)
        save_model(merge_lora(policy), tmp)
        copy_tokenizer(sft_dir, tmp)
        charts = write_charts(tmp, f"DPO ({config.loss})", metrics, {
            "loss": (["loss", "eval_loss"], "DPO loss (nats per pair)"),
            "rewards": (["rewards_chosen", "rewards_rejected", "eval_rewards_chosen", "eval_rewards_rejected"],
                        "implicit reward β·log(π/π_ref) (nats)"),
            "accuracy": (["accuracy", "eval_accuracy"], "share of pairs with chosen > rejected"),
        })
        final = metrics[-1]
        summary = {
            "steps": len(metrics),
            "loss_type": config.loss,
            "beta": config.beta,
            **counts,
            "train_loss": final["loss"],
            # Before training the policy is the reference: every log-ratio is 0. What the SFT
            # model already prefers shows in its own log-probs.
            "eval_logps_accuracy_before": before.get("eval_logps_accuracy"),
            **{k: final[k] for k in final if k.startswith("eval_")},
            "charts": charts,
            "seconds": round(time.perf_counter() - start, 1),
        }
        write_json(tmp / "summary.json", summary)
    return summary
