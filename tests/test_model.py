"""model.json validation, presets, the model folder, counting and planning, anatomy, and the CLI verbs."""

import argparse
import json

import numpy as np
import pytest
import torch

from tokenmill.errors import ConfigError, TokenmillError
from tokenmill.model import ModelSection, load_model, load_preset, save_model, tiny
from tokenmill.model.anatomy import (
    attention_patterns,
    format_breakdown,
    nearest_tokens,
    role_totals,
    tensor_rows,
)
from tokenmill.model.cli import register
from tokenmill.model.config import ModelConfig, make_config
from tokenmill.model.io import build_model
from tokenmill.model.plan import Layout, flops_per_token, make_layout, make_plan
from tokenmill.model.presets import preset_names
from tokenmill.model.stage import build_model_stage

GB = 1e9
SMALL = dict(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tokenmill")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


# --- model.json ---------------------------------------------------------------------------

@pytest.mark.parametrize("fields,message", [
    (dict(d_model=30), r"d_model \(30\) is not divisible by n_heads \(4\)"),
    (dict(n_kv_heads=3), r"n_heads \(4\) is not a multiple of n_kv_heads \(3\)"),
    (dict(n_kv_heads=8), r"n_heads \(4\) is not a multiple of n_kv_heads \(8\)"),
    (dict(rotary_pct=0.1), r"rotary_pct \(0.1\) × head_dim \(8\) = 0.8 rotated dimensions"),
    (dict(rope_scaling="yarn", rope_factor=4.0), "rope_scaling 'yarn' needs rope_original_context"),
    (dict(rope_scaling="linear"), "needs rope_factor > 1"),
    (dict(rope_factor=2.0), "rope_factor is set but rope_scaling is 'none'"),
    (dict(position="alibi", rope_scaling="linear", rope_factor=2.0), "apply to position 'rope', not 'alibi'"),
    (dict(norm="rmsnorm", norm_bias=True), "norm_bias: RMSNorm has no bias"),
    (dict(norm="layernorm", norm_unit_offset=True), "norm_unit_offset applies to norm 'rmsnorm'"),
    (dict(parallel_block=True, norm_place="post"), "parallel_block needs norm_place 'pre'"),
    (dict(parallel_shared_norm=True), "parallel_shared_norm applies only with parallel_block"),
    (dict(mlp="swiglu", gelu_approx="tanh"), "gelu_approx applies to mlp 'gelu' or 'geglu'"),
    (dict(position="sinusoidal", d_model=35, head_dim=8), r"sinusoidal positions pair sin and cos: d_model \(35\) must be even"),
    (dict(n_heads=0), r"n_heads: Input should be greater than 0"),
    (dict(mlp="mish"), r"mlp: Input should be 'gelu', 'relu', 'relu2', 'swiglu' or 'geglu'"),
    (dict(d_modle=32), r"unknown field 'd_modle'"),
    (dict(dropout=1.0), r"dropout: Input should be less than 1"),
    (dict(rope_scaling="llama3", rope_factor=8.0, rope_original_context=8), "needs rope_low_freq_factor and rope_high_freq_factor"),
    (dict(rope_scaling="llama3", rope_factor=8.0, rope_original_context=8, rope_low_freq_factor=4.0, rope_high_freq_factor=1.0),
     r"rope_high_freq_factor \(1.0\) must exceed rope_low_freq_factor \(4.0\)"),
    (dict(rope_low_freq_factor=1.0), "apply to rope_scaling 'llama3' only"),
    (dict(rope_scaling="llama3", rope_factor=8.0), "rope_scaling 'llama3' needs rope_original_context"),
    (dict(sliding_window_pattern=2), "sliding_window_pattern needs sliding_window"),
    (dict(sliding_window=4, sliding_window_pattern=1), r"sliding_window_pattern: Input should be greater than 1"),
    (dict(rope_local_theta=100.0), "rope_local_theta applies to position 'rope' with sliding_window set"),
    (dict(bias=True, qkv_bias=True), "qkv_bias is redundant with bias true"),
    (dict(post_norms=True, norm_place="post"), "post_norms applies to sequential pre-norm blocks"),
    (dict(attn_logit_softcap=0.0), r"attn_logit_softcap: Input should be greater than 0"),
])
def test_config_errors_name_the_field_and_the_reason(fields, message):
    with pytest.raises(ConfigError, match=message):
        make_config({**SMALL, **fields}, "model.json")


def test_config_fills_derived_fields():
    c = ModelConfig(**SMALL)
    assert (c.head_dim, c.n_kv_heads, c.d_ff, c.norm_bias, c.attention_kind) == (8, 4, 256, False, "MHA")
    assert ModelConfig(**SMALL, mlp="gelu", norm="layernorm").d_ff == 128 and ModelConfig(**SMALL, norm="layernorm").norm_bias
    assert ModelConfig(**{**SMALL, "d_model": 4096, "n_heads": 32}).d_ff == 11008  # LLaMA-7B: 2/3·4d up to 256
    assert ModelConfig(**SMALL, n_kv_heads=1).attention_kind == "MQA"


def test_presets_load_at_real_sizes_and_shrink_keeping_every_switch():
    names = preset_names()
    for family in ("gpt2", "llama-7b", "llama-13b", "llama-70b", "mistral-7b", "gemma-2b", "gemma-7b", "falcon-7b",
                   "mpt-7b", "bloom", "gpt-neox-20b", "pythia-160m", "transformer-base", "nano"):
        assert family in names
    assert load_preset("llama-70b").attention_kind == "GQA" and load_preset("falcon-7b").attention_kind == "MQA"
    assert load_preset("mpt-7b").position == load_preset("bloom").position == "alibi"
    assert load_preset("transformer-base").norm_place == "post"
    switches = [k for k in ModelConfig.model_fields if k not in (
        "vocab_size", "context_length", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
        "sliding_window", "rope_original_context")]
    for name in names:
        real, small = load_preset(name), load_preset(f"tiny-{name}")
        assert [getattr(small, k) for k in switches] == [getattr(real, k) for k in switches], name
        assert small.attention_kind == real.attention_kind
        assert sum(r["params"] for r in tensor_rows(small)) < 400_000


def test_preset_parameter_counts_match_the_published_models():
    def total(name):
        return sum(r["params"] for r in tensor_rows(load_preset(name)))
    assert total("gpt2") == 124_439_808
    assert total("llama-7b") == 6_738_415_616
    assert total("llama-70b") == 68_976_648_192
    assert total("mistral-7b") == 7_241_732_096
    assert total("gemma-7b") == 8_537_680_896
    assert total("falcon-7b") == 6_921_720_704
    assert total("bloom") == 176_247_271_424
    assert total("pythia-160m") == 162_322_944


def test_model_section_resolves_preset_overrides_and_tokenizer_vocab():
    c = ModelSection(preset="llama-7b", n_layers=2, d_model=256, n_heads=4).resolve(vocab_size=1000)
    assert (c.vocab_size, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff) == (1000, 2, 256, 4, 4, 64, 768)
    assert ModelSection(preset="tiny-falcon-7b").resolve().parallel_shared_norm
    with pytest.raises(ConfigError, match=r"vocab_size \(10\) is smaller than the tokenizer's vocabulary \(1000\)"):
        ModelSection(vocab_size=10).resolve(vocab_size=1000)
    with pytest.raises(ConfigError, match="unknown model preset 'llama-8b'"):
        ModelSection(preset="llama-8b").resolve()
    with pytest.raises(Exception, match="d_modle"):
        ModelSection(d_modle=3)


# --- the model folder ---------------------------------------------------------------------

def test_save_and_load_model_folder(tmp_path):
    config = load_preset("tiny-gpt2")
    torch.manual_seed(0)
    model = build_model(config, device="cpu").eval()
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m", device="cpu")
    assert loaded.output.weight is loaded.tok_embeddings.weight  # tied, stored once
    ids = torch.randint(0, config.vocab_size, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
    assert load_model(tmp_path / "m", dtype=torch.bfloat16).tok_embeddings.weight.dtype == torch.bfloat16


def test_load_model_names_a_mismatch(tmp_path):
    save_model(build_model(load_preset("tiny-llama-7b"), device="cpu"), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "model.json").read_text())
    (tmp_path / "m" / "model.json").write_text(json.dumps({**config, "n_layers": 3}))
    with pytest.raises(TokenmillError, match=r"missing \['layers.2"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text(json.dumps({**config, "d_ff": 96}))
    with pytest.raises(TokenmillError, match=r"layers.0.ffn.w1.weight has shape \(\d+, 64\), model.json implies \(96, 64\)"):
        load_model(tmp_path / "m")


# --- counting and planning ----------------------------------------------------------------

def test_plan_reproduces_the_figures_of_the_seed():
    llama7 = load_preset("llama-7b")
    rows = tensor_rows(llama7)
    embedding = next(r for r in rows if r["role"] == "embedding")
    assert embedding["shape"] == [32_000, 4_096] and embedding["params"] == 131_072_000  # "131M"

    plan7 = make_plan(llama7, "llama-7b", Layout(), seq_len=4096, users=100)
    assert plan7["serving"]["kv_per_token"] == 2 * 32 * 4096 * 2  # K and V, 32 layers, d 4096, fp16
    assert round(plan7["serving"]["kv_per_user"] / GB, 1) == 2.1  # "≈ 2.1 GB per user"
    assert 205 < plan7["serving"]["kv_users"] / GB < 215  # "≈ 210 GB for 100 users" (2.147 GB × 100)

    plan70 = make_plan(load_preset("llama-70b"), "llama-70b", Layout())
    fp32 = plan70["training"]["fp32"]
    assert 270 < fp32["weights"] / GB < 285  # "≈ 280 GB of weights"
    assert 545 < fp32["moments"] / GB < 565  # "≈ 560 GB of optimizer state"
    assert fp32["moments"] == 2 * fp32["weights"]


def test_plan_flops_and_layouts():
    c = load_preset("gpt2")
    f = make_plan(c, "gpt2", Layout(), seq_len=1024)["flops_per_token"]
    n = 124_439_808 - 1024 * 768 + 0  # everything but the position table is in a product (the tied head counts)
    n -= 12 * (2 * 2 * 768) + 2 * 768 + 12 * (3 * 768 + 768 + 4 * 768 + 768)  # minus norms and biases
    assert f["N"] == n
    assert f["training"] == 6 * n + 12 * 12 * 12 * 64 * 1024
    assert make_plan(load_preset("mistral-7b"), "m", Layout(), seq_len=32768)["flops_per_token"]["context"] == 4096

    c = load_preset("llama-70b")
    one = make_plan(c, "x", Layout(), seq_len=4096)["training"]["bf16-mixed"]
    split = make_plan(c, "x", make_layout(c, 64, None, 8, 2, True), seq_len=4096)["training"]["bf16-mixed"]
    assert split["weights"] == pytest.approx(one["weights"] / 64)
    assert split["activations"] < one["activations"] / 7
    with pytest.raises(TokenmillError, match=r"--gpus 10 is not a multiple of --tp 4 × --pp 1"):
        make_layout(c, 10, None, 4, 1, False)
    with pytest.raises(TokenmillError, match="--tp 3 does not divide the 64 attention heads"):
        make_layout(c, None, None, 3, 1, False)


def test_plan_attention_flops_follow_each_layers_window():
    """Gemma-style layers: every 2nd attends over all 64 tokens, the others over a window of 8."""
    config = ModelConfig(**{**SMALL, "context_length": 64, "n_layers": 4}, sliding_window=8, sliding_window_pattern=2)
    flops = flops_per_token(config, {"matmul": 100}, seq_len=64)
    assert flops["forward"] == 2 * 100 + 4 * 4 * 8 * (8 + 64 + 8 + 64) and flops["context"] == 36


def test_plan_cli_prints_the_seed_figures(capsys):
    assert run_cli("plan", "--preset", "llama-7b") == 0
    out = capsys.readouterr().out
    assert "embedding 131M" in out and "2.1 GB per user at 4,096 tokens" in out and "214.7 GB for 100 users" in out
    run_cli("plan", "--preset", "llama-70b", "--json")
    plan = json.loads(capsys.readouterr().out)
    assert round(plan["training"]["fp32"]["weights"] / GB, -1) == 280
    assert round(plan["training"]["fp32"]["moments"] / GB, -1) == 550  # 551.8 GB, "≈ 560 GB"
    run_cli("plan", "--preset", "llama-70b")
    out = capsys.readouterr().out
    assert "275.9 GB" in out and "551.8 GB" in out


# --- anatomy ------------------------------------------------------------------------------

def test_breakdown_roles_and_shares():
    rows = tensor_rows(load_preset("gpt2"))
    totals = role_totals(rows)
    assert set(totals) == {"embedding", "position embedding", "norm γ", "norm β", "W_QKV", "bias", "W_O", "FFN W1", "FFN W2", "head"}
    assert totals["W_QKV"]["params"] == 12 * 768 * 3 * 768 and totals["head"]["params"] == 0
    assert sum(t["share"] for t in totals.values()) == pytest.approx(1.0)
    roles = {"embedding", "norm γ", "W_QKV", "W_O", "FFN W1", "FFN W2", "FFN W3", "head"}
    assert set(role_totals(tensor_rows(load_preset("llama-7b")))) == roles
    text = format_breakdown(tensor_rows(load_preset("tiny-llama-7b")), every_tensor=True)
    assert "layers.1.ffn.w3.weight" in text


def test_inspect_cli_prints_the_per_role_breakdown(capsys):
    assert run_cli("inspect", "llama-7b") == 0
    out = capsys.readouterr().out
    assert "tok_embeddings.weight      embedding           32,000 × 4,096" in out and "131,072,000" in out
    assert "layers.*.attn.wqkv.weight" in out and "FFN W3" in out and "total" in out


def test_attention_patterns_nearest_tokens_and_inspect_with_weights(tmp_path, capsys):
    config = load_preset("tiny-llama-7b")
    torch.manual_seed(0)
    model = build_model(config, device="cpu").eval()
    with torch.no_grad():
        model.tok_embeddings.weight[5] = model.tok_embeddings.weight[9] * 2  # same direction
    save_model(model, tmp_path / "m")
    probs = attention_patterns(model, [1, 2, 3, 4])
    assert probs.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
    assert nearest_tokens(model, 9)[0] == (5, pytest.approx(1.0))

    assert run_cli("inspect", str(tmp_path / "m"), "--ids", "1,2,3,4", "--layer", "1", "--head", "2",
                   "--nearest", "9", "--out", str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "+1.0000  '5' (id 5)" in out
    saved = json.loads((tmp_path / "out" / "attention.json").read_text())
    assert saved["tokens"] == ["1", "2", "3", "4"] and np.array(saved["probs"]).shape == (2, 4, 4, 4)
    assert (tmp_path / "out" / "attention_L1_H2.svg").read_text().startswith("<svg")
    np.testing.assert_allclose(np.load(tmp_path / "out" / "attention.npz")["probs"], probs, rtol=1e-6)
    with pytest.raises(TokenmillError, match="has no tokenizer.json: give --ids"):
        run_cli("inspect", str(tmp_path / "m"), "--prompt", "hello")
    with pytest.raises(TokenmillError, match="has no weights"):
        run_cli("inspect", "tiny-gpt2", "--ids", "1,2")


def test_inspect_uses_the_tokenizer_when_present(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    config = load_preset("tiny-gpt2")
    save_model(build_model(config, device="cpu"), tmp_path / "m")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 5, trainers.BpeTrainer(vocab_size=200))
    tokenizer.save(str(tmp_path / "m" / "tokenizer.json"))
    run_cli("inspect", str(tmp_path / "m"), "--prompt", "the quick brown fox", "--nearest", "fox", "--out", str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "attention.json").read_text())["tokens"] == ["the", "quick", "brown", "fox"]
    assert "nearest to 'fox'" in capsys.readouterr().out


# --- stage 04 -----------------------------------------------------------------------------

def test_build_model_stage_and_model_cli(tmp_path, capsys):
    metrics = build_model_stage(ModelSection(preset="nano"), 1000, tmp_path / "04")
    assert sorted(p.name for p in (tmp_path / "04").iterdir()) == ["model.json", "params.json", "params.svg"]
    params = json.loads((tmp_path / "04" / "params.json").read_text())
    assert params["parameters"]["total"] == metrics["params"] == sum(r["params"] for r in tensor_rows(ModelSection().resolve(1000)))
    assert metrics["vocab_size"] == 1000 and metrics["kv_bytes_per_token"] == 2 * 4 * 2 * 32 * 2

    assert run_cli("model", "--config", str(tmp_path / "04" / "model.json"), "--set", "n_layers=1",
                   "-o", str(tmp_path / "again")) == 0
    assert json.loads((tmp_path / "again" / "model.json").read_text())["n_layers"] == 1
    assert "W_QKV" in capsys.readouterr().out
    with pytest.raises(TokenmillError, match=r"d_model \(90\) is not divisible by n_heads \(4\)"):
        run_cli("model", "--preset", "nano", "--set", "d_model=90", "-o", str(tmp_path / "bad"))
    with pytest.raises(TokenmillError, match="unknown field 'layers'"):
        run_cli("model", "--preset", "nano", "--set", "layers=2", "-o", str(tmp_path / "bad"))


def test_tiny_keeps_gqa_and_mqa():
    assert tiny(load_preset("llama-70b")).attention_kind == "GQA"
    assert tiny(load_preset("gemma-2b")).attention_kind == "MQA"
    assert tiny(load_preset("gemma-7b")).attention_kind == "MHA"
