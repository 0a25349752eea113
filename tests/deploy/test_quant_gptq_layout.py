"""The Hugging Face GPTQ layout, read back by the layout's documented rules (written out here, apart
from the exporter) into a transformers model: its logits equal tokenmill's dequantized model's."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from quant_helpers import dequantized, quantized
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from tokenmill.deploy.quant.cli import register
from tokenmill.deploy.quant.export_gguf import write_gguf
from tokenmill.deploy.quant.export_gptq import write_hf_gptq
from tokenmill.deploy.quant.rtn import rtn
from tokenmill.model import build_model, save_model
from tokenmill.model.config import ModelConfig
from tokenmill.model.quant.grid import Scheme
from tokenmill.model.quant.io import replace_linear
from tokenmill.model.quant.linear import QuantLinear


def unpack_gptq(tensors: dict[str, torch.Tensor], module: str, bits: int, checkpoint_format: str) -> torch.Tensor:
    """W (out, in) of one module, as GPTQ loaders read it: qweight (in·bits/32, out) holds 32/bits codes per
    int32 along the inputs, lowest bits first; qzeros (groups, out·bits/32) likewise along the outputs, and
    the original format ("gptq") stores zero - 1; W[n, k] = scales[g_idx[k], n] · (q[k, n] - zero[g_idx[k], n])."""
    per, mask = 32 // bits, 2**bits - 1
    shifts = torch.arange(0, 32, bits)
    qweight, qzeros = tensors[f"{module}.qweight"].long(), tensors[f"{module}.qzeros"].long()
    q = ((qweight[:, None, :] >> shifts[None, :, None]) & mask).reshape(qweight.shape[0] * per, -1)
    zero = ((qzeros[:, :, None] >> shifts[None, None, :]) & mask).reshape(qzeros.shape[0], -1)
    if checkpoint_format == "gptq":
        zero = (zero + 1) & mask
    g_idx = tensors[f"{module}.g_idx"].long()
    scales = tensors[f"{module}.scales"].float()
    return (scales[g_idx] * (q - zero[g_idx]).float()).t()


def transformers_model_from_gptq(folder):
    """A plain transformers model of the checkpoint's config, with every GPTQ module unpacked to a weight."""
    config = json.loads((folder / "config.json").read_text())
    quant = config.pop("quantization_config")
    tensors = load_file(str(folder / "model.safetensors"))
    state = {k: v for k, v in tensors.items() if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))}
    for key in tensors:
        if key.endswith(".qweight"):
            module = key.removesuffix(".qweight")
            state[f"{module}.weight"] = unpack_gptq(tensors, module, quant["bits"], quant["checkpoint_format"])
    hf_config = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if "lm_head.weight" in missing:
        model.tie_weights()
    return model, quant


@pytest.mark.parametrize("method,group_size,symmetric,bits", [("gptq", 32, True, 4), ("rtn4", 64, False, 4),
                                                             ("int8", None, True, 8), ("int8", None, False, 8)])
@torch.no_grad()
def test_gptq_layout_unpacks_to_the_dequantized_model(method, group_size, symmetric, bits, model_dir, tmp_path):
    model = quantized(model_dir, method, group_size, symmetric)
    config = write_hf_gptq(model, model_dir, tmp_path / "gptq")
    assert config == {"quant_method": "gptq", "bits": bits, "group_size": group_size or -1, "desc_act": False,
                      "sym": symmetric, "checkpoint_format": "gptq" if symmetric else "gptq_v2",
                      "static_groups": False, "true_sequential": True}
    tensors = load_file(str(tmp_path / "gptq" / "model.safetensors"))
    qweight = tensors["model.layers.0.self_attn.k_proj.qweight"]
    assert qweight.dtype == torch.int32 and tensors["model.layers.0.self_attn.k_proj.qzeros"].dtype == torch.int32
    assert tensors["model.layers.0.mlp.down_proj.scales"].dtype == torch.float16
    if symmetric and bits == 4:
        assert (tensors["model.layers.0.self_attn.k_proj.qzeros"] == 0x77777777).all()
    hf, _ = transformers_model_from_gptq(tmp_path / "gptq")
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 7, 2, 11]])
    torch.testing.assert_close(hf(ids).logits, dequantized(model)(ids), rtol=1e-5, atol=1e-5)
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= {p.name for p in (tmp_path / "gptq").iterdir()}


def test_quantize_cli_writes_gguf_and_gptq(model_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tokenmill")
    register(parser.add_subparsers())
    for fmt, expected in (("gguf", "model.gguf"), ("gptq", "config.json")):
        args = parser.parse_args(["quantize", str(model_dir), "--method", "rtn4", "--group-size", "32", "-o",
                                  str(tmp_path / fmt), "--format", fmt])
        assert args.func(args) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert (tmp_path / fmt / expected).is_file() and metrics["file_bytes"] > 0


@torch.no_grad()
def test_a_quantized_head_is_written_dequantized(model_dir, tmp_path):
    """GPTQ checkpoints quantize the blocks only; GGUF gives the head its own tensor type."""
    folder = tmp_path / "untied"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "model.json").read_text())
    torch.manual_seed(1)
    save_model(build_model(ModelConfig(**{**config, "tie_embeddings": False}), "cpu"), folder)
    model = quantized(folder, "rtn4")
    head = model.output
    replace_linear(model, "output", QuantLinear.from_codes(*rtn(head.weight.data, Scheme(8, None)), Scheme(8, None)))
    write_hf_gptq(model, folder, tmp_path / "gptq")
    tensors = load_file(str(tmp_path / "gptq" / "model.safetensors"))
    assert "lm_head.qweight" not in tensors
    torch.testing.assert_close(tensors["lm_head.weight"], model.output.dequantize(), rtol=0, atol=0)
    hf, _ = transformers_model_from_gptq(tmp_path / "gptq")
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    torch.testing.assert_close(hf(ids).logits, dequantized(model)(ids), rtol=1e-5, atol=1e-5)
    reader = GGUFReader(write_gguf(model, folder, tmp_path / "model.gguf", "untied"))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["output.weight"] == GGMLQuantizationType.Q8_0 and types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q4_0
