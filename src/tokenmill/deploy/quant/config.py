"""The `quantize` section of a run config (stage 08). This module does not import torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class QuantizeConfig(BaseModel):
    """How to quantize the trained model. See docs/quantization.md."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["int8", "rtn4", "gptq", "awq"] = Field(
        "gptq", description="int8: per-channel RTN; rtn4, gptq, awq: INT4 in groups of group_size."
    )
    group_size: int | None = Field(128, gt=0, description="INT4 group size (input columns per scale); null: per channel.")
    symmetric: bool = Field(True, description="Symmetric grid (zero point fixed) or asymmetric (a zero point per group).")

    calib_samples: int = Field(128, gt=0, description="Calibration sequences for GPTQ and AWQ.")
    calib_seq_len: int | None = Field(None, gt=0, description="Their length; default the model's context, at most 2,048.")
    batch_size: int = Field(8, gt=0, description="Calibration sequences per forward pass.")
    seed: int = 0

    gptq_block_size: int = Field(128, gt=0, description="Columns per lazy batch update.")
    gptq_damp: float = Field(0.01, ge=0, description="Damping as a share of the Hessian's mean diagonal; raised on Cholesky failure.")
    gptq_act_order: bool = Field(True, description="Quantize columns in order of decreasing activation (static groups).")

    awq_grid: int = Field(20, gt=0, description="Points of the scaling exponent's grid in [0, 1).")
    awq_clip: bool = Field(True, description="Search a clipping range per group after scaling.")

    eval: bool = Field(True, description="Compare FP32, BF16, INT8, INT4-RTN, INT4-GPTQ and INT4-AWQ.")
    eval_batches: int | None = Field(None, gt=0, description="Validation batches for perplexity; null: the whole split.")
    eval_batch_size: int = Field(16, gt=0)
    decode_tokens: int = Field(32, gt=0, description="Tokens decoded per sequence when timing decoding.")
