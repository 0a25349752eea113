"""The reward model: its Bradley–Terry loss equals TRL's, it reads the last real token, it
round-trips through its folder, and training separates chosen from rejected answers."""

from __future__ import annotations

import json

import pytest
import torch

from tokenmill.align.data import Preference
from tokenmill.align.packing import encode_preferences, pair_batches
from tokenmill.align.reward import (
    RewardConfig,
    RewardModel,
    bradley_terry_loss,
    load_reward_model,
    reward_loss,
    save_reward_model,
    train_reward_model,
)
from tokenmill.errors import TokenmillError
from tokenmill.model.io import load_model

pytest.importorskip("trl")
from trl_peer import to_hf, trl_reward_loss  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PREFS = [
    Preference([{"role": "user", "content": "What does the command wibble do?"}],
               "wibble: Print a line of wibbles.", "plonk: Drop a file into the nearest bucket."),
    Preference([{"role": "user", "content": "What is heapq.heappush for?"}],
               "heapq.heappush: Push item onto heap, maintaining the heap invariant.", "bisect.insort: Insert item x."),
    Preference([{"role": "user", "content": "Explain shlex.split."}],
               "shlex.split: Split the string s using shell-like syntax.", "glob.glob: Return a list of paths."),
]


@pytest.fixture(scope="module")
def reward_model(model_dir):
    torch.manual_seed(3)
    model = RewardModel(load_model(model_dir, device="cpu"))
    with torch.no_grad():
        model.score.weight.normal_(std=1.0)  # rewards of order one, so that the loss is not log 2
    return model


@pytest.fixture(scope="module")
def batch(tokenizer):
    pairs, _ = encode_preferences(tokenizer, PREFS, 96)
    [b] = pair_batches(pairs, tokenizer.pad_id, 8)
    return b


@pytest.mark.parametrize("center", [None, 0.01])
def test_reward_loss_equals_trl(center, reward_model, batch, tokenizer, tmp_path):
    with torch.no_grad():
        ours, chosen, rejected = reward_loss(reward_model, batch, center)
    hf = to_hf(reward_model.backbone, tmp_path, kind="classification", pad_id=tokenizer.pad_id)
    hf.score.weight.data.copy_(reward_model.score.weight)
    with torch.no_grad():
        theirs, metrics = trl_reward_loss(hf, batch, center)
    assert abs(ours.item() - theirs.item()) < 1e-5
    assert abs(ours.item() - 0.6931) > 0.01
    assert (chosen > rejected).float().mean().item() == pytest.approx(metrics["accuracy"])
    assert (chosen - rejected).mean().item() == pytest.approx(metrics["margin"], abs=1e-5)


def test_bradley_terry_closed_form():
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    expected = (torch.log1p(torch.exp(torch.tensor(-1.0))) + torch.log1p(torch.exp(torch.tensor(1.0)))) / 2
    assert loss.item() == pytest.approx(expected.item())


def test_reward_is_read_at_the_last_real_token(reward_model, batch):
    with torch.no_grad():
        rewards = reward_model(batch.input_ids, batch.attention_mask)
        for row in range(batch.input_ids.shape[0]):
            n = int(batch.attention_mask[row].sum())
            alone = reward_model(batch.input_ids[row : row + 1, :n], batch.attention_mask[row : row + 1, :n])
            assert abs(alone.item() - rewards[row].item()) < 1e-5
    assert (batch.attention_mask == 0).any()  # some rows are padded


def test_reward_model_folder_round_trip(reward_model, batch, model_dir, tmp_path):
    save_reward_model(reward_model, tmp_path / "rm", model_dir)
    again = load_reward_model(tmp_path / "rm", device="cpu")
    with torch.no_grad():
        assert torch.equal(again(batch.input_ids, batch.attention_mask), reward_model(batch.input_ids, batch.attention_mask))
    assert load_model(tmp_path / "rm", device="cpu") is not None  # the backbone is a plain model folder
    with pytest.raises(TokenmillError, match="not a reward model folder"):
        load_reward_model(model_dir, device="cpu")


def test_train_reward_model_separates_chosen_from_rejected(model_dir, tmp_path):
    config = RewardConfig(steps=16, batch_size=6, lr=3e-3, warmup_steps=2, eval_every=8, device="cpu")
    summary = train_reward_model(config, model_dir, PREFS * 8, PREFS, tmp_path / "rm")
    assert summary["eval_accuracy"] == 1.0 and summary["eval_margin"] > 0.5
    metrics = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 17)) and "eval_accuracy" in metrics[7]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert load_reward_model(tmp_path / "rm", device="cpu").score.weight.shape == (1, 32)
    assert (tmp_path / "rm" / "accuracy.svg").is_file()
