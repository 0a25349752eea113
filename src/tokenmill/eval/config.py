"""The `eval` section: which models of the run, which tasks, and how much held-out data."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MODEL_KEYS = ("pretrained", "sft", "dpo", "ppo", "quantized")


class EvalConfig(BaseModel):
    """Stage 09: every model of the run on the same tasks (see docs/evaluation.md)."""

    model_config = ConfigDict(extra="forbid")

    models: list[Literal[MODEL_KEYS]] = Field(default_factory=lambda: list(MODEL_KEYS),
                              description=f"Models of the run to evaluate, among {', '.join(MODEL_KEYS)}.")
    builtin: bool = Field(True, description="Run the built-in tasks written from the run's held-out data.")
    standard: list[str] = Field(default_factory=list,
                                description="lm-eval tasks (hellaswag, arc_easy, ...), run where their data are at hand.")
    limit: int | None = Field(None, gt=0, description="At most this many documents of each task (all when unset).")
    bytes_per_domain: int = Field(8000, gt=0, description="Held-out text per domain for bits per byte.")
    items: int = Field(100, gt=0, description="Held-out items for the multiple-choice and exact-match tasks.")
    batch_size: int = Field(16, gt=0)
