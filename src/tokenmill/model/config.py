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

from tokenmill.errors import ConfigError


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
    d_ff: int | None = Field(None, gt=0, description="Hidden size of the MLP; default 4·d_model, or 8/3·d_model up to a multiple of 256 when gated.")

    position: Literal["learned", "sinusoidal", "rope", "alibi"] = "rope"
    rope_theta: float = Field(10_000.0, gt=0, description="RoPE base.")
    rope_scaling: Literal["none", "linear", "ntk", "yarn"] = "none"
    rope_factor: float = Field(1.0, ge=1.0, description="Context extension factor of rope_scaling.")
    rope_original_context: int | None = Field(None, gt=0, description="Pre-training context (YaRN).")
    rotary_pct: float = Field(1.0, gt=0, le=1, description="Share of each head's dimensions rotated (GPT-NeoX: 0.25).")
    sliding_window: int | None = Field(None, gt=0, description="Each token sees at most this many tokens (Mistral).")

    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    norm_eps: float = Field(1e-5, gt=0)
    norm_place: Literal["pre", "post"] = "pre"
    norm_bias: bool | None = Field(None, description="LayerNorm β; default on for LayerNorm (off in MPT).")
    norm_unit_offset: bool = Field(False, description="RMSNorm scales by 1 + γ, γ stored around zero (Gemma).")
    embedding_norm: bool = Field(False, description="A norm right after the token embedding (BLOOM).")
    scale_embeddings: bool = Field(False, description="Multiply embeddings by √d_model (Gemma, original Transformer).")
    parallel_block: bool = Field(False, description="x + attn(norm(x)) + mlp(norm(x)) (GPT-NeoX, Falcon).")
    parallel_shared_norm: bool = Field(False, description="Attention and MLP read one norm's output (Falcon-7B).")

    mlp: Literal["gelu", "relu", "relu2", "swiglu", "geglu"] = "swiglu"
    gelu_approx: Literal["none", "tanh"] = Field("none", description="tanh approximation of GELU (GPT-2, BLOOM, Gemma).")
    bias: bool = Field(False, description="Biases in the attention and MLP projections.")
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
        if self.rope_scaling == "yarn" and self.rope_original_context is None:
            raise ValueError("rope_scaling 'yarn' needs rope_original_context (the pre-training context length)")
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

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    @property
    def attention_kind(self) -> str:
        if self.n_kv_heads == self.n_heads:
            return "MHA"
        return "MQA" if self.n_kv_heads == 1 else "GQA"


def describe_validation_error(error: ValidationError, where: str) -> str:
    lines = []
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown field '{key}'")
        else:
            lines.append(f"{key}: {message}" if key else message)
    return f"invalid model config {where}: " + "; ".join(lines)


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
