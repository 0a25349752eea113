"""Stage 04's section of the run config: a preset plus any model.json field overriding it.

It lives apart from `config.py` (the architecture alone) because it needs the presets, and
the presets need the architecture: each module imports only the one below it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, create_model

from tokenmill.errors import ConfigError
from tokenmill.model.config import ModelConfig, make_config
from tokenmill.model.presets import preset_fields

# The fields are generated from ModelConfig so that the two cannot drift apart; each is optional here.
_OVERRIDES = {name: (field.annotation | None, None) for name, field in ModelConfig.model_fields.items()}
_SectionBase = create_model(
    "_SectionBase",
    __config__=ConfigDict(extra="forbid"),
    preset=(str, Field(
        "nano", description="A preset name (tokenmill plan --preset NAME), tiny-NAME for a shrunken copy, or a model.json path."
    )),
    **_OVERRIDES,
)


class ModelSection(_SectionBase):
    """Stage 04: `preset` plus any model.json field, e.g. `{preset: llama-7b, n_layers: 4}`."""

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude={"preset"}).items() if v is not None}

    def resolve(self, vocab_size: int | None = None) -> ModelConfig:
        """The model of this section; `vocab_size` (the tokenizer's) replaces the preset's."""
        fields = preset_fields(self.preset)
        fields_heads = fields.get("n_heads")
        overrides = self.overrides()
        if vocab_size is not None:
            if overrides.get("vocab_size", vocab_size) < vocab_size:
                raise ConfigError(
                    f"model.vocab_size ({overrides['vocab_size']}) is smaller than the tokenizer's vocabulary ({vocab_size})"
                )
            fields["vocab_size"] = vocab_size
        fields.update(overrides)
        # Filled-in fields of the preset (head_dim, d_ff, ...) must follow changed dimensions.
        if any(k in overrides for k in ("d_model", "n_heads")) and "head_dim" not in overrides:
            fields.pop("head_dim", None)
        if "n_heads" in overrides and "n_kv_heads" not in overrides and fields.get("n_kv_heads") == fields_heads:
            fields.pop("n_kv_heads")  # an MHA preset stays MHA
        if any(k in overrides for k in ("d_model", "mlp")) and "d_ff" not in overrides:
            fields.pop("d_ff", None)
        if "norm" in overrides and "norm_bias" not in overrides:
            fields.pop("norm_bias", None)
        return make_config(fields, f"(preset {self.preset} with the model section's overrides)")
