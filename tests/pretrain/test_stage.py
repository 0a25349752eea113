"""Stage 05 end to end: the model folder, the report, the figures, the CLI, and each precision."""

from __future__ import annotations

import argparse
import json
import math
import xml.etree.ElementTree as ET

import pytest
import torch
import yaml
from pretrain_runs import pretrain_fields, read_jsonl, step_losses, train_here

from tokenmill.errors import ConfigError, TokenmillError
from tokenmill.model import load_model
from tokenmill.model.config import config_json
from tokenmill.pretrain import cli
from tokenmill.pretrain.checkpoint import MARKER
from tokenmill.pretrain.config import PretrainConfig
from tokenmill.pretrain.data import val_batch
from tokenmill.pretrain.stage import pretrain_stage
from tokenmill.tokenizer import Tokenizer
from tokenmill.tokenizer.dataset import TokenDataset


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory, model_config, corpus):
    root = tmp_path_factory.mktemp("stage")
    (root / "model.json").write_text(config_json(model_config))
    config = PretrainConfig(**pretrain_fields(steps=12, eval_every=6, golden_every=6, sample_top_k=5))
    metrics = pretrain_stage(
        root / "model.json", corpus["tokens"], corpus["tokenizer"], config, root / "out", root / "work", False
    )
    return root, metrics


def test_the_model_folder_holds_the_trained_weights(stage_run, corpus, model_config):
    root, metrics = stage_run
    folder = root / "out" / "model"
    assert {"model.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    model = load_model(folder, device="cpu")
    assert model.config == model_config
    # The validation loss of the exported weights is the one the run measured at its last step.
    ds = TokenDataset(corpus["tokens"], "val", 32)
    losses = []
    with torch.no_grad():
        for i in range(4):
            x, y = val_batch(ds, i, 2, torch.device("cpu"))
            losses.append(torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    assert sum(losses) / 4 == pytest.approx(metrics["val_loss"], abs=1e-6)
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]))


def test_report_figures_and_logs(stage_run, corpus, vocab_size):
    root, metrics = stage_run
    out = root / "out"
    report = json.loads((out / "report.json").read_text())
    n, d = report["params"], report["tokens"]
    assert d == 12 * 8 * 32 == metrics["tokens"]
    c = report["chinchilla"]
    assert c["tokens_per_param"] == round(d / n, 3)
    assert c["compute_flops"] == 6 * n * d
    assert c["compute_optimal_params"] == round(math.sqrt(6 * n * d / 120))  # C = 6ND with D = 20N
    assert c["compute_optimal_tokens"] == round(20 * math.sqrt(6 * n * d / 120))
    assert report["baselines"]["uniform"] == pytest.approx(math.log(vocab_size))
    assert 0 < report["baselines"]["unigram_entropy"] < math.log(vocab_size)
    assert report["throughput"]["tokens_per_s"] > 0 and report["throughput"]["mfu"] is None  # no known peak on a CPU

    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(13))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "memory_gb", "step_ms", "position"} <= set(records[1])
    assert {"val_loss", "val_ppl"} <= set(records[0]) and {"val_loss", "val_ppl"} <= set(records[6])
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["step"] for s in samples] == [0, 6, 12] and all(isinstance(s["text"], str) for s in samples)
    assert report["figures"] == ["loss.svg", "lr.svg", "grad_norm.svg"]
    for name in report["figures"]:
        svg = ET.parse(out / name).getroot()  # a line through the logged steps, inside the axes
        assert any(p.get("clip-path") and " L " in p.get("d") for p in svg.iter("{http://www.w3.org/2000/svg}path"))
    # A golden checkpoint of step 6 is kept apart, beside the last regular ones.
    assert (root / "work" / "checkpoints" / "golden" / "step-00000006" / MARKER).is_file()
    assert sorted(p.name for p in (root / "work" / "checkpoints").glob("step-*")) == ["step-00000006", "step-00000012"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenmill")
    cli.register(parser.add_subparsers())
    return parser


def test_cli_trains_from_a_run_config_and_resumes(tmp_path, corpus):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "seed": 3,
        "data": {"sources": []},  # another stage's section: left alone
        "model": {"preset": "tiny-nano"},
        "pretrain": pretrain_fields(steps=4, decay_end=6, checkpoint_every=2),
    }))
    common = [str(config), "--tokens", str(corpus["tokens"]), "--tokenizer", str(corpus["tokenizer"])]
    common += ["--output", str(tmp_path / "out")]
    args = _parser().parse_args(["pretrain", *common, "--set", "pretrain.lr=2e-3"])
    assert args.func(args) == 0
    out = tmp_path / "out"
    model = json.loads((out / "model" / "model.json").read_text())
    assert model["vocab_size"] == Tokenizer.load(corpus["tokenizer"]).vocab_size and model["d_model"] == 64
    assert [r["lr"] for r in read_jsonl(out / "metrics.jsonl")[1:3]] == pytest.approx([2e-3 / 3, 2 * 2e-3 / 3])
    first = step_losses(out)

    args = _parser().parse_args(["pretrain", *common, "--resume", "--set", "pretrain.steps=6"])
    assert args.func(args) == 0
    again = step_losses(out)
    assert sorted(again) == list(range(1, 7)) and all(again[s] == first[s] for s in first)
    assert json.loads((out / "report.json").read_text())["steps"] == 6

    with pytest.raises(ConfigError, match="unknown key 'pretrain.learning_rate'"):
        bad = _parser().parse_args(["pretrain", *common, "--set", "pretrain.learning_rate=1"])
        bad.func(bad)


def test_cli_continues_pretraining_a_model_folder(tmp_path, stage_run, corpus):
    """--init: the folder's architecture, weights and tokenizer; one step at a vanishing learning
    rate leaves its weights as they were (a random init would not be near them)."""
    start = stage_run[0] / "out" / "model"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"pretrain": pretrain_fields(steps=1, decay_end=1, lr=1e-12, eval_every=1)}))
    args = _parser().parse_args(["pretrain", str(config), "--init", str(start), "--tokens", str(corpus["tokens"]),
                                 "--output", str(tmp_path / "out")])
    assert args.func(args) == 0
    before, after = load_model(start, device="cpu").state_dict(), load_model(tmp_path / "out" / "model", device="cpu").state_dict()
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], atol=1e-6, rtol=0)
    assert (tmp_path / "out" / "model" / "tokenizer.json").read_bytes() == (start / "tokenizer.json").read_bytes()

    with pytest.raises(TokenmillError, match="not both"):
        bad = _parser().parse_args(["pretrain", str(config), "--init", str(start), "--model", str(start),
                                    "--tokens", str(corpus["tokens"]), "--output", str(tmp_path / "bad")])
        bad.func(bad)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_train_like_fp32(tmp_path, model_config, corpus, precision):
    def run(name, **fields):
        work = tmp_path / name
        train_here(model_config, corpus, work, tokenizer=False, steps=4, **fields)
        return step_losses(work)

    fp32, half = run("fp32"), run(precision, precision=precision)
    assert fp32 != half  # autocast did change the arithmetic
    assert max(abs(fp32[s] - half[s]) for s in fp32) < 0.05
    if precision == "fp16":  # the loss scale is part of the saved state
        marker = json.loads((tmp_path / precision / "checkpoints" / "step-00000004" / MARKER).read_text())
        assert marker["state"]["scaler"]["scale"] > 0


def test_samples_never_move_the_training_rng(tmp_path, model_config, corpus):
    """With dropout drawing from the global RNG, a run that samples (top-k, at every evaluation)
    trains exactly as one that does not sample at all."""
    config = model_config.model_copy(update={"dropout": 0.1})
    runs = {}
    for name, fields in [("sampling", dict(sample_tokens=6, sample_top_k=5)), ("silent", dict(sample_tokens=0))]:
        work = tmp_path / name
        train_here(config, corpus, work, steps=4, eval_every=1, **fields)
        runs[name] = step_losses(work)
    assert len(read_jsonl(tmp_path / "sampling" / "samples.jsonl")) == 5
    assert runs["sampling"] == runs["silent"]


def test_compiled_blocks_train_like_eager(tmp_path, model_config, corpus, monkeypatch):
    # Inductor's code generation takes a minute on a small CPU; AOT-eager traces the same graphs
    # (forward and backward) through dynamo without generating code.
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda *args, **kw: compile_(*args, **{**kw, "backend": "aot_eager"}))
    fields = dict(steps=3, sample_tokens=0)
    runs = {}
    for name, compiled in [("eager", False), ("compiled", True)]:
        work = tmp_path / name
        train_here(model_config, corpus, work, tokenizer=False, compile=compiled, **fields)
        runs[name] = step_losses(work)
    assert max(abs(runs["eager"][s] - runs["compiled"][s]) for s in range(1, 4)) < 1e-5
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # the blocks and the loss were compiled
