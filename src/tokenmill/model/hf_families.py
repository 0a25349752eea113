"""The Hugging Face families tokenmill converts to and from, one class each.

A family says how its `config.json` maps to `ModelConfig` fields, which of its modules holds
each tokenmill module (`layers.{i}.attn.wo` ↔ `model.layers.{i}.self_attn.o_proj`), and how
it lays out the fused Q, K, V rows. The conversion itself is generic (hf.py).

QKV layouts: "separate" (q_proj, k_proj, v_proj), "concat" (one matrix, [Q; K; V], as
tokenmill), "per_head" (one matrix, [q₀ k₀ v₀ q₁ k₁ v₁ ...]: GPT-NeoX, BLOOM, Falcon MHA),
"grouped" (one matrix, per key/value head its queries then its key and value: Falcon's new
decoder architecture). A fused MLP input (Phi-3's gate_up_proj) stacks [W1; W3].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from tokenmill.errors import TokenmillError
from tokenmill.model.config import ModelConfig


def _first(h: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if h.get(key) is not None:
            return h[key]
    return default


def _require(family: str, condition: bool, what: str) -> None:
    if not condition:
        raise TokenmillError(f"{family} checkpoint not supported: {what}")


def rope_from_hf(family: str, h: dict, context: int) -> dict[str, Any]:
    """RoPE fields from transformers 5 `rope_parameters` or the older `rope_scaling`/`rope_theta`."""
    params = {**(h.get("rope_scaling") or {}), **(h.get("rope_parameters") or {})}
    kind = params.get("rope_type", params.get("type", "default"))
    fields: dict[str, Any] = {
        "position": "rope",
        "rope_theta": float(_first(params, "rope_theta", default=_first(h, "rope_theta", "rotary_emb_base", default=10_000.0))),
        "rotary_pct": float(_first(params, "partial_rotary_factor", default=_first(h, "partial_rotary_factor", "rotary_pct", default=1.0))),
    }
    if kind == "default":
        return fields
    if kind == "linear":
        return {**fields, "rope_scaling": "linear", "rope_factor": float(params["factor"])}
    if kind == "yarn":
        for key, default in (("beta_fast", 32), ("beta_slow", 1), ("truncate", True)):
            _require(family, params.get(key) in (None, default), f"YaRN with {key}={params.get(key)} (only the default {default})")
        for key in ("mscale", "mscale_all_dim", "attention_factor"):
            _require(family, params.get(key) is None, f"YaRN with {key} set")
        original = _first(params, "original_max_position_embeddings",
                          default=_first(h, "original_max_position_embeddings", default=context))
        factor = params.get("factor") or context / original
        return {**fields, "rope_scaling": "yarn", "rope_factor": float(factor), "rope_original_context": int(original)}
    if kind == "llama3":
        return {
            **fields, "rope_scaling": "llama3", "rope_factor": float(params["factor"]),
            "rope_original_context": int(params["original_max_position_embeddings"]),
            "rope_low_freq_factor": float(params["low_freq_factor"]), "rope_high_freq_factor": float(params["high_freq_factor"]),
        }
    if kind == "longrope":
        raise TokenmillError(
            f"{family} checkpoint not supported: RoPE type 'longrope' (Phi-3 128k, Phi-3.5): its frequencies switch "
            "with the sequence length, which tokenmill does not do; the 4k-context models convert"
        )
    raise TokenmillError(f"{family} checkpoint not supported: RoPE type '{kind}' (tokenmill implements default, linear, yarn and llama3)")


def rope_to_hf(config: ModelConfig) -> dict[str, Any]:
    if config.rope_scaling == "ntk":
        theta = config.rope_theta * config.rope_factor ** (config.rotary_dim / (config.rotary_dim - 2))
        raise TokenmillError(
            "no transformers RoPE type is static NTK scaling; the same frequencies come from "
            f"rope_scaling 'none' with rope_theta {theta!r}: set that to export"
        )
    params: dict[str, Any] = {"rope_type": "default" if config.rope_scaling == "none" else config.rope_scaling,
                              "rope_theta": config.rope_theta}
    if config.rope_scaling != "none":
        params["factor"] = config.rope_factor
    if config.rope_scaling in ("yarn", "llama3"):
        params["original_max_position_embeddings"] = config.rope_original_context
    if config.rope_scaling == "llama3":
        params["low_freq_factor"], params["high_freq_factor"] = config.rope_low_freq_factor, config.rope_high_freq_factor
    if config.rotary_pct != 1.0:
        params["partial_rotary_factor"] = config.rotary_pct
    return {"rope_parameters": params}


def sliding_from_hf(family: str, h: dict, default_pattern: int) -> dict[str, Any]:
    """sliding_window and sliding_window_pattern from `layer_types` (transformers 5), or from the
    family's fixed alternation (older configs: Gemma 2 every 2nd layer global, Gemma 3 every 6th)."""
    n, window = h["num_hidden_layers"], h.get("sliding_window")
    types = h.get("layer_types") or [
        "full_attention" if (i + 1) % h.get("sliding_window_pattern", default_pattern) == 0 else "sliding_attention"
        for i in range(n)
    ]
    _require(family, set(types) <= {"full_attention", "sliding_attention"}, f"layer_types {sorted(set(types))}")
    if window is None or "sliding_attention" not in types:
        return {"sliding_window": None}
    if "full_attention" not in types:
        return {"sliding_window": window}
    pattern = types.index("full_attention") + 1
    every_nth = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]
    _require(family, types == every_nth, f"layer_types {types} (tokenmill makes every Nth layer global)")
    return {"sliding_window": window, "sliding_window_pattern": pattern}


def sliding_to_hf(c: ModelConfig) -> list[str]:
    return ["full_attention" if c.layer_window(i) is None else "sliding_attention" for i in range(c.n_layers)]


def _gelu_from_hf(family: str, act: str) -> dict[str, str]:
    if act in ("gelu_new", "gelu_pytorch_tanh"):
        return {"gelu_approx": "tanh"}
    _require(family, act == "gelu", f"activation '{act}'")
    return {"gelu_approx": "none"}


class Family(ABC):
    model_type: str
    architecture: str
    transposed = False  # GPT-2 stores Linear weights as (in, out) Conv1D
    ignored_suffixes: tuple[str, ...] = ()  # buffers some old checkpoints saved

    @abstractmethod
    def from_hf(self, h: dict) -> dict[str, Any]:
        ...

    @abstractmethod
    def to_hf(self, config: ModelConfig) -> dict[str, Any]:
        ...

    @abstractmethod
    def modules(self, config: ModelConfig) -> dict[str, str]:
        """tokenmill module → HF module; per-layer names carry `{i}`. Q, K, V are in `qkv`."""

    @abstractmethod
    def qkv(self, config: ModelConfig) -> tuple[str, str]:
        """(layout, HF module of the fused QKV, or the q_proj name with `{}` for q/k/v)."""

    def gate_up(self, config: ModelConfig) -> str | None:
        """The HF module holding the gated MLP's W1 and W3 stacked (`{i}` for the layer), if fused."""
        return None

    def header(self) -> dict[str, Any]:
        return {"architectures": [self.architecture], "model_type": self.model_type}


class Llama(Family):
    model_type, architecture = "llama", "LlamaForCausalLM"

    def from_hf(self, h: dict) -> dict[str, Any]:
        _require(self.model_type, h.get("hidden_act", "silu") == "silu", f"hidden_act '{h.get('hidden_act')}'")
        bias = bool(h.get("attention_bias", False))
        _require(self.model_type, bool(h.get("mlp_bias", bias)) == bias, "attention_bias and mlp_bias differ")
        context = h.get("max_position_embeddings", 2048)
        return {
            "vocab_size": h["vocab_size"], "context_length": context, "d_model": h["hidden_size"],
            "n_layers": h["num_hidden_layers"], "n_heads": h["num_attention_heads"],
            "n_kv_heads": _first(h, "num_key_value_heads", default=h["num_attention_heads"]),
            "head_dim": _first(h, "head_dim", default=h["hidden_size"] // h["num_attention_heads"]),
            "d_ff": h["intermediate_size"], **rope_from_hf(self.model_type, h, context),
            "norm": "rmsnorm", "norm_eps": h.get("rms_norm_eps", 1e-6), "mlp": "swiglu", "bias": bias,
            "tie_embeddings": h.get("tie_word_embeddings", False), "dropout": h.get("attention_dropout", 0.0),
            "init_std": h.get("initializer_range", 0.02),
        }

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        return {
            **self.header(), "vocab_size": c.vocab_size, "max_position_embeddings": c.context_length,
            "hidden_size": c.d_model, "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
            "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim, "intermediate_size": c.d_ff,
            **rope_to_hf(c), "rms_norm_eps": c.norm_eps, "hidden_act": "silu", "attention_bias": c.bias,
            "mlp_bias": c.bias, "tie_word_embeddings": c.tie_embeddings, "attention_dropout": c.dropout,
            "initializer_range": c.init_std,
        }

    def modules(self, c: ModelConfig) -> dict[str, str]:
        return {
            "tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head",
            "layers.{i}.attn_norm": "model.layers.{i}.input_layernorm",
            "layers.{i}.attn.wo": "model.layers.{i}.self_attn.o_proj",
            "layers.{i}.ffn_norm": "model.layers.{i}.post_attention_layernorm",
            "layers.{i}.ffn.w1": "model.layers.{i}.mlp.gate_proj",
            "layers.{i}.ffn.w2": "model.layers.{i}.mlp.down_proj",
            "layers.{i}.ffn.w3": "model.layers.{i}.mlp.up_proj",
            # Present only with qk_norm (Qwen3, Gemma 3).
            "layers.{i}.attn.q_norm": "model.layers.{i}.self_attn.q_norm",
            "layers.{i}.attn.k_norm": "model.layers.{i}.self_attn.k_norm",
        }

    def qkv(self, c: ModelConfig) -> tuple[str, str]:
        return "separate", "model.layers.{i}.self_attn.{}_proj"


class Mistral(Llama):
    model_type, architecture = "mistral", "MistralForCausalLM"

    def from_hf(self, h: dict) -> dict[str, Any]:
        return {**super().from_hf({**h, "attention_bias": False}), "sliding_window": h.get("sliding_window")}

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        out = super().to_hf(c)
        del out["attention_bias"], out["mlp_bias"]  # Mistral has no biases
        return {**out, "sliding_window": c.sliding_window}


class Gemma(Llama):
    model_type, architecture = "gemma", "GemmaForCausalLM"

    def from_hf(self, h: dict) -> dict[str, Any]:
        act = _first(h, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh")
        _require("gemma", act in ("gelu", "gelu_pytorch_tanh"), f"activation '{act}'")  # 'gelu' meant tanh in Gemma
        _require("gemma", not h.get("attention_bias", False), "attention_bias")
        fields = super().from_hf({**h, "hidden_act": "silu", "attention_bias": False})
        return {**fields, "mlp": "geglu", "gelu_approx": "tanh", "norm_unit_offset": True, "scale_embeddings": True,
                "tie_embeddings": h.get("tie_word_embeddings", True)}

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        out = super().to_hf(c)
        del out["mlp_bias"]
        return {**out, "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh"}


class Gemma2(Gemma):
    """Gemma 2: soft-capped attention scores and logits, sliding-window layers alternating with
    global ones, norms before and after attention and MLP, scores scaled by query_pre_attn_scalar."""

    model_type, architecture = "gemma2", "Gemma2ForCausalLM"
    default_pattern, default_softcaps = 2, (50.0, 30.0)

    def from_hf(self, h: dict) -> dict[str, Any]:
        _require(self.model_type, not h.get("use_bidirectional_attention"), "use_bidirectional_attention")
        attn_cap, final_cap = (h.get(key, default) for key, default in
                               zip(("attn_logit_softcapping", "final_logit_softcapping"), self.default_softcaps))
        return {
            **super().from_hf(h), **sliding_from_hf(self.model_type, h, self.default_pattern), "post_norms": True,
            "query_pre_attn_scalar": h.get("query_pre_attn_scalar", 256),
            "attn_logit_softcap": None if attn_cap is None else float(attn_cap),
            "final_logit_softcap": None if final_cap is None else float(final_cap),
        }

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        return {
            **super().to_hf(c), "query_pre_attn_scalar": c.query_pre_attn_scalar or c.head_dim,
            "attn_logit_softcapping": c.attn_logit_softcap, "final_logit_softcapping": c.final_logit_softcap,
            "sliding_window": c.sliding_window, "layer_types": sliding_to_hf(c),
        }

    def modules(self, c: ModelConfig) -> dict[str, str]:
        layer = "model.layers.{i}."
        return {
            **super().modules(c), "layers.{i}.attn_post_norm": layer + "post_attention_layernorm",
            "layers.{i}.ffn_norm": layer + "pre_feedforward_layernorm",
            "layers.{i}.ffn_post_norm": layer + "post_feedforward_layernorm",
        }


class Gemma3Text(Gemma2):
    """Gemma 3's language model (Gemma3ForCausalLM): Gemma 2 with q/k norms instead of soft-capping,
    and a RoPE base of its own, unscaled, for the sliding-window layers."""

    model_type, architecture = "gemma3_text", "Gemma3ForCausalLM"
    default_pattern, default_softcaps = 6, (None, None)

    def from_hf(self, h: dict) -> dict[str, Any]:
        rope = h.get("rope_parameters") or {}
        full = dict(rope.get("full_attention") or {**(h.get("rope_scaling") or {})})
        full.setdefault("rope_theta", h.get("rope_theta", 1_000_000.0))
        local = rope.get("sliding_attention") or {"rope_theta": h.get("rope_local_base_freq", 10_000.0)}
        _require(self.model_type, local.get("rope_type", "default") == "default",
                 f"RoPE type '{local.get('rope_type')}' on the sliding-window layers")
        fields = super().from_hf({**h, "rope_parameters": full, "rope_scaling": None})
        local_theta = float(local["rope_theta"]) if fields["sliding_window"] is not None else None
        return {**fields, "qk_norm": True, "rope_local_theta": local_theta}

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        out = super().to_hf(c)
        local = {"rope_type": "default", "rope_theta": c.rope_local_theta or c.rope_theta}
        return {**out, "rope_parameters": {"full_attention": out["rope_parameters"], "sliding_attention": local}}


class Qwen2(Llama):
    """Qwen2 and Qwen2.5: LLaMA with biases on Q, K and V (and nowhere else)."""

    model_type, architecture = "qwen2", "Qwen2ForCausalLM"

    def from_hf(self, h: dict) -> dict[str, Any]:
        # Qwen's sliding window covers only the layers above max_window_layers; no release turns it on.
        _require(self.model_type, not h.get("use_sliding_window", False), "use_sliding_window")
        return {**super().from_hf({**h, "attention_bias": False, "mlp_bias": False}), "qkv_bias": True}

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        out = super().to_hf(c)
        del out["attention_bias"], out["mlp_bias"]  # hard-wired in transformers' Qwen2
        return {**out, "use_sliding_window": False}


class Qwen3(Llama):
    """Qwen3: LLaMA with an RMSNorm over each head's queries and keys before RoPE."""

    model_type, architecture = "qwen3", "Qwen3ForCausalLM"

    def from_hf(self, h: dict) -> dict[str, Any]:
        _require(self.model_type, not h.get("use_sliding_window", False), "use_sliding_window")
        # Its attention_bias leaves the MLP without biases; tokenmill's bias covers both.
        _require(self.model_type, not h.get("attention_bias", False), "attention_bias")
        return {**super().from_hf(h), "qk_norm": True}

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        out = super().to_hf(c)
        del out["mlp_bias"]
        return {**out, "use_sliding_window": False}


class Phi3(Llama):
    """Phi-3 (and Phi-4-mini): LLaMA with Q, K, V in one matrix and the MLP's gate and up in another."""

    model_type, architecture = "phi3", "Phi3ForCausalLM"

    def from_hf(self, h: dict) -> dict[str, Any]:
        fields = super().from_hf({**h, "attention_bias": False, "mlp_bias": False})
        return {**fields, "sliding_window": h.get("sliding_window"), "dropout": h.get("resid_pdrop", 0.0)}

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        out = super().to_hf(c)
        del out["attention_bias"], out["mlp_bias"]
        return {**out, "sliding_window": c.sliding_window, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
                "original_max_position_embeddings": c.context_length}

    def modules(self, c: ModelConfig) -> dict[str, str]:
        modules = super().modules(c)
        del modules["layers.{i}.ffn.w1"], modules["layers.{i}.ffn.w3"]
        return modules

    def qkv(self, c: ModelConfig) -> tuple[str, str]:
        return "concat", "model.layers.{i}.self_attn.qkv_proj"

    def gate_up(self, c: ModelConfig) -> str | None:
        return "model.layers.{i}.mlp.gate_up_proj"


class GPT2(Family):
    model_type, architecture = "gpt2", "GPT2LMHeadModel"
    transposed = True
    ignored_suffixes = (".attn.bias", ".attn.masked_bias")

    def from_hf(self, h: dict) -> dict[str, Any]:
        act = h.get("activation_function", "gelu_new")
        _require("gpt2", h.get("scale_attn_weights", True), "scale_attn_weights false")
        _require("gpt2", not h.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx")
        mlp = {"mlp": "relu"} if act == "relu" else {"mlp": "gelu", **_gelu_from_hf("gpt2", act)}
        return {
            "vocab_size": h["vocab_size"], "context_length": h["n_positions"], "d_model": h["n_embd"],
            "n_layers": h["n_layer"], "n_heads": h["n_head"], "d_ff": _first(h, "n_inner", default=4 * h["n_embd"]),
            "position": "learned", "norm": "layernorm", "norm_eps": h.get("layer_norm_epsilon", 1e-5), **mlp,
            "bias": True, "tie_embeddings": h.get("tie_word_embeddings", True), "dropout": h.get("resid_pdrop", 0.1),
            "init_std": h.get("initializer_range", 0.02),
        }

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        act = "relu" if c.mlp == "relu" else ("gelu_new" if c.gelu_approx == "tanh" else "gelu")
        return {
            **self.header(), "vocab_size": c.vocab_size, "n_positions": c.context_length, "n_embd": c.d_model,
            "n_layer": c.n_layers, "n_head": c.n_heads, "n_inner": c.d_ff, "activation_function": act,
            "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_embeddings, "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout, "attn_pdrop": c.dropout, "initializer_range": c.init_std,
        }

    def modules(self, c: ModelConfig) -> dict[str, str]:
        return {
            "tok_embeddings": "transformer.wte", "pos_embeddings": "transformer.wpe", "norm": "transformer.ln_f",
            "output": "lm_head", "layers.{i}.attn_norm": "transformer.h.{i}.ln_1",
            "layers.{i}.attn.wo": "transformer.h.{i}.attn.c_proj", "layers.{i}.ffn_norm": "transformer.h.{i}.ln_2",
            "layers.{i}.ffn.w1": "transformer.h.{i}.mlp.c_fc", "layers.{i}.ffn.w2": "transformer.h.{i}.mlp.c_proj",
        }

    def qkv(self, c: ModelConfig) -> tuple[str, str]:
        return "concat", "transformer.h.{i}.attn.c_attn"


class GPTNeoX(Family):
    model_type, architecture = "gpt_neox", "GPTNeoXForCausalLM"
    ignored_suffixes = (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")

    def from_hf(self, h: dict) -> dict[str, Any]:
        # The MLP of GPT-NeoX always has biases; tokenmill has one switch for all projections.
        _require("gpt_neox", h.get("attention_bias", True), "attention_bias false")
        context = h.get("max_position_embeddings", 2048)
        return {
            "vocab_size": h["vocab_size"], "context_length": context, "d_model": h["hidden_size"],
            "n_layers": h["num_hidden_layers"], "n_heads": h["num_attention_heads"], "d_ff": h["intermediate_size"],
            **rope_from_hf("gpt_neox", {"rotary_pct": 0.25, **h}, context), "norm": "layernorm",
            "norm_eps": h.get("layer_norm_eps", 1e-5), "mlp": "gelu", **_gelu_from_hf("gpt_neox", h.get("hidden_act", "gelu")),
            "bias": True, "parallel_block": h.get("use_parallel_residual", True),
            "tie_embeddings": h.get("tie_word_embeddings", False), "dropout": h.get("hidden_dropout", 0.0),
            "init_std": h.get("initializer_range", 0.02),
        }

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        rope = rope_to_hf(c)
        rope["rope_parameters"]["partial_rotary_factor"] = c.rotary_pct
        return {
            **self.header(), "vocab_size": c.vocab_size, "max_position_embeddings": c.context_length,
            "hidden_size": c.d_model, "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
            "intermediate_size": c.d_ff, **rope, "layer_norm_eps": c.norm_eps,
            "hidden_act": "gelu_new" if c.gelu_approx == "tanh" else "gelu", "attention_bias": True,
            "use_parallel_residual": c.parallel_block, "tie_word_embeddings": c.tie_embeddings,
            "hidden_dropout": c.dropout, "attention_dropout": c.dropout, "initializer_range": c.init_std,
        }

    def modules(self, c: ModelConfig) -> dict[str, str]:
        return {
            "tok_embeddings": "gpt_neox.embed_in", "norm": "gpt_neox.final_layer_norm", "output": "embed_out",
            "layers.{i}.attn_norm": "gpt_neox.layers.{i}.input_layernorm",
            "layers.{i}.attn.wo": "gpt_neox.layers.{i}.attention.dense",
            "layers.{i}.ffn_norm": "gpt_neox.layers.{i}.post_attention_layernorm",
            "layers.{i}.ffn.w1": "gpt_neox.layers.{i}.mlp.dense_h_to_4h",
            "layers.{i}.ffn.w2": "gpt_neox.layers.{i}.mlp.dense_4h_to_h",
        }

    def qkv(self, c: ModelConfig) -> tuple[str, str]:
        return "per_head", "gpt_neox.layers.{i}.attention.query_key_value"


class Falcon(Family):
    """Falcon-7B (multi-query, one norm feeding attention and MLP in parallel), Falcon-40B/180B
    (new decoder architecture: grouped key/value heads, two norms) and sequential variants."""

    model_type, architecture = "falcon", "FalconForCausalLM"

    def from_hf(self, h: dict) -> dict[str, Any]:
        _require("falcon", not h.get("alibi", False), "alibi (falcon-rw; transformers rounds its slopes to bfloat16)")
        n_heads = h["num_attention_heads"]
        new = h.get("new_decoder_architecture", False)
        if new:
            n_kv, shared = h.get("num_kv_heads") or n_heads, (h.get("num_ln_in_parallel_attn") or 2) == 1
        else:
            n_kv, shared = (1 if h.get("multi_query", True) else n_heads), h.get("parallel_attn", True)
        context = h.get("max_position_embeddings", 2048)
        return {
            "vocab_size": h["vocab_size"], "context_length": context, "d_model": h["hidden_size"],
            "n_layers": h["num_hidden_layers"], "n_heads": n_heads, "n_kv_heads": n_kv,
            "d_ff": _first(h, "ffn_hidden_size", default=4 * h["hidden_size"]), **rope_from_hf("falcon", h, context),
            "norm": "layernorm", "norm_eps": h.get("layer_norm_epsilon", 1e-5), "mlp": "gelu",
            **_gelu_from_hf("falcon", h.get("activation", "gelu")), "bias": h.get("bias", False),
            "parallel_block": new or h.get("parallel_attn", True), "parallel_shared_norm": shared,
            "tie_embeddings": h.get("tie_word_embeddings", True), "dropout": h.get("hidden_dropout", 0.0),
            "init_std": h.get("initializer_range", 0.02),
        }

    def _new_architecture(self, c: ModelConfig) -> bool:
        # The old layout has one norm in parallel blocks and either MQA or MHA.
        return c.parallel_block and (not c.parallel_shared_norm or c.attention_kind == "GQA")

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        if c.attention_kind == "GQA" and not c.parallel_block:
            raise TokenmillError("falcon cannot express grouped-query attention in a sequential block")
        new = self._new_architecture(c)
        return {
            **self.header(), "vocab_size": c.vocab_size, "max_position_embeddings": c.context_length,
            "hidden_size": c.d_model, "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
            "num_kv_heads": c.n_kv_heads, "new_decoder_architecture": new,
            "multi_query": c.attention_kind == "MQA", "parallel_attn": c.parallel_block,
            "num_ln_in_parallel_attn": (1 if c.parallel_shared_norm else 2) if new else None,
            "ffn_hidden_size": c.d_ff, **rope_to_hf(c), "layer_norm_epsilon": c.norm_eps,
            "activation": "gelu_new" if c.gelu_approx == "tanh" else "gelu", "bias": c.bias, "alibi": False,
            "tie_word_embeddings": c.tie_embeddings, "hidden_dropout": c.dropout, "attention_dropout": c.dropout,
            "initializer_range": c.init_std,
        }

    def modules(self, c: ModelConfig) -> dict[str, str]:
        layer = "transformer.h.{i}."
        if self._new_architecture(c) and not c.parallel_shared_norm:
            norms = {"layers.{i}.attn_norm": layer + "ln_attn", "layers.{i}.ffn_norm": layer + "ln_mlp"}
        else:
            norms = {"layers.{i}.attn_norm": layer + "input_layernorm"}
            if not c.parallel_block:
                norms["layers.{i}.ffn_norm"] = layer + "post_attention_layernorm"
        return {
            "tok_embeddings": "transformer.word_embeddings", "norm": "transformer.ln_f", "output": "lm_head", **norms,
            "layers.{i}.attn.wo": layer + "self_attention.dense", "layers.{i}.ffn.w1": layer + "mlp.dense_h_to_4h",
            "layers.{i}.ffn.w2": layer + "mlp.dense_4h_to_h",
        }

    def qkv(self, c: ModelConfig) -> tuple[str, str]:
        if self._new_architecture(c):
            layout = "grouped"
        else:
            layout = "concat" if c.attention_kind == "MQA" else "per_head"
        return layout, "transformer.h.{i}.self_attention.query_key_value"


class MPT(Family):
    model_type, architecture = "mpt", "MptForCausalLM"

    def from_hf(self, h: dict) -> dict[str, Any]:
        attn = h.get("attn_config") or {}
        checks = {
            "alibi": (attn.get("alibi", True), True), "alibi_bias_max": (attn.get("alibi_bias_max", 8), 8),
            "qk_ln": (attn.get("qk_ln", False), False), "clip_qkv": (attn.get("clip_qkv"), None),
            "softmax_scale": (attn.get("softmax_scale"), None), "prefix_lm": (attn.get("prefix_lm", False), False),
            "logit_scale": (h.get("logit_scale"), None), "no_bias": (h.get("no_bias", True), True),
            "expansion_ratio": (h.get("expansion_ratio", 4), 4),  # transformers builds a 4·d MLP whatever it says
        }
        for key, (value, supported) in checks.items():
            _require("mpt", value == supported, f"{key}={value} (transformers' MPT supports {supported})")
        n_heads = h["n_heads"]
        # MPT and BLOOM choose different ALiBi slopes unless the head count is a power of two.
        _require("mpt", n_heads & (n_heads - 1) == 0, f"{n_heads} heads (MPT's ALiBi slopes match only for a power of two)")
        return {
            "vocab_size": h["vocab_size"], "context_length": h.get("max_seq_len", 2048), "d_model": h["d_model"],
            "n_layers": h["n_layers"], "n_heads": n_heads, "d_ff": 4 * h["d_model"], "position": "alibi",
            "norm": "layernorm", "norm_eps": h.get("layer_norm_epsilon", 1e-5), "norm_bias": False, "mlp": "gelu",
            "bias": False, "tie_embeddings": h.get("tie_word_embeddings", True), "dropout": h.get("resid_pdrop", 0.0),
            "init_std": h.get("initializer_range", 0.02),
        }

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        return {
            **self.header(), "vocab_size": c.vocab_size, "max_seq_len": c.context_length, "d_model": c.d_model,
            "n_layers": c.n_layers, "n_heads": c.n_heads,
            "expansion_ratio": c.d_ff // c.d_model if c.d_ff % c.d_model == 0 else c.d_ff / c.d_model,
            "layer_norm_epsilon": c.norm_eps, "no_bias": True, "tie_word_embeddings": c.tie_embeddings,
            # No attn_pdrop: transformers 5 types it as int and rejects 0.0.
            "attn_config": {"alibi": True, "alibi_bias_max": 8},
            "resid_pdrop": c.dropout, "initializer_range": c.init_std,
        }

    def modules(self, c: ModelConfig) -> dict[str, str]:
        block = "transformer.blocks.{i}."
        return {
            "tok_embeddings": "transformer.wte", "norm": "transformer.norm_f", "output": "lm_head",
            "layers.{i}.attn_norm": block + "norm_1", "layers.{i}.attn.wo": block + "attn.out_proj",
            "layers.{i}.ffn_norm": block + "norm_2", "layers.{i}.ffn.w1": block + "ffn.up_proj",
            "layers.{i}.ffn.w2": block + "ffn.down_proj",
        }

    def qkv(self, c: ModelConfig) -> tuple[str, str]:
        return "concat", "transformer.blocks.{i}.attn.Wqkv"


class Bloom(Family):
    model_type, architecture = "bloom", "BloomForCausalLM"

    def from_hf(self, h: dict) -> dict[str, Any]:
        _require("bloom", not h.get("apply_residual_connection_post_layernorm", False),
                 "apply_residual_connection_post_layernorm")
        d_model = _first(h, "hidden_size", "n_embed")
        return {
            "vocab_size": h["vocab_size"], "context_length": h.get("seq_length", 2048), "d_model": d_model,
            "n_layers": _first(h, "n_layer", "num_hidden_layers"), "n_heads": _first(h, "n_head", "num_attention_heads"),
            "d_ff": 4 * d_model, "position": "alibi", "norm": "layernorm", "norm_eps": h.get("layer_norm_epsilon", 1e-5),
            "embedding_norm": True, "mlp": "gelu", "gelu_approx": "tanh", "bias": True,
            "tie_embeddings": h.get("tie_word_embeddings", True), "dropout": h.get("hidden_dropout", 0.0),
            "init_std": h.get("initializer_range", 0.02),
        }

    def to_hf(self, c: ModelConfig) -> dict[str, Any]:
        return {
            **self.header(), "vocab_size": c.vocab_size, "seq_length": c.context_length, "hidden_size": c.d_model,
            "n_layer": c.n_layers, "n_head": c.n_heads, "layer_norm_epsilon": c.norm_eps,
            "tie_word_embeddings": c.tie_embeddings, "hidden_dropout": c.dropout, "attention_dropout": c.dropout,
            "initializer_range": c.init_std,
        }

    def modules(self, c: ModelConfig) -> dict[str, str]:
        layer = "transformer.h.{i}."
        return {
            "tok_embeddings": "transformer.word_embeddings", "embed_norm": "transformer.word_embeddings_layernorm",
            "norm": "transformer.ln_f", "output": "lm_head", "layers.{i}.attn_norm": layer + "input_layernorm",
            "layers.{i}.attn.wo": layer + "self_attention.dense", "layers.{i}.ffn_norm": layer + "post_attention_layernorm",
            "layers.{i}.ffn.w1": layer + "mlp.dense_h_to_4h", "layers.{i}.ffn.w2": layer + "mlp.dense_4h_to_h",
        }

    def qkv(self, c: ModelConfig) -> tuple[str, str]:
        return "per_head", "transformer.h.{i}.self_attention.query_key_value"


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (Llama(), Mistral(), Gemma(), Gemma2(), Gemma3Text(), Qwen2(), Qwen3(), Phi3(), GPT2(), GPTNeoX(), Falcon(),
              MPT(), Bloom())
}
