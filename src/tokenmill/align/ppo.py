"""PPO against a reward model (Ziegler et al., 2019; Stiennon et al., 2020; Ouyang et al., 2022).

One step is a rollout and an update:

    rollout   sample answers to a batch of prompts from the policy (KV-cached decode); score each
              with the reward model; per-token rewards −β·(log π − log π_ref) with the score added
              at the last token; values from the value head; advantages by GAE, whitened
    update    a few epochs over minibatches of the rollout: the clipped policy loss, the clipped
              value loss, one AdamW step each

The policy starts as the SFT model; the reference is a frozen copy of it. The value head is a
linear layer on the policy's last hidden state, so one forward pass gives both the token
log-probabilities and the values (as TRL's AutoModelForCausalLMWithValueHead). β is fixed or
adapted towards a KL target per answer (Ziegler et al.'s proportional controller).

    summary = train_ppo(PpoConfig(), sft_dir, rm_dir, prompts, out_dir)

writes into `out_dir` the policy (the folder is a model folder), metrics.jsonl (reward, kl, entropy,
clip_fraction, kl_coef ... per step), reward.svg, kl.svg, kl_coef.svg, policy.svg and summary.json, whose
win rate compares PPO's answers with the SFT model's on held-out prompts, judged by the reward model.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from tokenmill.align.config import PpoConfig
from tokenmill.align.data import encode_prompts, write_jsonl
from tokenmill.align.gae import gae, kl_penalised_rewards, masked_mean, whiten
from tokenmill.align.logprobs import gather_logprobs
from tokenmill.align.reward import load_reward_model
from tokenmill.align.tracking import MetricsLog
from tokenmill.align.train import WEIGHTS_DTYPES
from tokenmill.align.winrate import sample_and_score, win_rate
from tokenmill.atomic import write_json, write_text
from tokenmill.device import pick_device
from tokenmill.errors import TokenmillError
from tokenmill.figures import line_chart
from tokenmill.model.generate import Generation, generate
from tokenmill.model.io import copy_tokenizer, load_model, save_model
from tokenmill.model.lora import apply_lora, merge_lora
from tokenmill.model.transformer import Transformer
from tokenmill.pretrain.optim import build_optimizer, decayed_names, set_lr
from tokenmill.pretrain.schedule import lr_at
from tokenmill.tokenizer import Tokenizer


class KLController:
    """β of the KL penalty. Adaptive: β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon), which
    raises β while the policy drifts past the target and lowers it while it stays inside."""

    def __init__(self, config: PpoConfig) -> None:
        self.value, self.adaptive = config.kl_coef, config.adaptive_kl
        self.target, self.horizon = config.kl_target, config.kl_horizon

    def update(self, kl: float, n_samples: int) -> None:
        if self.adaptive:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + error * n_samples / self.horizon


class ActorCritic(nn.Module):
    """The policy and a value head on its last hidden state."""

    def __init__(self, policy: Transformer) -> None:
        super().__init__()
        self.policy = policy
        device = policy.tok_embeddings.weight.device
        self.value_head = nn.Linear(policy.config.d_model, 1, device=device, dtype=policy.tok_embeddings.weight.dtype)
        nn.init.zeros_(self.value_head.weight)  # values start at zero, not at noise
        nn.init.zeros_(self.value_head.bias)


@dataclass
class Rollout:
    sequences: torch.Tensor  # (batch, length)
    actions: torch.Tensor  # (batch, T) index of the logits that predict each response token
    mask: torch.Tensor  # (batch, T) 1 on response tokens
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def action_index(out: Generation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sequences cut to their longest row, where the logits predicting response token j of
    row i sit, (batch, T), and the response mask. Responses start at different positions, so
    this gathers them into one right-padded layout."""
    length = max(int((out.prompt_lengths + out.response_lengths).max()), 2)
    j = torch.arange(int(out.response_lengths.max()), device=out.sequences.device)
    mask = (j < out.response_lengths[:, None]).float()
    index = (out.prompt_lengths[:, None] - 1 + j).clamp(max=length - 2)  # padding points at any real slot
    return out.sequences[:, :length], index, mask


def response_forward(
    model: Transformer, sequences: torch.Tensor, actions: torch.Tensor, temperature: float, value_head: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Log-probs of the response tokens under logits/temperature, values (with a value head) and
    entropies, each (batch, T). The LM head runs on response positions only."""
    hidden, _ = model.hidden_states(sequences)
    hidden = hidden.gather(1, actions[..., None].expand(-1, -1, hidden.shape[-1]))
    logits = model.head(hidden).float() / temperature
    logprobs = gather_logprobs(logits, sequences.gather(1, actions + 1))
    log_p = logits.log_softmax(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    values = value_head(hidden).squeeze(-1).float() if value_head is not None else None
    return logprobs, values, entropy


def ppo_losses(
    logprobs: torch.Tensor, values: torch.Tensor, batch: Rollout, rows: torch.Tensor, config: PpoConfig
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate policy loss and the clipped value loss over response tokens:

        L_π = E[max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))],  ρ = π(y)/π_old(y)
        L_V = ½·E[max((V − R)², (V_old + clip(V − V_old, ±ε_V) − R)²)]
    """
    mask, old, adv = batch.mask[rows], batch.logprobs[rows], batch.advantages[rows]
    old_values, returns = batch.values[rows], batch.returns[rows]
    ratio = (logprobs - old).exp()
    pg_loss = masked_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - config.clip_range, 1 + config.clip_range)), mask)
    clipped = old_values + (values - old_values).clamp(-config.clip_range_value, config.clip_range_value)
    vf_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
    stats = {
        "clip_fraction": masked_mean(((ratio - 1).abs() > config.clip_range).float(), mask),
        "approx_kl": masked_mean(0.5 * (logprobs - old) ** 2, mask),  # old policy to new (Schulman's k2)
        "value_clip_fraction": masked_mean(((values - old_values).abs() > config.clip_range_value).float(), mask),
    }
    return pg_loss, vf_loss, stats


class PpoTrainer:
    """The policy (with its value head), the frozen reference and the reward model."""

    def __init__(self, config: PpoConfig, policy: Transformer, reward_model: nn.Module, tokenizer) -> None:
        self.config, self.tokenizer, self.reward_model = config, tokenizer, reward_model.eval()
        self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        # Dropout stays off throughout: the rollout's log-probs must be those the update recomputes.
        self.model = ActorCritic(policy).eval()
        self.device = next(policy.parameters()).device
        self.optimizer = build_optimizer(self.model.named_parameters(), decayed_names(self.model, False), config, self.device)
        self.kl = KLController(config)
        self.score_shift, self.score_scale = 0.0, 1.0  # see normalize_scores
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)

    @torch.no_grad()
    def rollout(self, prompts: Sequence[Sequence[int]]) -> tuple[Rollout, dict[str, float]]:
        c, tok = self.config, self.tokenizer
        out = generate(
            self.model.policy, prompts, c.max_new_tokens, temperature=c.temperature,
            stop_ids=tok.stop_ids, pad_id=tok.pad_id, generator=self.generator,
        )
        score = self.reward_model(out.sequences, out.attention_mask).float()
        reward = (score - self.score_shift) / self.score_scale
        sequences, actions, mask = action_index(out)
        logprobs, values, entropy = response_forward(self.model.policy, sequences, actions, c.temperature, self.model.value_head)
        ref_logprobs, _, _ = response_forward(self.reference, sequences, actions, c.temperature)
        rewards, kl = kl_penalised_rewards(reward, logprobs, ref_logprobs, mask, self.kl.value)
        advantages, returns = gae(rewards, values, mask, c.gamma, c.lam)
        batch = Rollout(sequences, actions, mask, logprobs, values * mask, whiten(advantages, mask), returns)
        stats = {
            "reward": float(score.mean()),
            "reward_std": float(score.std()),
            "kl": float(kl.sum(-1).mean()),  # nats per answer
            "entropy": float(masked_mean(entropy, mask)),
            "response_length": float(out.response_lengths.float().mean()),
            "stopped": float(out.stopped.float().mean()),
            "kl_coef": self.kl.value,
        }
        return batch, stats

    def update(self, batch: Rollout) -> dict[str, float]:
        c = self.config
        totals: dict[str, float] = {}
        n = 0
        for _ in range(c.ppo_epochs):
            order = torch.randperm(len(batch.sequences), generator=self.generator, device=self.device)
            for rows in order.split(c.minibatch_size):
                logprobs, values, _ = response_forward(
                    self.model.policy, batch.sequences[rows], batch.actions[rows], c.temperature, self.model.value_head
                )
                pg_loss, vf_loss, stats = ppo_losses(logprobs, values, batch, rows, c)
                loss = pg_loss + c.vf_coef * vf_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip or float("inf"))
                self.optimizer.step()
                for k, v in {"policy_loss": pg_loss, "value_loss": vf_loss, "grad_norm": grad_norm, **stats}.items():
                    totals[k] = totals.get(k, 0.0) + float(v.detach())
                n += 1
        return {k: v / n for k, v in totals.items()}

    def normalize_scores(self, scores: torch.Tensor) -> None:
        """Set the reward to (score − mean) / std of `scores`, the reward model's scores of the
        initial policy's answers (Ziegler et al., 2019, §2.2): the KL coefficient and target
        then mean the same against any reward model, whatever the scale its training gave it."""
        self.score_shift, self.score_scale = float(scores.mean()), max(float(scores.std()), 1e-6)

    def step(self, prompts: Sequence[Sequence[int]], lr: float) -> dict[str, float]:
        set_lr(self.optimizer, lr)
        batch, stats = self.rollout(prompts)
        stats["lr"] = lr
        stats.update(self.update(batch))
        self.kl.update(stats["kl"], len(prompts))
        return stats


def split_prompts(prompts: list[list[int]], n_eval: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Shuffled, then the last `n_eval` held out for the win rate (never trained on)."""
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    n_eval = min(n_eval, len(prompts) // 2)
    held = set(order[len(order) - n_eval :]) if n_eval else set()
    return [prompts[i] for i in order if i not in held], [prompts[i] for i in sorted(held)]


def write_figures(metrics: list[dict], out_dir: Path, config: PpoConfig) -> list[str]:
    def line(key: str) -> list[tuple[float, float]]:
        return [(m["step"], m[key]) for m in metrics if key in m]

    write_text(out_dir / "reward.svg", line_chart(
        "PPO: reward-model score of the policy's answers", [("reward", line("reward"))], "step", "reward-model score"))
    write_text(out_dir / "kl.svg", line_chart(
        "PPO: KL to the reference", [("KL", line("kl"))], "step", "KL (nats per answer)",
        hlines=[("KL target", config.kl_target)]))
    write_text(out_dir / "kl_coef.svg", line_chart(
        "PPO: KL coefficient β", [("β", line("kl_coef"))], "step", "β (reward per nat of KL)"))
    write_text(out_dir / "policy.svg", line_chart(
        "Policy: entropy per token, clip fraction, approximate KL per step",
        [("entropy (nats per token)", line("entropy")), ("clip fraction", line("clip_fraction")),
         ("approx KL (nats per token)", line("approx_kl"))],
        "step", "nats, or share of tokens clipped"))
    return ["reward.svg", "kl.svg", "kl_coef.svg", "policy.svg"]


def train_ppo(
    config: PpoConfig,
    sft_dir: Path,
    rm_dir: Path,
    prompts: list[list[dict]],
    out_dir: Path,
    eval_prompts: list[list[dict]] | None = None,
) -> dict:
    """PPO from the SFT model folder against the reward model folder, on `prompts` (message lists
    ending with a user turn). The win rate over the SFT model is measured on the first
    `config.eval_prompts` of `eval_prompts`, or else on as many prompts held out of `prompts`.
    Writes the policy into out_dir (a model folder) and returns the summary."""
    started = time.perf_counter()
    sft_dir, rm_dir, out_dir = Path(sft_dir), Path(rm_dir), Path(out_dir)
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    tokenizer = Tokenizer.load(sft_dir)
    if Tokenizer.load(rm_dir).hash != tokenizer.hash:
        raise TokenmillError(f"the reward model in {rm_dir} was trained with another tokenizer than the policy in {sft_dir}")
    policy = load_model(sft_dir, device=device, dtype=WEIGHTS_DTYPES[config.dtype])
    if config.lora is not None:
        apply_lora(policy, **config.lora.model_dump())
    reward_model = load_reward_model(rm_dir, device=device)
    room = policy.config.context_length - config.max_new_tokens
    ids, too_long = encode_prompts(tokenizer, prompts, room)
    if eval_prompts is None:
        train, held = split_prompts(ids, config.eval_prompts, config.seed)
    else:
        train, held = ids, encode_prompts(tokenizer, eval_prompts, room)[0][: config.eval_prompts]
    if len(train) < config.batch_size:
        raise TokenmillError(
            f"PPO needs at least batch_size={config.batch_size} prompts of at most {room} tokens to train on; "
            f"{len(train)} of {len(prompts)} qualify ({too_long} too long, {len(held)} held out)"
        )
    trainer = PpoTrainer(config, policy, reward_model, tokenizer)
    if config.normalize_prompts:
        sample = random.Random(config.seed).sample(train, min(config.normalize_prompts, len(train)))
        trainer.normalize_scores(sample_and_score(trainer.reference, reward_model, tokenizer, sample, config.max_new_tokens,
                                                  config.temperature, seed=config.seed).scores)
    before = sample_and_score(trainer.reference, reward_model, tokenizer, held, config.max_new_tokens,
                              config.temperature, seed=config.seed) if held else None

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: list[dict] = []
    order = random.Random(config.seed)
    pool: list[list[int]] = []
    with MetricsLog(out_dir, config.logging.backends, prefix="ppo") as log:
        for step in tqdm(range(1, config.steps + 1), desc="ppo", unit="step"):
            if len(pool) < config.batch_size:
                pool += order.sample(train, len(train))
            batch, pool = pool[: config.batch_size], pool[config.batch_size :]
            record = {"step": step, **trainer.step(batch, lr_at(step - 1, config, config.steps))}
            metrics.append(record)
            log.write(record)

    # The method's folder is itself a model folder, like those of SFT and DPO.
    save_model(merge_lora(trainer.model.policy), out_dir)
    copy_tokenizer(sft_dir, out_dir)
    after = sample_and_score(trainer.model.policy, reward_model, tokenizer, held, config.max_new_tokens,
                             config.temperature, seed=config.seed) if held else None
    kls = [m["kl"] for m in metrics]
    quarter = max(1, len(metrics) // 4)
    summary = {
        "steps": config.steps,
        "prompts_train": len(train),
        "prompts_eval": len(held),
        "prompts_too_long": too_long,
        # One batch's mean score is noisy: compare the first and last quarters of training.
        "reward_first_quarter": sum(m["reward"] for m in metrics[:quarter]) / quarter,
        "reward_last_quarter": sum(m["reward"] for m in metrics[-quarter:]) / quarter,
        "kl_mean": sum(kls) / len(kls),
        "kl_max": max(kls),
        "kl_last": kls[-1],
        "kl_target": config.kl_target,
        # The controller steers the mean towards kl_target, so single rollouts pass it both ways.
        "kl_mean_within_target": sum(kls) / len(kls) <= config.kl_target,
        "kl_coef_last": trainer.kl.value,
        "score_shift": trainer.score_shift,
        "score_scale": trainer.score_scale,
        "entropy_last": metrics[-1]["entropy"],
        "clip_fraction_mean": sum(m["clip_fraction"] for m in metrics) / len(metrics),
    }
    if held:
        summary.update({
            "eval_reward_sft": float(before.scores.mean()),
            "eval_reward_ppo": float(after.scores.mean()),
            "win_rate_vs_sft": win_rate(after.scores, before.scores),
            "eval_stopped_sft": before.stopped,
            "eval_stopped_ppo": after.stopped,
            "eval_length_sft": before.length,
            "eval_length_ppo": after.length,
        })
        samples = [{"prompt": tokenizer.decode(p[1:], skip_special_tokens=True), "sft": a, "ppo": b,
                    "score_sft": float(sa), "score_ppo": float(sb)}
                   for p, a, b, sa, sb in zip(held, before.responses, after.responses, before.scores, after.scores)]
        write_jsonl(out_dir / "samples.jsonl", samples)
    summary["figures"] = write_figures(metrics, out_dir, config)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_json(out_dir / "summary.json", summary)
    return summary
