"""The per-token rewards of a PPO rollout and their advantages: KL penalty, GAE, whitening.

Every tensor here is (batch, T) over the response tokens of a batch, right-padded: the response
of row i is its first `mask[i].sum()` entries. Padding holds zeros, which is what lets the
backward recursion of GAE run over the whole row: after the last real token the next value and
every later delta are zero, so nothing leaks from the padding into the response.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x − mean) / std over the unmasked entries; padding stays zero. Normalising advantages
    per batch keeps the policy step the same size whatever the scale of the reward."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if n > 1:
        var = var * n / (n - 1)  # Bessel's correction, as TRL and OpenRLHF do
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask.to(x.dtype)


def kl_penalised_rewards(
    score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards −β·KL_t, with the reward model's score added at each response's last
    token (Ziegler et al., 2019; Stiennon et al., 2020), and the per-token KL estimate
    KL_t = log π(y_t) − log π_ref(y_t) itself."""
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += score
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) and the returns the value head
    regresses to:

        δ_t = r_t + γ·V_{t+1} − V_t,   A_t = δ_t + γλ·A_{t+1},   R_t = A_t + V_t

    with V and A zero past the end of each response."""
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask
