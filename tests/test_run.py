import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from jsonl_files import write_jsonl

from tokenmill.config import load_config, shipped_config
from tokenmill.errors import TokenmillError
from tokenmill.run import find_stage, run_pipeline
from tokenmill.shards import read_shards, shard_paths


def config_for(run_dir: Path, corpus: Path, *extra: str):
    return load_config(
        None,
        [f"run_dir={run_dir}", f"data.sources=[{{kind: jsonl, paths: ['{corpus}']}}]", *extra],
    )


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_stage_records_manifest_and_skips_when_unchanged(tmp_path, jsonl_corpus, capsys):
    run_dir = tmp_path / "run"
    run_pipeline(config_for(run_dir, jsonl_corpus), to_stage="data")
    entry = manifest(run_dir)["stages"]["01_data"]
    assert entry["status"] == "done"
    assert entry["metrics"]["documents"] == 50
    assert entry["figures"] == ["domains.svg"]
    assert set(entry["outputs"]) == {"stats.json", "domains.svg", "shards/shard-00000.jsonl.zst"}
    assert entry["wall_time_s"] > 0
    assert (run_dir / "config.yaml").exists()

    capsys.readouterr()
    run_pipeline(config_for(run_dir, jsonl_corpus), to_stage="data")
    assert "[01_data] up to date, skipped" in capsys.readouterr().err
    assert manifest(run_dir)["stages"]["01_data"]["finished_at"] == entry["finished_at"]


def test_changed_config_or_input_reruns(tmp_path, jsonl_corpus, capsys):
    run_dir = tmp_path / "run"
    run_pipeline(config_for(run_dir, jsonl_corpus), to_stage="data")
    capsys.readouterr()
    run_pipeline(config_for(run_dir, jsonl_corpus, "data.shard_bytes=100"), to_stage="data")
    assert "up to date" not in capsys.readouterr().err
    assert len(manifest(run_dir)["stages"]["01_data"]["outputs"]) > 3  # many small shards now

    time.sleep(0.01)
    write_jsonl(jsonl_corpus, ["a changed corpus"])
    run_pipeline(config_for(run_dir, jsonl_corpus, "data.shard_bytes=100"), to_stage="data")
    assert "up to date" not in capsys.readouterr().err
    assert manifest(run_dir)["stages"]["01_data"]["metrics"]["documents"] == 1


def test_damaged_output_reruns(tmp_path, jsonl_corpus, capsys):
    run_dir = tmp_path / "run"
    run_pipeline(config_for(run_dir, jsonl_corpus), to_stage="data")
    (run_dir / "01_data" / "shards" / "shard-00000.jsonl.zst").write_bytes(b"torn")
    capsys.readouterr()
    run_pipeline(config_for(run_dir, jsonl_corpus), to_stage="data")
    assert "up to date" not in capsys.readouterr().err
    assert len(list(read_shards(shard_paths(run_dir / "01_data" / "shards")))) == 50


def test_from_and_to(tmp_path, jsonl_corpus, capsys):
    run_dir = tmp_path / "run"
    run_pipeline(config_for(run_dir, jsonl_corpus), to_stage="data")
    capsys.readouterr()
    run_pipeline(config_for(run_dir, jsonl_corpus), from_stage="01", to_stage="data")
    assert "up to date" not in capsys.readouterr().err
    assert find_stage("01_data") == find_stage("data") == find_stage("1") == 0
    with pytest.raises(TokenmillError, match="unknown stage 'tokenise'.*01_data"):
        find_stage("tokenise")


def test_sigkill_mid_stage_then_resume(tmp_path):
    """Kill a run while stage 01 is writing shards; the next run must not trust any of it."""
    corpus = write_jsonl(tmp_path / "big.jsonl", [f"line {i} " + "word " * 200 for i in range(40_000)])
    run_dir = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"run_dir: {run_dir}\ndata:\n  shard_bytes: 200000\n  sources:\n    - kind: jsonl\n      paths: ['{corpus}']\n"
    )
    command = [sys.executable, "-m", "tokenmill", "run", str(cfg), "--to", "data"]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    staged: list[Path] = []
    # Wait until complete shards exist in the stage's temporary folder: the stage is half done.
    while time.time() < deadline and proc.poll() is None:
        staged = [p for p in run_dir.glob("01_data.tmp-*/shards/*.jsonl.zst")]
        if len(staged) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make the corpus bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(staged) >= 3
    assert manifest(run_dir)["stages"]["01_data"]["status"] == "running"
    assert not (run_dir / "01_data").exists()

    out = subprocess.run(command, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "removed unfinished 01_data.tmp-" in out.stderr
    assert not list(run_dir.glob("*.tmp-*"))
    docs = list(read_shards(shard_paths(run_dir / "01_data" / "shards")))
    assert len(docs) == 40_000 and docs[-1].text.startswith("line 39999 ")
    assert len({d.id for d in docs}) == 40_000
    assert manifest(run_dir)["stages"]["01_data"]["status"] == "done"


def test_whole_pipeline_and_downstream_invalidation(tmp_path, capsys):
    """01 -> 04 on a slice of the built-in corpus; a tokenizer change re-runs only what follows it."""
    preset = shipped_config("quickstart")
    small = [f"run_dir={tmp_path / 'run'}", "data.sources.0.max_bytes=1500000", "tokenizer.vocab_size=1024"]
    run_pipeline(load_config(preset, small), to_stage="04_model")
    stages = manifest(tmp_path / "run")["stages"]
    assert list(stages) == ["01_data", "02_curate", "03_tokenizer", "03_encode", "04_model"]
    assert all(s["status"] == "done" for s in stages.values())
    assert stages["04_model"]["metrics"]["vocab_size"] == 1024
    assert stages["03_encode"]["inputs"]["03_tokenizer"] == stages["03_tokenizer"]["output_fingerprint"]

    capsys.readouterr()
    run_pipeline(load_config(preset, [*small[:2], "tokenizer.vocab_size=2048"]), to_stage="04_model")
    log = capsys.readouterr().err
    assert "[01_data] up to date, skipped" in log and "[02_curate] up to date, skipped" in log
    for rerun in ("03_tokenizer", "03_encode", "04_model"):
        assert f"[{rerun}] done" in log
    assert manifest(tmp_path / "run")["stages"]["04_model"]["metrics"]["vocab_size"] == 2048
    # The closing table says which stages this run re-ran, with each one's key figure.
    summary = {row["stage"]: row for row in json.loads((tmp_path / "run" / "summary.json").read_text())}
    assert [name for name, row in summary.items() if row["ran"]] == ["03_tokenizer", "03_encode", "04_model"]
    assert summary["03_tokenizer"]["figure"] == "bpe vocabulary 2,048"
    assert re.search(r"^04_model +ran +[0-9.]+ s  [0-9,]+ parameters$", log, re.M)
    assert re.search(r"^01_data +skipped +[0-9.]+ s  [0-9,]+ documents", log, re.M)


def test_pretrain_and_quantize_stages(tmp_path):
    """Stages 05 and 08 in the pipeline, tiny: a trained model folder, then its INT4 GPTQ copy."""
    preset = shipped_config("quickstart")
    tiny = [
        f"run_dir={tmp_path / 'run'}", "data.sources.0.max_bytes=1000000", "tokenizer.vocab_size=512",
        "model.context_length=64", "pretrain.steps=6", "pretrain.batch_tokens=256", "pretrain.micro_batch=4",
        "pretrain.warmup_steps=2", "pretrain.eval_every=3", "pretrain.eval_batches=2", "pretrain.checkpoint_every=3",
        "pretrain.golden_every=6", "quantize.eval=false", "quantize.calib_samples=8", "quantize.calib_seq_len=64",
        "align.builtin.train_items=48", "align.builtin.eval_items=16", "align.sft.steps=3", "align.sft.samples=1",
        "align.rm.steps=3", "align.dpo.steps=3", "align.ppo.steps=2", "align.ppo.batch_size=4",
        "align.ppo.minibatch_size=2", "align.ppo.max_new_tokens=8", "align.ppo.eval_prompts=4",
        "align.cai.max_prompts=2", "align.cai.answer_tokens=8", "align.cai.critique_tokens=8",
        "eval.items=8", "eval.bytes_per_domain=300",
    ]
    run_pipeline(load_config(preset, tiny))
    stages = manifest(tmp_path / "run")["stages"]
    assert stages["05_pretrain"]["status"] == stages["06_align"]["status"] == stages["08_quantize"]["status"] == "done"
    assert stages["05_pretrain"]["metrics"]["steps"] == 6
    # Stage 09 tables every model of the run on the same tasks.
    assert list(stages["09_eval"]["metrics"]["table"]["models"]) == ["pretrained", "sft", "dpo", "ppo", "quantized"]
    assert (tmp_path / "run" / "05_pretrain" / "model" / "model.safetensors").is_file()
    align = tmp_path / "run" / "06_align"
    for method in ("sft", "rm", "dpo", "ppo"):
        assert (align / method / "model.safetensors").is_file() and (align / method / "metrics.jsonl").is_file()
    assert (align / "rm" / "reward_head.safetensors").is_file()
    for name in ("critiques", "sft", "pref"):
        assert (align / "cai" / f"{name}.jsonl").is_file()
    figures = stages["06_align"]["metrics"]
    assert 0 <= figures["rm_accuracy"] <= 1 and 0 <= figures["dpo_win_rate"] <= 1 and 0 <= figures["ppo_win_rate"] <= 1
    assert figures["win_rate_prompts"] == 4
    assert (tmp_path / "run" / "08_quantize" / "model" / "quantization.json").is_file()
    from tokenmill.model import load_model
    from tokenmill.model.io import read_weights

    assert load_model(tmp_path / "run" / "08_quantize" / "model") is not None
    # Stage 08 quantizes the model stage 06 deploys (DPO's by default): the norms, kept in float, are DPO's.
    quantized, dpo, sft = (read_weights(folder)[1] for folder in
                           (tmp_path / "run" / "08_quantize" / "model", align / "dpo", align / "sft"))
    norms = [name for name in dpo if "norm" in name]
    assert norms and all(torch.equal(quantized[name], dpo[name]) for name in norms)
    assert not all(torch.equal(sft[name], dpo[name]) for name in norms)
