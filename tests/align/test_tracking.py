"""Per-step figures reach TensorBoard's event files, read back by TensorBoard's own reader."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from tokenmill.align.config import AlignConfig, DpoConfig, LoggingConfig
from tokenmill.align.tracking import MetricsLog, check_backends
from tokenmill.errors import ConfigError


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, float(make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]}


def test_event_file_holds_the_logged_values(tmp_path):
    records = [{"step": 1, "loss": 0.75, "lr": 1e-4, "skipped": True}, {"step": 2, "loss": 0.5, "lr": 2e-4}]
    with MetricsLog(tmp_path, ["tensorboard"], prefix="dpo") as log:
        for r in records:
            log.write(r)
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == records
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars["dpo/loss"] == [(1, 0.75), (2, 0.5)]
    assert scalars["dpo/lr"] == [(1, pytest.approx(1e-4)), (2, pytest.approx(2e-4))]
    assert "dpo/skipped" not in scalars  # flags stay in metrics.jsonl


def test_no_backend_writes_only_metrics_jsonl(tmp_path):
    with MetricsLog(tmp_path, []) as log:
        log.write({"step": 1, "loss": 1.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_backend_asked_for_and_not_installed_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="'wandb' is asked for but not installed"):
        check_backends(["tensorboard", "wandb"])
    with pytest.raises(ConfigError, match="unknown backend 'mlflow'"):
        check_backends(["mlflow"])


def test_align_logging_reaches_every_method_that_does_not_set_its_own():
    config = AlignConfig.model_validate({"logging": {"backends": []}, "dpo": {"logging": {"backends": ["tensorboard"]}}})
    assert config.sft.logging == config.rm.logging == config.ppo.logging == LoggingConfig(backends=[])
    assert config.dpo.logging.backends == ["tensorboard"]
    assert DpoConfig().logging.backends == ["tensorboard"]


def test_training_writes_event_files_with_its_metrics(model_dir, tokenizer, tmp_path):
    from tokenmill.align.config import RewardConfig
    from tokenmill.align.data import Preference
    from tokenmill.align.reward import train_reward_model

    pairs = [Preference(prompt=[{"role": "user", "content": f"q{i}"}], chosen=f"good {i}", rejected="bad")
             for i in range(8)]
    train_reward_model(RewardConfig(steps=2, batch_size=4, device="cpu"), model_dir, pairs, pairs[:4], tmp_path / "rm")
    logged = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    scalars = read_scalars(tmp_path / "rm" / "tensorboard")
    assert [v for _, v in scalars["rm/loss"]] == pytest.approx([m["loss"] for m in logged])
    assert [s for s, _ in scalars["rm/eval_accuracy"]] == [2]
