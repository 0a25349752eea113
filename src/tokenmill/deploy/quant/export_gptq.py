"""Write a quantized model in the Hugging Face GPTQ layout, which transformers (through GPTQModel)
and vLLM load: a transformers checkpoint folder whose quantized linears hold, under their module's
name, for K inputs, N outputs, b bits and groups of g inputs,

    qweight  int32 (K·b/32, N)        the codes of W transposed, 32/b of them per int32 along the
                                      inputs: input k·(32/b) + j of column n at bits [b·j, b·j + b)
    qzeros   int32 (K/g, N·b/32)      the zero points, packed the same way along the outputs
    scales   float16 (K/g, N)
    g_idx    int32 (K,)               the group of each input (k // g: groups in input order)
    bias     the layer's bias, when it has one

and config.json's `quantization_config` (quant_method gptq, bits, group_size, desc_act, sym,
checkpoint_format). The weight is W[n, k] = scales[g_idx[k], n] · (q[k, n] - z[g_idx[k], n]),
where checkpoint_format "gptq" (the original, which every loader reads) stores z - 1 in qzeros
and "gptq_v2" stores z itself. Symmetric grids are written as "gptq" (z = 2^(b-1), stored
2^(b-1) - 1: the familiar 0x77777777 of 4-bit checkpoints); asymmetric ones as "gptq_v2", since
a zero point of 0 stored as -1 does not survive the original format's packing.

tokenmill's codes are GPTQ's (the same grid and float16 scales), so nothing is rounded again;
with act-order GPTQ still quantizes in static groups, so desc_act is false and g_idx is k // g.
The output head and embedding stay in full precision, as GPTQ checkpoints keep them (a head
tokenmill quantized is written dequantized).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tokenmill.errors import TokenmillError
from tokenmill.model.hf import family_for, weights_to_hf, write_hf_checkpoint
from tokenmill.model.io import state_dict_for_saving
from tokenmill.model.quant.linear import QuantLinear
from tokenmill.model.transformer import Transformer


def pack_int32(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Unsigned `bits`-bit values packed 32/bits to an int32 along `dim`, the first in the lowest bits."""
    per = 32 // bits
    v = values.to(torch.int64).movedim(dim, -1)
    if v.shape[-1] % per:
        raise TokenmillError(f"GPTQ layout: {v.shape[-1]} values do not fill whole int32 words of {per}")
    v = v.reshape(*v.shape[:-1], -1, per) & (2**bits - 1)
    words = (v << (bits * torch.arange(per))).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).movedim(-1, dim).contiguous()


def gptq_tensors(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, bits: int, group: int,
                 checkpoint_format: str) -> dict[str, torch.Tensor]:
    """qweight, qzeros, scales and g_idx of one module from its codes (out, in), zeros and scales (out, n_groups)."""
    stored_zeros = zeros.to(torch.int64) - (1 if checkpoint_format == "gptq" else 0)
    return {
        "qweight": pack_int32(codes.t(), bits, dim=0),
        "qzeros": pack_int32(stored_zeros.t(), bits, dim=1),
        "scales": scales.t().contiguous(),
        "g_idx": (torch.arange(codes.shape[1]) // group).to(torch.int32),
    }


def write_hf_gptq(model: Transformer, src: str | Path, dst: str | Path) -> dict:
    """Write `model` (quantized by tokenmill, one scheme for every layer) as a transformers GPTQ
    checkpoint folder `dst`, with the tokenizer files of the model folder `src`. Returns its
    quantization_config."""
    config = model.config
    family = family_for(config)
    if family.transposed:
        raise TokenmillError(f"GPTQ layout: {family.model_type} stores its linears transposed (Conv1D), which GPTQ loaders do not read")
    quant = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    # GPTQ checkpoints quantize the blocks only (quantization_config has no scheme for the head):
    # a quantized head is written as its dequantized weight.
    layers = {name: m for name, m in quant.items() if name.startswith("layers.")}
    schemes = {m.scheme for m in layers.values()}
    if len(schemes) != 1:
        raise TokenmillError(f"GPTQ layout: one quantization scheme for every layer, found {sorted(map(str, schemes)) or 'none'}")
    scheme = schemes.pop()
    checkpoint_format = "gptq" if scheme.symmetric else "gptq_v2"
    state = state_dict_for_saving(model)
    floats = {k: v for k, v in state.items() if k.rpartition(".")[0] not in quant or k.endswith(".bias")}
    dtype = next(t.dtype for t in floats.values() if t.is_floating_point())
    floats.update({f"{name}.weight": m.dequantize(dtype) for name, m in quant.items() if name not in layers})
    out = weights_to_hf(floats, config, family)
    # Codes, zeros and scales have one row per output channel, as the weight has, so the family's own
    # row splits and reorderings (fused QKV, gate and up) place them as they place the weight.
    parts = {kind: weights_to_hf({f"{n}.weight": getattr(m, kind)() for n, m in layers.items()}, config, family)
             for kind in ("codes", "zeros")}
    scales = weights_to_hf({f"{n}.weight": m.scales for n, m in layers.items()}, config, family)
    for key, codes in parts["codes"].items():
        module = key.removesuffix(".weight")
        tensors = gptq_tensors(codes, parts["zeros"][key], scales[key], scheme.bits, scheme.group(codes.shape[1]), checkpoint_format)
        out.update({f"{module}.{kind}": t for kind, t in tensors.items()})
    quantization_config = {
        "quant_method": "gptq", "bits": scheme.bits, "group_size": scheme.group_size or -1, "desc_act": False,
        "sym": scheme.symmetric, "checkpoint_format": checkpoint_format, "static_groups": False, "true_sequential": True,
    }
    write_hf_checkpoint(Path(src), dst, config, family, out, dtype, {"quantization_config": quantization_config})
    return quantization_config
