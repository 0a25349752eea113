"""Write a quantized model as one GGUF file, the format llama.cpp and Ollama load.

The quantized linears keep their codes: tokenmill's symmetric grid is GGUF's, so INT8 per channel
becomes Q8_0 and INT4 in groups becomes Q4_0 without rounding anything again.

    Q8_0: blocks of 32 weights, a float16 scale d and 32 int8 q:  w = d · q
    Q4_0: blocks of 32 weights, a float16 scale d and 16 bytes, weight j in the low nibble of
          byte j and weight j + 16 in its high nibble:             w = d · (q - 8)

and tokenmill's w = (code - zero) · scale with zero = 128 (INT8) or 8 (INT4): q = code - 128 and
q = code, and each block takes its group's scale (a group of 128 spans four blocks, so groups
must be whole blocks). Everything else (embedding, norms, an untied head that is not quantized)
is stored in F32.

Names and keys are llama.cpp's for the `llama` architecture (those of convert_hf_to_gguf.py): a
tensor's Hugging Face name is mapped by the gguf package's TensorNameMap, and the query and key
rows are permuted from the half-split rotary layout (rotate_half, tokenmill's and transformers')
into the interleaved pairs llama.cpp's `llama` rotary embedding reads. The tokenizer goes in as
a byte-level BPE (`gpt2`: tokens, token types, merges) with its special token ids (the end of a
chat turn as `eot`) and the chat template, which the gguf package's SpecialVocab reads from the folder's tokenizer files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from tokenmill.errors import TokenmillError
from tokenmill.model.config import ModelConfig
from tokenmill.model.hf import family_for
from tokenmill.model.io import state_dict_for_saving
from tokenmill.model.quant.grid import expand_groups
from tokenmill.model.quant.linear import QuantLinear
from tokenmill.model.transformer import Transformer
from tokenmill.tokenizer.tokenizer import Tokenizer

BLOCK = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]  # 32, as Q4_0's
TYPE_OF_BITS = {8: gguf.GGMLQuantizationType.Q8_0, 4: gguf.GGMLQuantizationType.Q4_0}
FILE_TYPE_OF_BITS = {8: gguf.LlamaFileType.MOSTLY_Q8_0, 4: gguf.LlamaFileType.MOSTLY_Q4_0}
# llama.cpp's names for the pre-tokenizer regexes a tokenmill BPE tokenizer is trained with
# ("gpt4" is cl100k's, which llama.cpp splits as Llama 3's `llama-bpe`).
PRE_TOKENIZER = {"gpt4": "llama-bpe", "gpt2": "gpt-2"}


@dataclass
class Codes:
    """A quantized weight as GGUF needs it: unsigned codes (out, in), float16 scales (out, n_groups)."""

    codes: torch.Tensor
    scales: torch.Tensor
    bits: int
    group: int

    def rows(self, index: torch.Tensor | slice) -> Codes:
        return Codes(self.codes[index], self.scales[index], self.bits, self.group)


def q8_0_blocks(codes: torch.Tensor, scales: torch.Tensor, group: int) -> np.ndarray:
    """Q8_0 bytes (out, in / 32 · 34) of INT8 codes (zero 128) with their group scales."""
    out, n = codes.shape
    d = expand_groups(scales, group, n)[:, ::BLOCK].contiguous().numpy().view(np.uint8).reshape(out, -1, 2)
    q = (codes.to(torch.int16) - 128).to(torch.int8).numpy().view(np.uint8).reshape(out, -1, BLOCK)
    return np.concatenate([d, q], axis=-1).reshape(out, -1)


def q4_0_blocks(codes: torch.Tensor, scales: torch.Tensor, group: int) -> np.ndarray:
    """Q4_0 bytes (out, in / 32 · 18) of INT4 codes (zero 8) with their group scales."""
    out, n = codes.shape
    d = expand_groups(scales, group, n)[:, ::BLOCK].contiguous().numpy().view(np.uint8).reshape(out, -1, 2)
    q = codes.numpy().astype(np.uint8).reshape(out, -1, BLOCK)
    packed = q[..., : BLOCK // 2] | (q[..., BLOCK // 2 :] << 4)
    return np.concatenate([d, packed], axis=-1).reshape(out, -1)


def interleave_rope_rows(n_heads: int, rows: int) -> torch.Tensor:
    """Row order that turns each head's [first half; second half] rotary layout into interleaved
    pairs (llama.cpp's LlamaModel.permute): new row 2j is old row j, new row 2j + 1 is old row j + hd/2."""
    half = rows // n_heads // 2
    return torch.arange(rows).reshape(n_heads, 2, half).transpose(1, 2).reshape(-1)


def check_exportable(model: Transformer) -> None:
    c = model.config
    try:
        family_for(c, "llama")
    except TokenmillError as e:
        raise TokenmillError(f"GGUF export writes the llama architecture, which cannot express this model: {e}") from None
    if c.rope_scaling not in ("none", "linear") or c.rotary_pct != 1:
        raise TokenmillError(f"GGUF export: RoPE scaling '{c.rope_scaling}' and partial rotary are not written yet")
    for name, m in model.named_modules():
        if not isinstance(m, QuantLinear):
            continue
        if not m.scheme.symmetric:
            raise TokenmillError(f"GGUF export: {name} has an asymmetric grid; Q8_0 and Q4_0 are symmetric (quantize without --asym)")
        if m.in_features % BLOCK or m.group % BLOCK:
            raise TokenmillError(
                f"GGUF export: {name} has {m.in_features} inputs in groups of {m.group}; Q8_0 and Q4_0 need both "
                f"to be multiples of {BLOCK} (--group-size 32, 64, 128, ...)")


def llama_tensors(model: Transformer) -> dict[str, torch.Tensor | Codes]:
    """Every tensor under its Hugging Face Llama name, Q and K rows already interleaved for llama.cpp."""
    c = model.config
    quant = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    ours: dict[str, torch.Tensor | Codes] = {}
    for key, t in state_dict_for_saving(model).items():
        module, _, kind = key.rpartition(".")
        if module not in quant or kind == "bias":
            ours[key] = t.float()
    for module, m in quant.items():
        ours[f"{module}.weight"] = Codes(m.codes(), m.scales, m.scheme.bits, m.group)
    modules = family_for(c, "llama").modules(c)
    names = {ours_name.format(i=i): theirs.format(i=i) for ours_name, theirs in modules.items() for i in range(c.n_layers)}
    out: dict[str, torch.Tensor | Codes] = {}
    q_rows, kv_rows = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    for key, t in ours.items():
        module, _, kind = key.rpartition(".")
        if module.endswith("attn.wqkv"):
            i = module.split(".")[1]
            edges = {"q": (0, q_rows, c.n_heads), "k": (q_rows, q_rows + kv_rows, c.n_kv_heads),
                     "v": (q_rows + kv_rows, q_rows + 2 * kv_rows, None)}
            for x, (lo, hi, heads) in edges.items():
                part = t.rows(slice(lo, hi)) if isinstance(t, Codes) else t[lo:hi]
                if heads is not None:
                    order = interleave_rope_rows(heads, hi - lo)
                    part = part.rows(order) if isinstance(part, Codes) else part[order]
                out[f"model.layers.{i}.self_attn.{x}_proj.{kind}"] = part
        elif module in names:
            out[f"{names[module]}.{kind}"] = t
        else:
            raise TokenmillError(f"GGUF export: no llama tensor for {key}")
    return out


def write_gguf(model: Transformer, tokenizer_dir: str | Path, path: str | Path, name: str) -> Path:
    """Write `model` (quantized by one of tokenmill's symmetric methods) and the tokenizer of
    `tokenizer_dir` to the GGUF file `path`."""
    check_exportable(model)
    c = model.config
    # The file type names the blocks' width; each tensor carries its own type (a head may differ).
    bits = {m.scheme.bits for name, m in model.named_modules() if isinstance(m, QuantLinear) and name.startswith("layers.")}
    if len(bits) != 1:
        raise TokenmillError(f"GGUF export needs the blocks quantized to one width, found bits {sorted(bits) or 'none'}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    writer = gguf.GGUFWriter(path.with_name(path.name + ".tmp"), arch)
    writer.add_name(name)
    _write_hyperparameters(writer, c)
    writer.add_file_type(FILE_TYPE_OF_BITS[bits.pop()])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_tokenizer(writer, Path(tokenizer_dir), c.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.n_layers)
    for hf_name, t in llama_tensors(model).items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise TokenmillError(f"GGUF export: llama.cpp has no name for {hf_name}")
        if isinstance(t, Codes):
            blocks = (q8_0_blocks if t.bits == 8 else q4_0_blocks)(t.codes, t.scales, t.group)
            writer.add_tensor(gguf_name, blocks, raw_shape=blocks.shape, raw_dtype=TYPE_OF_BITS[t.bits])
        else:
            writer.add_tensor(gguf_name, t.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path.with_name(path.name + ".tmp").replace(path)
    return path


def _write_hyperparameters(writer: gguf.GGUFWriter, c: ModelConfig) -> None:
    writer.add_context_length(c.context_length)
    writer.add_embedding_length(c.d_model)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.d_ff)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_vocab_size(c.vocab_size)
    if c.head_dim != c.d_model // c.n_heads:
        writer.add_key_length(c.head_dim)
        writer.add_value_length(c.head_dim)
    if c.rope_scaling == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(c.rope_factor)


def _write_tokenizer(writer: gguf.GGUFWriter, folder: Path, vocab_size: int) -> None:
    """Byte-level BPE from tokenizer.json: one token per embedding row (rows past the tokenizer are
    unused padding tokens, as convert_hf_to_gguf.py writes them)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TokenmillError(f"GGUF export needs the tokenizer: {path} is missing")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise TokenmillError(f"GGUF export writes byte-level BPE tokenizers (tokenmill's bpe, GPT-2, Llama 3, Qwen); {path} is not one")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, i in model["vocab"].items():
        if i < vocab_size:
            tokens[i], types[i] = token, gguf.TokenType.NORMAL
    for added in spec.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(folder))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)
    # The token that closes a chat turn, where it is not EOS: llama.cpp stops a reply there.
    tokenizer = Tokenizer.load(folder)
    if tokenizer.end_id is not None and tokenizer.end_id != tokenizer.eos_id:
        writer.add_eot_token_id(tokenizer.end_id)


def _pre_tokenizer(folder: Path) -> str:
    """llama.cpp's name of the folder's splitting regex: known for tokenmill's own tokenizers,
    `default` otherwise (llama.cpp then splits as GPT-2 does)."""
    meta = folder / "tokenmill_tokenizer.json"
    if meta.is_file():
        return PRE_TOKENIZER.get(json.loads(meta.read_text(encoding="utf-8"))["config"].get("pretokenizer"), "default")
    return "default"
