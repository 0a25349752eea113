"""The `pretrain` section of a run config: budget, batch, optimizer and schedule, checkpoints, layout.

The optimizer and schedule keys (OptimConfig) are alignment's too.

This module does not import torch, so that reading a run config stays fast.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenmill.device import DeviceChoice, Precision


class OptimConfig(BaseModel):
    """AdamW (Loshchilov & Hutter, 2019) and its warmup-cosine schedule, as pre-training and
    alignment (SFT, reward model, DPO) both train: their sections inherit these keys, each with
    its own defaults."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(100, ge=0, description="Linear warmup from lr/warmup_steps to lr.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="The floor of the cosine, as a share of lr.")
    decay_end: float = Field(
        1.0, gt=0, description="Where the cosine reaches its floor: <= 1 a fraction of the steps, > 1 a step; then constant."
    )
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    decay_embeddings: bool = Field(False, description="Apply weight decay to the embeddings too (norms and biases never).")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global gradient norm to this; null: no clipping.")

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if betas[0] >= 1 or betas[1] >= 1 or min(betas) < 0:
            raise ValueError(f"betas must lie in [0, 1), got {list(betas)}")
        return betas


class PretrainConfig(OptimConfig):
    """How to pre-train (stage 05). See docs/pretrain.md."""

    model_config = ConfigDict(extra="forbid")

    # Budget: a number of optimizer steps, or of tokens (rounded up to whole steps); 1,000 steps by default.
    steps: int | None = Field(None, gt=0, description="Optimizer steps (default 1,000 unless `tokens` is set).")
    tokens: int | None = Field(None, gt=0, description="Token budget instead of `steps`.")

    # Batch: tokens per optimizer step = batch_size × seq_len; accumulation fills it from micro-batches.
    batch_tokens: int = Field(16_384, gt=0, description="Tokens per optimizer step, over all data-parallel ranks.")
    micro_batch: int = Field(16, gt=0, description="Sequences per forward/backward on one rank (a pipeline micro-batch).")
    seq_len: int | None = Field(None, gt=0, description="Training sequence length; default the model's context_length.")

    precision: Precision = Field(
        "auto", description="Autocast dtype; auto: bf16 on a GPU that has it (else fp16), fp32 on the CPU."
    )
    compile: bool = Field(False, description="torch.compile each transformer block.")
    device: DeviceChoice = "auto"
    seed: int = 0

    # Evaluation.
    eval_every: int = Field(100, gt=0, description="Validation loss, perplexity and a sample every N steps (and at the end).")
    eval_batches: int = Field(20, gt=0, description="Validation batches of micro_batch sequences each.")
    sample_prompt: str = Field("The", description="Prompt of the sample generated at each evaluation.")
    sample_tokens: int = Field(48, ge=0, description="Tokens to generate; 0: no sample.")
    sample_top_k: int | None = Field(None, gt=0, description="Sample from the top k tokens; null: greedy.")

    # Checkpoints (full training state, torch.distributed.checkpoint).
    checkpoint_every: int = Field(200, gt=0)
    keep_last: int = Field(2, gt=0, description="Regular checkpoints kept; older ones are deleted.")
    golden_every: int | None = Field(1000, gt=0, description="Golden checkpoints, kept apart and never deleted; null: none.")

    # Loss-spike guard: roll back to the last golden checkpoint and skip the batches that spiked.
    spike_factor: float | None = Field(3.0, gt=1, description="A loss above factor × the running mean is a spike; null: off.")
    spike_window: int = Field(50, gt=0, description="Steps in the running mean (the guard waits until it is full).")
    spike_skip: int = Field(10, gt=0, description="Batches skipped after a rollback, ending with the one that spiked.")
    max_rollbacks: int = Field(5, ge=0, description="Give up after this many rollbacks.")

    # Parallel layout under torchrun; the product of the degrees is the number of processes.
    dp: int | None = Field(None, gt=0, description="Replicated data parallel (DDP) degree; default: the processes left over.")
    fsdp: int = Field(1, gt=0, description="Sharded data parallel (FSDP2 fully_shard) degree.")
    tp: int = Field(1, gt=0, description="Tensor parallel degree (whole attention heads and MLP columns per rank).")
    pp: int = Field(1, gt=0, description="Pipeline parallel degree (layers split into pp stages).")
    pp_schedule: Literal["gpipe", "1f1b"] = Field("1f1b", description="Pipeline schedule; micro-batches: the accumulation steps.")

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.steps is not None and self.tokens is not None:
            raise ValueError("set steps or tokens (the training budget), not both")
        return self
