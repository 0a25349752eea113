"""GGUF export read back with the gguf package's own reader and dequantization: the same weights
and greedy tokens as tokenmill's dequantized model, and the tokenizer and chat template in the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from quant_helpers import dequantized, quantized

from tokenmill.deploy.quant.export_gguf import write_gguf
from tokenmill.deploy.quant.quantize import quantize_model, scheme_for
from tokenmill.errors import TokenmillError
from tokenmill.model import build_model, load_model
from tokenmill.model.config import ModelConfig
from tokenmill.model.generate import generate

# llama.cpp's tensor names (convert_hf_to_gguf.py), written out here rather than taken from the exporter.
BLOCK_NAMES = {"attn_norm": "attn_norm", "attn_output": "attn.wo", "ffn_norm": "ffn_norm",
               "ffn_gate": "ffn.w1", "ffn_up": "ffn.w3", "ffn_down": "ffn.w2"}


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def rebuilt_from_gguf(path):
    """A tokenmill model built from the GGUF's metadata and its tensors dequantized by gguf, with the
    query and key rows taken back from llama.cpp's interleaved rotary pairs to the half-split layout."""
    reader = GGUFReader(path)
    arch = field(reader, "general.architecture")
    assert arch == "llama"
    n_heads, n_kv = field(reader, "llama.attention.head_count"), field(reader, "llama.attention.head_count_kv")
    config = ModelConfig(
        vocab_size=len(field(reader, "tokenizer.ggml.tokens")), context_length=field(reader, "llama.context_length"),
        d_model=field(reader, "llama.embedding_length"), n_layers=field(reader, "llama.block_count"),
        n_heads=n_heads, n_kv_heads=n_kv, d_ff=field(reader, "llama.feed_forward_length"),
        norm_eps=field(reader, "llama.attention.layer_norm_rms_epsilon"), rope_theta=field(reader, "llama.rope.freq_base"),
        position="rope", mlp="swiglu", norm="rmsnorm", tie_embeddings="output.weight" not in {t.name for t in reader.tensors},
    )
    tensors = {}
    for t in reader.tensors:
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
        tensors[t.name] = w.reshape([int(x) for x in reversed(t.shape)])
    hd = config.head_dim

    def half_split(w, heads):  # inverse of the permutation in llama.cpp's LlamaModel.permute
        return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)

    state = {"tok_embeddings.weight": tensors["token_embd.weight"], "norm.weight": tensors["output_norm.weight"]}
    if not config.tie_embeddings:
        state["output.weight"] = tensors["output.weight"]
    for i in range(config.n_layers):
        for theirs, ours in BLOCK_NAMES.items():
            state[f"layers.{i}.{ours}.weight"] = tensors[f"blk.{i}.{theirs}.weight"]
        q, k, v = (tensors[f"blk.{i}.attn_{x}.weight"] for x in "qkv")
        assert q.shape[0] == n_heads * hd and k.shape[0] == n_kv * hd
        state[f"layers.{i}.attn.wqkv.weight"] = torch.cat([half_split(q, n_heads), half_split(k, n_kv), v])
    model = build_model(config, "cpu").eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k == "output.weight" for k in missing)
    return model, reader


@pytest.mark.parametrize("method,gguf_type", [("int8", GGMLQuantizationType.Q8_0), ("rtn4", GGMLQuantizationType.Q4_0),
                                              ("gptq", GGMLQuantizationType.Q4_0)])
@torch.no_grad()
def test_gguf_round_trip_gives_the_dequantized_model(method, gguf_type, model_dir, tmp_path):
    model = quantized(model_dir, method)
    path = write_gguf(model, model_dir, tmp_path / "model.gguf", "tiny-llama")
    rebuilt, reader = rebuilt_from_gguf(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == gguf_type
    assert types["token_embd.weight"] == GGMLQuantizationType.F32
    reference = dequantized(model)
    expected = reference.state_dict()
    for key, value in rebuilt.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    prompt = [[1, 5, 9, 14, 3]]
    ours = generate(reference, prompt, 16, temperature=0).response_ids(0)
    assert generate(rebuilt, prompt, 16, temperature=0).response_ids(0) == ours
    # The kernels of the quantized model itself pick the same tokens here too.
    assert generate(model, prompt, 16, temperature=0).response_ids(0) == ours


def test_gguf_holds_the_tokenizer_and_chat_template(model_dir, tokenizer, tmp_path):
    path = write_gguf(quantized(model_dir, "rtn4"), model_dir, tmp_path / "model.gguf", "tiny-llama")
    reader = GGUFReader(path)
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert all(tokens[i] == token for token, i in spec["model"]["vocab"].items())
    assert [tokens[t["id"]] for t in spec["added_tokens"]] == [t["content"] for t in spec["added_tokens"]]
    assert len(field(reader, "tokenizer.ggml.merges")) == len(spec["model"]["merges"])
    assert field(reader, "tokenizer.ggml.bos_token_id") == tokenizer.bos_id
    assert field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_id
    assert field(reader, "tokenizer.ggml.eot_token_id") == tokenizer.end_id != tokenizer.eos_id
    template = json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]
    assert field(reader, "tokenizer.chat_template") == template


def test_gguf_refuses_what_q8_0_and_q4_0_cannot_hold(model_dir, tmp_path):
    model = load_model(model_dir, device="cpu", dtype=torch.float32)
    quantize_model(model, "rtn4", scheme_for("rtn4", 32, symmetric=False))
    with pytest.raises(TokenmillError, match="asymmetric"):
        write_gguf(model, model_dir, tmp_path / "a.gguf", "x")
    with pytest.raises(TokenmillError, match="multiples of 32"):
        write_gguf(quantized(model_dir, "rtn4", group_size=16), model_dir, tmp_path / "b.gguf", "x")
    assert not list(tmp_path.iterdir())
