"""PPO: GAE against its closed form, the penalised rewards, whitening, the clipped losses, the KL
controller, and a short run that must raise the reward while keeping to the KL budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from rl_helpers import load_tokenizer, model_folder, tiny_model, train_tiny_tokenizer

from tokenmill.align.data import encode_prompts
from tokenmill.align.gae import gae, kl_penalised_rewards, whiten
from tokenmill.align.ppo import (
    KLController,
    PpoConfig,
    PpoTrainer,
    Rollout,
    action_index,
    ppo_losses,
    response_forward,
    train_ppo,
)
from tokenmill.align.reward import RewardModel, save_reward_model
from tokenmill.errors import TokenmillError
from tokenmill.model import load_model
from tokenmill.model.generate import generate


def closed_form_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """A_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γ V_{t+1} − V_t with V_T = 0; R_t = A_t + V_t."""
    n = len(rewards)
    v = values + [0.0]
    delta = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(n)]
    adv = [sum((gamma * lam) ** k * delta[t + k] for k in range(n - t)) for t in range(n)]
    return adv, [a + values[t] for t, a in enumerate(adv)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_the_closed_form_and_ignores_padding(gamma, lam):
    rng = np.random.default_rng(0)
    lengths = [5, 1, 3, 7]
    rewards = torch.tensor(rng.normal(size=(4, 7)), dtype=torch.float64)
    values = torch.tensor(rng.normal(size=(4, 7)), dtype=torch.float64)
    mask = torch.tensor([[1.0] * n + [0.0] * (7 - n) for n in lengths], dtype=torch.float64)
    # Whatever sits in the padding must not matter.
    adv, ret = gae(rewards, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        expected_adv, expected_ret = closed_form_gae(rewards[i, :n].tolist(), values[i, :n].tolist(), gamma, lam)
        np.testing.assert_allclose(adv[i, :n].numpy(), expected_adv, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ret[i, :n].numpy(), expected_ret, rtol=0, atol=1e-12)
        assert (adv[i, n:] == 0).all() and (ret[i, n:] == 0).all()
    if gamma == lam == 1.0:  # Monte Carlo: the return is the sum of the rewards to come
        np.testing.assert_allclose(ret[0, :5].numpy(), rewards[0, :5].flip(0).cumsum(0).flip(0).numpy(), atol=1e-12)


def test_the_score_lands_on_the_last_token_and_kl_is_paid_on_every_token():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.1, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards, kl = kl_penalised_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0], [-0.2, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 2.0], [-1.0 + 0.02, 0.0, 0.0]]))


def test_whitening_uses_only_the_response_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, -99.0, -99.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    real = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    expected = (real - real.mean()) / real.std(ddof=1)
    out = whiten(x, mask)
    np.testing.assert_allclose(out[mask.bool()].numpy(), expected, atol=1e-6)
    assert (out[~mask.bool()] == 0).all()


def test_clipped_losses_match_a_hand_computation():
    config = PpoConfig(clip_range=0.2, clip_range_value=0.5)
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    new = old + torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.0]]))  # ratios
    adv = torch.tensor([[1.0, 1.0, -2.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    old_values = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[1.0, 0.8, -0.1, 7.0]])
    batch = Rollout(None, None, mask, old, old_values, adv, returns)
    pg, vf, stats = ppo_losses(new, values, batch, torch.tensor([0]), config)
    # token 1: ratio 1.5, A>0 -> clipped at 1.2; token 2: ratio 0.5, A>0 -> unclipped 0.5 (the pessimistic
    # choice); token 3: ratio 1.1 inside the range; token 4 is padding.
    assert pg.item() == pytest.approx(-(1.2 * 1 + 0.5 * 1 + 1.1 * -2.0) / 3, abs=1e-6)
    # values: token 1 moves by 1.0 > 0.5 -> clipped 0.5, (0.5-2)^2 = 2.25 > (1-2)^2 -> 2.25;
    # token 2: 0.8 moves by 0.2, (0.8)^2; token 3: 0.01.
    assert vf.item() == pytest.approx(0.5 * (2.25 + 0.64 + 0.01) / 3, abs=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)
    assert stats["value_clip_fraction"].item() == pytest.approx(1 / 3)


def test_the_adaptive_kl_controller_follows_ziegler_and_the_fixed_one_stays():
    adaptive = KLController(PpoConfig(kl_coef=0.1, kl_target=4.0, kl_horizon=100))
    adaptive.update(5.0, 10)  # 25% over the target: the error is clipped to 0.2
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    adaptive.update(3.0, 20)  # 25% under: -0.2
    assert adaptive.value == pytest.approx(0.1 * 1.02 * (1 - 0.2 * 20 / 100))
    adaptive.update(4.4, 50)  # 10% over, inside the clip
    assert adaptive.value == pytest.approx(0.1 * 1.02 * 0.96 * (1 + 0.1 * 50 / 100))
    fixed = KLController(PpoConfig(kl_coef=0.1, adaptive_kl=False))
    fixed.update(100.0, 1000)
    assert fixed.value == 0.1


class TokenValueReward(nn.Module):
    """A reward model whose score is the mean of a fixed random value per token over the answer
    (the tokens after the last <|assistant|>): PPO can raise it by favouring high-value tokens."""

    def __init__(self, vocab_size: int, assistant_id: int, seed: int = 1) -> None:
        super().__init__()
        self.assistant_id = assistant_id
        self.table = torch.randn(vocab_size, generator=torch.Generator().manual_seed(seed))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        is_assistant = input_ids == self.assistant_id
        answer = (is_assistant.long().cumsum(-1) > 0) & ~is_assistant & attention_mask.bool()
        return (self.table[input_ids] * answer).sum(-1) / answer.sum(-1).clamp(min=1)


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory, one_thread):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("ppo"))


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


QUESTIONS = [f"What does the {w} statement do?" for w in ("if", "for", "while", "with", "try", "def", "class", "import")]


def test_the_rollout_recomputes_the_sampled_log_probs_exactly(tiny_tokenizer):
    """Rows that stop early and prompts of different lengths: the response layout of PPO reads
    the sampled tokens back, and the policy's log-probs are those of the sampling (ratio 1)."""
    model = tiny_model(tiny_tokenizer.vocab_size, context_length=64)
    prompts, _ = encode_prompts(tiny_tokenizer, [[{"role": "user", "content": q}] for q in QUESTIONS[:6]], 40)
    free = generate(model, prompts, 12, temperature=0)
    stop = free.response_ids(2)[3]
    out = generate(model, prompts, 12, temperature=1.0, stop_ids={stop}, generator=torch.Generator().manual_seed(0))
    assert len(set(out.response_lengths.tolist())) > 1  # some rows stopped early
    sequences, actions, mask = action_index(out)
    assert sequences.shape[1] == int((out.prompt_lengths + out.response_lengths).max())
    tokens = sequences.gather(1, actions + 1)
    for i in range(len(prompts)):
        assert tokens[i, mask[i].bool()].tolist() == out.response_ids(i)
    with torch.no_grad():
        logprobs, _, _ = response_forward(model, sequences, actions, temperature=1.0)
    expected = out.logprobs.gather(1, (actions + 1).clamp(max=out.logprobs.shape[1] - 1)) * mask
    torch.testing.assert_close(logprobs * mask, expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("adaptive", [True, False])
def test_ppo_raises_the_reward_and_keeps_to_the_kl_budget(tiny_tokenizer, adaptive):
    torch.manual_seed(0)
    policy = tiny_model(tiny_tokenizer.vocab_size, context_length=64)
    config = PpoConfig(batch_size=16, minibatch_size=8, ppo_epochs=2, max_new_tokens=6, lr=5e-3,
                       kl_coef=0.2, adaptive_kl=adaptive, kl_target=4.0, kl_horizon=100, seed=0)
    reward = TokenValueReward(tiny_tokenizer.vocab_size, tiny_tokenizer.assistant_id)
    trainer = PpoTrainer(config, policy, reward, tiny_tokenizer)
    prompts, _ = encode_prompts(tiny_tokenizer, [[{"role": "user", "content": q}] for q in QUESTIONS], 40)
    history = [trainer.step(prompts * 2, config.lr) for _ in range(16)]
    first = np.mean([h["reward"] for h in history[:3]])
    last = np.mean([h["reward"] for h in history[-3:]])
    assert last > first + 0.1, (first, last)
    assert max(h["kl"] for h in history) < config.kl_target
    assert all(0 <= h["clip_fraction"] <= 1 and h["entropy"] > 0 for h in history)
    betas = [h["kl_coef"] for h in history]
    if adaptive:  # the policy stayed inside its budget, so β came down every step
        assert all(b2 < b1 for b1, b2 in zip(betas, betas[1:]))
    else:
        assert betas == [0.2] * len(betas)
    # The reference never moves.
    for p, q in zip(trainer.reference.parameters(), tiny_model(tiny_tokenizer.vocab_size, context_length=64).parameters()):
        assert torch.equal(p, q)


class Affine(nn.Module):
    """Another reward model's score, scaled and shifted: the same preferences on another scale."""

    def __init__(self, inner: nn.Module, scale: float, shift: float) -> None:
        super().__init__()
        self.inner, self.scale, self.shift = inner, scale, shift

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids, attention_mask) * self.scale + self.shift


def test_normalized_scores_make_ppo_blind_to_the_reward_models_scale(tiny_tokenizer):
    """Two reward models that differ by an affine map train the same policy once each is
    normalised on the same answers; unnormalised, the scaled one trains another."""
    prompts, _ = encode_prompts(tiny_tokenizer, [[{"role": "user", "content": q}] for q in QUESTIONS], 40)
    config = PpoConfig(batch_size=8, minibatch_size=4, max_new_tokens=6, lr=5e-3, seed=0)
    reward = TokenValueReward(tiny_tokenizer.vocab_size, tiny_tokenizer.assistant_id)

    def train(reward_model: nn.Module, normalize: bool) -> tuple[list[float], torch.Tensor]:
        torch.manual_seed(0)
        trainer = PpoTrainer(config, tiny_model(tiny_tokenizer.vocab_size, context_length=64), reward_model, tiny_tokenizer)
        if normalize:
            batch, _ = trainer.rollout(prompts)
            trainer.normalize_scores(reward_model(batch.sequences, (batch.sequences != tiny_tokenizer.pad_id).long()))
            trainer.generator.manual_seed(config.seed)
        kls = [trainer.step(prompts, config.lr)["kl"] for _ in range(3)]
        return kls, trainer.model.policy.output.weight.detach().clone()

    kl_a, weights_a = train(reward, normalize=True)
    kl_b, weights_b = train(Affine(reward, 10.0, 5.0), normalize=True)
    assert kl_a == pytest.approx(kl_b, rel=1e-4)
    torch.testing.assert_close(weights_a, weights_b, atol=1e-5, rtol=1e-4)
    _, weights_raw = train(Affine(reward, 10.0, 5.0), normalize=False)
    assert not torch.allclose(weights_a, weights_raw, atol=1e-4)


def test_train_ppo_writes_a_model_metrics_figures_and_a_summary(tiny_tokenizer, tiny_tokenizer_dir, tmp_path):
    sft_dir = model_folder(tiny_model(tiny_tokenizer.vocab_size, context_length=64), tiny_tokenizer_dir, tmp_path / "sft")
    rm = RewardModel(tiny_model(tiny_tokenizer.vocab_size, context_length=64, seed=5))
    save_reward_model(rm, tmp_path / "rm", tiny_tokenizer_dir)
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS * 3]
    config = PpoConfig(steps=2, batch_size=4, minibatch_size=2, max_new_tokens=8, eval_prompts=4, device="cpu")
    out = tmp_path / "ppo"
    summary = train_ppo(config, sft_dir, tmp_path / "rm", prompts, out)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for key in ("reward", "kl", "entropy", "clip_fraction", "kl_coef", "approx_kl", "policy_loss", "value_loss"):
        assert all(np.isfinite(m[key]) for m in metrics), key
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["prompts_eval"] == 4 and summary["prompts_train"] == 20
    assert 0 <= summary["win_rate_vs_sft"] <= 1
    assert summary["kl_mean"] == pytest.approx(sum(m["kl"] for m in metrics) / 2)
    assert summary["kl_mean_within_target"] == (summary["kl_mean"] <= config.kl_target)
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4
    for name in summary["figures"]:
        assert (out / name).read_text().startswith("<svg")
    policy = load_model(out, device="cpu")
    assert load_tokenizer(out).hash == tiny_tokenizer.hash
    # Two updates moved the policy away from the SFT weights.
    sft = load_model(sft_dir, device="cpu")
    assert not torch.equal(policy.layers[0].attn.wqkv.weight, sft.layers[0].attn.wqkv.weight)

    with pytest.raises(TokenmillError, match="at least batch_size=16 prompts"):
        train_ppo(PpoConfig(device="cpu"), sft_dir, tmp_path / "rm", prompts[:10], tmp_path / "x")


def test_the_ppo_verb(tiny_tokenizer, tiny_tokenizer_dir, tmp_path, capsys):
    import argparse

    from tokenmill.align.cli_rl import register

    sft_dir = model_folder(tiny_model(tiny_tokenizer.vocab_size, context_length=64), tiny_tokenizer_dir, tmp_path / "sft")
    save_reward_model(RewardModel(tiny_model(tiny_tokenizer.vocab_size, context_length=64, seed=5)), tmp_path / "rm", tiny_tokenizer_dir)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}]}) + "\n"
                                                    for q in QUESTIONS))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    common = ["ppo", str(sft_dir), "--rm", str(tmp_path / "rm"), "--prompts", str(tmp_path / "prompts.jsonl"),
              "-o", str(tmp_path / "out"), "--set", "device=cpu"]
    args = parser.parse_args(common + ["--eval-prompts", str(tmp_path / "prompts.jsonl"), "--set", "steps=1",
                                       "--set", "ppo.batch_size=4", "--set", "max_new_tokens=4", "--set", "eval_prompts=3"])
    assert args.func(args) == 0
    assert "win rate over SFT" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # With held-out prompts given, every training prompt is trained on and the first three are the evaluation.
    assert (summary["steps"], summary["prompts_train"], summary["prompts_eval"]) == (1, len(QUESTIONS), 3)
    args = parser.parse_args(common + ["--set", "kl_target=-1", "--set", "lamda=0.9"])
    with pytest.raises(TokenmillError, match=r"invalid ppo settings: ppo.kl_target: .*greater than 0; unknown key 'ppo.lamda'"):
        args.func(args)
