"""The architecture as data: `model.json` is a `ModelConfig`, fixed before any weight exists.

Every choice that distinguishes GPT-2 from LLaMA, Gemma, Falcon, MPT, BLOOM or GPT-NeoX is a
field here, so one transformer implementation covers them all and a Hugging Face checkpoint
converts into it with matching logits. This module does not import torch: the run config
imports it, and the CLI should start fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tokenmill.errors import ConfigError, validation_problems


class ModelConfig(BaseModel):
    """A decoder-only transformer. Fields left as None are filled in from the others."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(gt=0)
    context_length: int = Field(gt=0, description="Longest sequence the model is built for.")
    d_model: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int | None = Field(None, gt=0, description="n_heads: MHA; 1: MQA; in between: GQA.")
    head_dim: int | None = Field(None, gt=0, description="Default d_model // n_heads (Gemma-7B differs).")
    d_ff: int | None = Field(
        None, gt=0, description="Hidden size of the MLP; default 4·d_model, or 8/3·d_model up to a multiple of 256 when gated."
    )

    position: Literal["learned", "sinusoidal", "rope", "alibi"] = "rope"
    rope_theta: float = Field(10_000.0, gt=0, description="RoPE base.")
    rope_scaling: Literal["none", "linear", "ntk", "yarn", "llama3"] = "none"
    rope_factor: float = Field(1.0, ge=1.0, description="Context extension factor of rope_scaling.")
    rope_original_context: int | None = Field(None, gt=0, description="Pre-training context (YaRN, Llama 3).")
    rope_low_freq_factor: float | None = Field(
        None, gt=0, description="Llama 3: wavelengths above original context / this are interpolated."
    )
    rope_high_freq_factor: float | None = Field(None, gt=0, description="Llama 3: wavelengths below original context / this are kept.")
    rope_local_theta: float | None = Field(None, gt=0, description="RoPE base of the sliding-window layers, unscaled (Gemma 3).")
    rotary_pct: float = Field(1.0, gt=0, le=1, description="Share of each head's dimensions rotated (GPT-NeoX: 0.25).")
    sliding_window: int | None = Field(None, gt=0, description="Each token sees at most this many tokens (Mistral).")
    sliding_window_pattern: int | None = Field(
        None, gt=1, description="Every Nth layer attends to all tokens, the others within sliding_window (Gemma 2: 2, Gemma 3: 6)."
    )
    qk_norm: bool = Field(False, description="A norm over each head's queries and keys before RoPE (Qwen3, Gemma 3).")
    query_pre_attn_scalar: int | None = Field(None, gt=0, description="Scores scaled by 1/√this, not 1/√head_dim (Gemma 2, 3).")
    attn_logit_softcap: float | None = Field(None, gt=0, description="Attention scores become cap·tanh(score/cap) (Gemma 2).")
    final_logit_softcap: float | None = Field(None, gt=0, description="Output logits become cap·tanh(logit/cap) (Gemma 2).")

    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    norm_eps: float = Field(1e-5, gt=0)
    norm_place: Literal["pre", "post"] = "pre"
    norm_bias: bool | None = Field(None, description="LayerNorm β; default on for LayerNorm (off in MPT).")
    norm_unit_offset: bool = Field(False, description="RMSNorm scales by 1 + γ, γ stored around zero (Gemma).")
    embedding_norm: bool = Field(False, description="A norm right after the token embedding (BLOOM).")
    scale_embeddings: bool = Field(False, description="Multiply embeddings by √d_model (Gemma, original Transformer).")
    post_norms: bool = Field(False, description="Norms on the attention and MLP outputs too, before each residual sum (Gemma 2, 3).")
    parallel_block: bool = Field(False, description="x + attn(norm(x)) + mlp(norm(x)) (GPT-NeoX, Falcon).")
    parallel_shared_norm: bool = Field(False, description="Attention and MLP read one norm's output (Falcon-7B).")

    mlp: Literal["gelu", "relu", "relu2", "swiglu", "geglu"] = "swiglu"
    gelu_approx: Literal["none", "tanh"] = Field("none", description="tanh approximation of GELU (GPT-2, BLOOM, Gemma).")
    bias: bool = Field(False, description="Biases in the attention and MLP projections.")
    qkv_bias: bool = Field(False, description="Biases in the Q, K, V projection only, where bias is off (Qwen2).")
    tie_embeddings: bool = Field(True, description="The output head reuses the token embedding matrix.")
    dropout: float = Field(0.0, ge=0, lt=1)
    init_std: float = Field(0.02, gt=0, description="Std of the normal init; N(0,1) blows up tied-embedding losses.")

    @model_validator(mode="after")
    def _check_and_fill(self) -> ModelConfig:
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}); "
                    "change one of them or set head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_heads
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) is not a multiple of n_kv_heads ({self.n_kv_heads}); "
                "each key/value head must serve the same number of query heads"
            )
        if self.d_ff is None:
            # LLaMA keeps the gated MLP's parameter count at that of a 4·d MLP: 2/3 · 4d, rounded up to 256.
            self.d_ff = 4 * self.d_model if not self.gated else 256 * math.ceil(int(8 * self.d_model / 3) / 256)
        if self.norm_bias is None:
            self.norm_bias = self.norm == "layernorm"
        if self.norm == "rmsnorm" and self.norm_bias:
            raise ValueError("norm_bias: RMSNorm has no bias (β); set norm_bias to false or use norm 'layernorm'")
        if self.norm_unit_offset and self.norm != "rmsnorm":
            raise ValueError("norm_unit_offset applies to norm 'rmsnorm' only (Gemma)")
        if self.position == "rope":
            if self.rotary_dim < 2 or self.rotary_dim % 2:
                raise ValueError(
                    f"rotary_pct ({self.rotary_pct}) × head_dim ({self.head_dim}) = {self.head_dim * self.rotary_pct:g} "
                    "rotated dimensions; RoPE needs a positive even number"
                )
        elif self.rope_scaling != "none" or self.rotary_pct != 1.0:
            raise ValueError(f"rope_scaling and rotary_pct apply to position 'rope', not '{self.position}'")
        if self.rope_scaling == "none" and self.rope_factor != 1.0:
            raise ValueError("rope_factor is set but rope_scaling is 'none'; choose linear, ntk or yarn")
        if self.rope_scaling != "none" and self.rope_factor <= 1.0:
            raise ValueError(f"rope_scaling '{self.rope_scaling}' needs rope_factor > 1 (the context extension)")
        if self.rope_scaling in ("yarn", "llama3") and self.rope_original_context is None:
            raise ValueError(f"rope_scaling '{self.rope_scaling}' needs rope_original_context (the pre-training context length)")
        llama3_factors = (self.rope_low_freq_factor, self.rope_high_freq_factor)
        if self.rope_scaling == "llama3":
            if None in llama3_factors:
                raise ValueError("rope_scaling 'llama3' needs rope_low_freq_factor and rope_high_freq_factor")
            if self.rope_high_freq_factor <= self.rope_low_freq_factor:
                raise ValueError(
                    f"rope_high_freq_factor ({self.rope_high_freq_factor}) must exceed rope_low_freq_factor "
                    f"({self.rope_low_freq_factor}): the band between them is blended"
                )
        elif llama3_factors != (None, None):
            raise ValueError("rope_low_freq_factor and rope_high_freq_factor apply to rope_scaling 'llama3' only")
        if self.sliding_window_pattern is not None and self.sliding_window is None:
            raise ValueError("sliding_window_pattern needs sliding_window (the window of the local layers)")
        if self.rope_local_theta is not None and (self.position != "rope" or self.sliding_window is None):
            raise ValueError("rope_local_theta applies to position 'rope' with sliding_window set (the local layers' base)")
        if self.qkv_bias and self.bias:
            raise ValueError("qkv_bias is redundant with bias true (bias already covers Q, K and V)")
        if self.post_norms and (self.norm_place == "post" or self.parallel_block):
            raise ValueError("post_norms applies to sequential pre-norm blocks (norm_place 'pre', parallel_block false)")
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions pair sin and cos: d_model ({self.d_model}) must be even")
        if self.parallel_block and self.norm_place == "post":
            raise ValueError("parallel_block needs norm_place 'pre': a parallel block has no single sum to post-normalise")
        if self.parallel_shared_norm and not self.parallel_block:
            raise ValueError("parallel_shared_norm applies only with parallel_block true")
        if self.gelu_approx != "none" and self.mlp not in ("gelu", "geglu"):
            raise ValueError(f"gelu_approx applies to mlp 'gelu' or 'geglu', not '{self.mlp}'")
        return self

    @property
    def gated(self) -> bool:
        return self.mlp in ("swiglu", "geglu")

    def layer_window(self, layer_idx: int) -> int | None:
        """How far back layer `layer_idx` attends (None: every earlier token)."""
        if self.sliding_window_pattern is not None and (layer_idx + 1) % self.sliding_window_pattern == 0:
            return None
        return self.sliding_window

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    @property
    def attention_kind(self) -> str:
        if self.n_kv_heads == self.n_heads:
            return "MHA"
        return "MQA" if self.n_kv_heads == 1 else "GQA"


def describe_validation_error(error: ValidationError, where: str) -> str:
    return f"invalid model config {where}: " + "; ".join(validation_problems(error, "field"))


def make_config(fields: dict[str, Any], where: str = "") -> ModelConfig:
    """Validate a dict into a ModelConfig; errors become one ConfigError naming each field."""
    try:
        return ModelConfig.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, where)) from None


def read_config(path: str | Path) -> ModelConfig:
    """Read a model.json (or a model folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.json"
    if not path.is_file():
        raise ConfigError(f"model config not found: {path}")
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    return make_config(fields, str(path))


def config_json(config: ModelConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), indent=2) + "\n"
