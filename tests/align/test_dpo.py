"""DPO and IPO: the losses equal TRL's on the same model and batch; training raises the
held-out preference accuracy; a precomputed reference is the frozen reference."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tokenmill.align.data import Preference
from tokenmill.align.dpo import DpoConfig, DpoObjective, dpo_loss, train_dpo
from tokenmill.align.packing import encode_preferences, pair_batches
from tokenmill.model.io import load_model

pytest.importorskip("trl")
from trl_peer import to_hf, trl_dpo_loss  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PREFS = [
    Preference([{"role": "user", "content": "What does the command wibble do?"}],
               "wibble: Print a line of wibbles.", "plonk: Drop a file into the nearest bucket."),
    Preference([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is heapq.heappush for?"}],
               "heapq.heappush: Push item onto heap, maintaining the heap invariant.", "bisect.insort: Insert item x."),
    Preference([{"role": "user", "content": "Explain shlex.split."}, {"role": "assistant", "content": "Which module?"},
                {"role": "user", "content": "shlex."}], "shlex.split: Split the string s using shell-like syntax.",
               "textwrap.dedent: Remove any common leading whitespace from every line in text."),
]


@pytest.fixture(scope="module")
def models(model_dir):
    """A reference and a policy that differs from it, so that every log-ratio is non-zero."""
    reference = load_model(model_dir, device="cpu")
    policy = copy.deepcopy(reference)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return policy, reference


@pytest.fixture(scope="module")
def batch(tokenizer):
    pairs, dropped = encode_preferences(tokenizer, PREFS, 96)
    assert dropped == 0
    [b] = pair_batches(pairs, tokenizer.pad_id, 8)
    return b


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_equals_trl(loss_type, beta, models, batch, tmp_path):
    policy, reference = models
    config = DpoConfig(beta=beta, loss=loss_type)
    with torch.no_grad():
        ours, figures = DpoObjective(policy, config, [batch], torch.device("cpu"), reference)(batch)
    theirs, metrics = trl_dpo_loss(to_hf(policy, tmp_path / "policy"), to_hf(reference, tmp_path / "ref"), batch, beta, loss_type)
    assert abs(ours.item() - theirs.item()) < 1e-5
    assert ours.item() > 0.01  # a loss far from zero, so that the comparison says something
    assert abs(figures["margin"].mean().item() - metrics["rewards/margins"]) < 1e-5
    assert abs(figures["rewards_chosen"].mean().item() - metrics["rewards/chosen"]) < 1e-5
    assert figures["accuracy"].mean().item() == pytest.approx(metrics["rewards/accuracies"])


def test_dpo_loss_closed_forms():
    c, r, rc, rr = (torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.5))
    losses, chosen, rejected = dpo_loss(c, r, rc, rr, beta=0.1)
    # r_chosen = 0.1·1, r_rejected = 0.1·(−0.5): loss = −log σ(0.15)
    assert losses.item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(0.15)).item())
    assert (chosen.item(), rejected.item()) == pytest.approx((0.1, -0.05))
    ipo, _, _ = dpo_loss(c, r, rc, rr, beta=0.1, loss_type="ipo", chosen_tokens=torch.tensor([4]), rejected_tokens=torch.tensor([5]))
    assert ipo.item() == pytest.approx((1 / 4 + 0.5 / 5 - 5.0) ** 2)


def test_precomputed_reference_gives_the_frozen_references_loss(models, batch):
    policy, reference = models
    frozen = DpoObjective(policy, DpoConfig(), [batch], torch.device("cpu"), reference)
    stored = DpoObjective(policy, DpoConfig(precompute_ref=True), [batch], torch.device("cpu"), copy.deepcopy(reference))
    assert stored.reference is None and frozen.reference is not None
    with torch.no_grad():
        assert torch.equal(frozen(batch)[0], stored(batch)[0])
    # Without a reference model, the policy before its first step is the reference, with no copy made.
    for mode in (True, False):  # the policy's mode is left as it was
        policy.train(mode)
        own = DpoObjective(policy, DpoConfig(precompute_ref=True), [batch], torch.device("cpu"))
        assert own.reference is None and policy.training == mode
    copied = DpoObjective(policy, DpoConfig(), [batch], torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(own(batch)[0], copied(batch)[0])
    # the reference stays where it was while the policy moves
    loss, _ = stored(batch)
    loss.backward()
    assert policy.layers[0].attn.wqkv.weight.grad is not None
    policy.zero_grad()


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_train_dpo_raises_held_out_preference_accuracy(loss_type, model_dir, tmp_path):
    prefs = PREFS * 8
    config = DpoConfig(steps=12, batch_size=6, lr=3e-3, warmup_steps=2, eval_every=6, loss=loss_type,
                       precompute_ref=loss_type == "ipo", device="cpu")
    summary = train_dpo(config, model_dir, prefs, PREFS, tmp_path / "dpo")
    assert summary["eval_accuracy"] == 1.0 and summary["eval_margin"] > 0
    metrics = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert {"rewards_chosen", "rewards_rejected", "margin", "accuracy"} <= metrics[0].keys()
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert (tmp_path / "dpo" / "rewards.svg").is_file() and (tmp_path / "dpo" / "model.safetensors").is_file()


def test_held_out_figures_weigh_every_pair_once(models, tokenizer):
    from tokenmill.align.dpo import held_out_figures

    policy, reference = models
    pairs, _ = encode_preferences(tokenizer, PREFS, 96)
    whole = pair_batches(pairs, tokenizer.pad_id, 3)
    split = pair_batches(pairs, tokenizer.pad_id, 2)  # batches of 2 pairs and 1 pair
    objective = DpoObjective(policy, DpoConfig(), whole + split, torch.device("cpu"), reference)
    with torch.no_grad():
        one, two = held_out_figures(objective, whole), held_out_figures(objective, split)
    assert one["eval_loss"] == pytest.approx(two["eval_loss"], abs=1e-6)
    assert one["eval_margin"] == pytest.approx(two["eval_margin"], abs=1e-6)
