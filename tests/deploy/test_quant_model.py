"""Whole models: save and load with identical logits, the CLI end to end, calibration sources, the stage."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from tokenmill.deploy.quant import QuantizeConfig, quantize_stage
from tokenmill.deploy.quant.calib import calibration_ids
from tokenmill.deploy.quant.cli import register
from tokenmill.deploy.quant.evaluate import layer_bytes
from tokenmill.deploy.quant.quantize import quantize_model, scheme_for
from tokenmill.deploy.quant.save import save_quantized
from tokenmill.errors import TokenmillError
from tokenmill.model import build_model, load_model, load_preset, save_model, tiny
from tokenmill.model.generate import generate
from tokenmill.model.quant.io import load_quantized, read_quantization
from tokenmill.model.quant.linear import QuantLinear
from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document
from tokenmill.tokenizer.tokens import TokenShardWriter

WORDS = ["<|pad|>", "<|bos|>", "<|eos|>"] + [f"w{i}" for i in range(60)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny LLaMA-style model (GQA, SwiGLU) with a word-level tokenizer.json."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    save_model(build_model(tiny(load_preset("mistral-7b")), "cpu"), folder)
    tokenizer = HFTokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="w0"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    """Token shards whose documents follow a fixed random walk, so the stream has structure."""
    folder = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    for split, n_docs in (("train", 40), ("val", 12)):
        writer = TokenShardWriter(folder, split, np.dtype("<u2"), shard_tokens=100_000)
        docs = [np.concatenate([[1], (np.cumsum(rng.integers(1, 4, 80)) % 200) + 8, [2]]) for _ in range(n_docs)]
        writer.write(np.concatenate(docs), np.array([len(d) for d in docs]))
        writer.close()
    return folder


@pytest.fixture(scope="module")
def calib(tokens_dir):
    return calibration_ids(tokens_dir, 8, 64)


def greedy_without_cache(model, prompt: torch.Tensor, n: int) -> list[int]:
    ids = prompt
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], dim=1)
    return ids[0, prompt.shape[1]:].tolist()


@pytest.mark.parametrize("method,symmetric", [("int8", True), ("int8", False), ("rtn4", False), ("gptq", True), ("awq", False)])
@torch.no_grad()
def test_save_load_round_trip_gives_identical_logits(method, symmetric, model_dir, calib, tmp_path):
    model = load_model(model_dir, device="cpu")
    info = quantize_model(model, method, scheme_for(method, 32, symmetric), calib, batch_size=4, awq_grid=5)
    save_quantized(model, tmp_path, info)
    loaded = load_model(tmp_path, device="cpu")  # the model package dispatches on quantization.json
    assert isinstance(loaded.layers[1].ffn.w2, QuantLinear)
    assert torch.equal(loaded(calib), model(calib))
    stored = read_quantization(tmp_path)
    assert stored["method"] == method and stored["bits"] == (8 if method == "int8" else 4)
    assert len(stored["modules"]) == 2 * 5 and stored["symmetric"] == symmetric
    stored_bytes, fp32_bytes = layer_bytes(loaded)
    assert fp32_bytes / stored_bytes >= (3.5 if method == "int8" else 6.5)


@torch.no_grad()
def test_loading_in_bfloat16_keeps_codes_and_scales(model_dir, calib, tmp_path):
    model = load_model(model_dir, device="cpu")
    save_quantized(model, tmp_path, quantize_model(model, "rtn4", scheme_for("rtn4", 32)))
    half = load_quantized(tmp_path, device="cpu", dtype=torch.bfloat16)
    layer = half.layers[0].attn.wqkv
    assert layer.qweight.dtype == torch.uint8 and layer.scales.dtype == torch.float16
    assert half.tok_embeddings.weight.dtype == torch.bfloat16
    torch.testing.assert_close(half(calib).float(), model(calib), rtol=0.1, atol=0.1)


def test_quantize_cli_end_to_end(model_dir, tokens_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tokenmill")
    register(parser.add_subparsers())
    out = tmp_path / "int4"
    args = parser.parse_args(["quantize", str(model_dir), "--method", "gptq", "--output", str(out), "--group-size", "32",
                              "--calib", str(tokens_dir), "--samples", "8", "--seq-len", "64", "--eval", "--eval-batches", "1"])
    assert args.func(args) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["method"] == "gptq" and metrics["layer_compression"] > 6.5
    assert {p.name for p in out.iterdir()} >= {"model.json", "model.safetensors", "quantization.json", "tokenizer.json",
                                                "eval.json", "eval_perplexity.svg", "eval_decode_batch16.svg", "layers.svg"}
    rows = json.loads((out / "eval.json").read_text())
    assert list(rows) == ["fp32", "bf16", "int8", "int4-rtn", "int4-gptq", "int4-awq"]
    assert rows["int4-gptq"]["perplexity"] == metrics["perplexity"] and rows["fp32"]["perplexity_change"] == 0
    assert rows["int8"]["file_bytes"] < rows["bf16"]["file_bytes"] < rows["fp32"]["file_bytes"]
    assert all(math.isfinite(r["perplexity"]) and r["decode_tok_s_batch1"] > 0 and r["decode_tok_s_batch16"] > 0 for r in rows.values())
    calibration = read_quantization(out)["calibration"]
    assert calibration["samples"] == 8 and calibration["seq_len"] == 64

    with torch.no_grad():
        model = load_model(out, device="cpu")
        prompt = torch.tensor([[1, 8, 10, 11]])
        generated = generate(model, prompt.tolist(), 12, temperature=0).response_ids(0)
        assert generated == greedy_without_cache(model, prompt, 12)
        assert all(0 <= t < model.config.vocab_size for t in generated)


def test_calibration_from_documents(model_dir, tmp_path):
    with ShardWriter(tmp_path / "curated" / "shards") as writer:
        for i in range(30):
            writer.write(Document(id=str(i), text=" ".join(f"w{(i + j) % 60}" for j in range(20)), source="web"))
    ids = calibration_ids(tmp_path / "curated", 6, 16, seed=1, tokenizer_dir=model_dir)
    assert ids.shape == (6, 16) and ids.dtype == torch.long
    assert int(ids.min()) >= 1 and int(ids.max()) < len(WORDS)
    assert torch.equal(ids, calibration_ids(tmp_path / "curated", 6, 16, seed=1, tokenizer_dir=model_dir))
    with pytest.raises(TokenmillError, match="tokenizer.json"):
        calibration_ids(tmp_path / "curated", 6, 16)
    with pytest.raises(TokenmillError, match="no calibration data"):
        calibration_ids(tmp_path, 6, 16, tokenizer_dir=model_dir)


def test_quantize_without_calib_samples_the_builtin_corpus_and_says_so(model_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tokenmill")
    register(parser.add_subparsers())
    out = tmp_path / "gptq"
    args = parser.parse_args(["quantize", str(model_dir), "--method", "gptq", "-o", str(out), "--group-size", "32",
                              "--samples", "4", "--seq-len", "32"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert "calibration: 4 samples of 32 tokens (128 tokens) from built-in corpus (local: code, reference)" in captured.err
    used = json.loads(captured.out)["calibration"]
    assert used == read_quantization(out)["calibration"]
    assert used["samples"] == 4 and used["tokens"] == 128 and used["documents"] > 0 and used["seed"] == 0
    assert sum(isinstance(m, QuantLinear) for m in load_model(out, device="cpu").modules()) == 10


def test_quantize_stage(model_dir, tokens_dir, tmp_path):
    config = QuantizeConfig(method="awq", group_size=32, calib_samples=4, calib_seq_len=32, awq_grid=4, eval=False)
    metrics = quantize_stage(model_dir, tokens_dir, config, tmp_path / "08_quantize")
    assert metrics["method"] == "awq" and metrics["bits"] == 4 and metrics["file_bytes"] < metrics["source_file_bytes"]
    assert (tmp_path / "08_quantize" / "layers.svg").is_file()
    model = load_model(tmp_path / "08_quantize" / "model", device="cpu")
    assert read_quantization(tmp_path / "08_quantize" / "model")["calibration"]["source"] == str(tokens_dir)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 10


def test_user_errors_are_clear(model_dir, tokens_dir, tmp_path):
    quantize_stage(model_dir, tokens_dir, QuantizeConfig(method="int8", eval=False), tmp_path / "b")
    with pytest.raises(TokenmillError, match="already quantized"):
        quantize_stage(tmp_path / "b" / "model", tokens_dir, QuantizeConfig(method="int8", eval=False), tmp_path / "c")
    with pytest.raises(TokenmillError, match="unknown quantization method"):
        scheme_for("int3")
    with pytest.raises(Exception, match="extra"):
        QuantizeConfig(methd="gptq")
