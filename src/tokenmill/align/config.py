"""The `align` section of a run config: the data of stage 06 and one sub-section per method.

Every method's settings live here, apart from its code, so that reading a config does not
import torch (`tokenmill --help` and `tokenmill data` stay quick).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from tokenmill.device import DeviceChoice, Precision
from tokenmill.pretrain.config import OptimConfig

# The kinds of documented item the built-in sets ask about, as a question names them.
KIND_NAMES = {
    "module": "the Python module",
    "function": "the Python function",
    "class": "the Python class",
    "method": "the Python method",
    "command": "the command",
    "c_function": "the C function",
    "manual": "the manual page",
}


class BuiltinConfig(BaseModel):
    """The built-in SFT and preference sets (see docs/alignment.md)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    eval_items: int = Field(200, gt=0, description="Items held out: every eval question is about one of them.")
    train_items: int = Field(2000, gt=0, description="At most this many items for the training sets.")
    multi_turn: float = Field(0.2, ge=0, le=1, description="Share of SFT conversations with a second question.")
    max_answer_chars: int = Field(160, gt=20, description="Answers are the first sentence, cut at a word to this.")
    kinds: list[str] = Field(default_factory=lambda: list(KIND_NAMES), description="Kinds of item to ask about.")


class EndpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="the API root, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="the model name the endpoint serves")
    api_key_env: str | None = Field(None, description="environment variable holding the API key (never the key itself)")
    timeout: float = Field(60.0, gt=0, description="seconds per request")
    max_retries: int = Field(2, ge=0)
    concurrency: int = Field(8, ge=1, description="requests in flight at once")


WeightsDtype = Literal["fp32", "bf16"]


class LoggingConfig(BaseModel):
    """Where per-step figures go besides metrics.jsonl (docs/alignment.md, "Comparing runs")."""

    model_config = ConfigDict(extra="forbid")

    backends: list[Literal["tensorboard", "wandb", "trackio"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="tensorboard: event files in each method's tensorboard/ folder; wandb, trackio: when installed.",
    )


class LoraConfig(BaseModel):
    """Low-rank adapters (Hu et al., 2021) instead of full fine-tuning: W + (alpha/rank)·B·A on the
    target linear layers, the rest frozen; merged into W when the model folder is written."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, gt=0, description="r, the adapters' inner dimension")
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha/rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    targets: list[str] = Field(
        default_factory=lambda: ["wqkv", "wo", "w1", "w2", "w3"],
        description="names of the linear layers to adapt (the last part of their module name)",
    )


class TrainConfig(OptimConfig):
    """What every alignment trainer shares: budget, batch, precision, and pre-training's optimizer
    and schedule keys (OptimConfig) with defaults for fine-tuning."""

    epochs: float = Field(1.0, gt=0, description="Passes over the training set (a fraction stops early).")
    steps: int | None = Field(None, gt=0, description="Optimizer steps instead of `epochs`.")
    batch_size: int = Field(16, gt=0, description="Rows (examples, pairs or packed rows) per optimizer step.")
    seq_len: int | None = Field(None, gt=0, description="Longest sequence; default the model's context_length.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup from lr/warmup_steps to lr.")
    weight_decay: float = Field(0.0, ge=0)
    precision: Precision = Field(
        "auto", description="Autocast dtype, as pre-training's; auto: bf16 on a GPU that has it (else fp16), fp32 on the CPU."
    )
    dtype: WeightsDtype = Field(
        "fp32", description="The weights' dtype in training: fp32, or bf16 (weights, gradients and AdamW moments in "
        "bfloat16: half the memory, for an open model too large to fine-tune in fp32); the folder written keeps it."
    )
    eval_every: int = Field(50, gt=0, description="Held-out figures every N steps (and at the end).")
    seed: int = 0
    device: DeviceChoice = "auto"
    lora: LoraConfig | None = Field(None, description="Train low-rank adapters instead of every weight; null: full.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    def total_steps(self, batches_per_epoch: int) -> int:
        return self.steps or max(1, round(self.epochs * batches_per_epoch))


class SftConfig(TrainConfig):
    """Supervised fine-tuning (`tokenmill sft`); defaults sized for the quickstart model."""

    epochs: float = Field(2.0, gt=0, description="Passes over the training conversations.")
    batch_size: int = Field(8, gt=0, description="Rows per optimizer step (packed rows of seq_len tokens).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    packing: bool = Field(True, description="Pack short conversations into full rows (attention kept per conversation).")
    samples: int = Field(3, ge=0, description="Greedy answers to held-out questions written to summary.json.")
    sample_tokens: int = Field(48, gt=0, description="Longest sample answer, in tokens.")


class RewardConfig(TrainConfig):
    """Reward model training (`tokenmill rm`); defaults sized for the quickstart model."""

    epochs: float = Field(2.0, gt=0, description="Passes over the training pairs.")
    batch_size: int = Field(16, gt=0, description="Preference pairs per optimizer step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    center_rewards: float | None = Field(
        0.01, ge=0, description="Weight of the mean squared reward added to the loss, keeping rewards near 0 "
        "(Eisenstein et al., 2023; TRL's center_rewards_coefficient); null: none.",
    )
    group_by_length: bool = Field(
        False, description="Batch pairs of similar length (less padding, a third less time on the built-in set). "
        "Off for the reward model: on the built-in set, PPO against one trained so shortened its answers from 21 to "
        "8 tokens without its reward rising, where against one trained on pairs in file order its reward rose.",
    )


class DpoConfig(TrainConfig):
    """DPO (`tokenmill dpo`); defaults sized for the quickstart model."""

    epochs: float = Field(1.0, gt=0, description="Passes over the training pairs.")
    batch_size: int = Field(16, gt=0, description="Preference pairs per optimizer step.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (DPO wants a small one).")
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference (IPO: its τ).")
    loss: Literal["sigmoid", "ipo"] = Field("sigmoid", description="sigmoid: DPO; ipo: identity preference optimisation.")
    precompute_ref: bool = Field(
        False, description="Compute the reference log-probabilities once before training instead of keeping a frozen copy."
    )
    group_by_length: bool = Field(
        True, description="Batch pairs of similar length: sorted by length within windows of 50 batches, as "
        "transformers' group_by_length (less padding: 37% of the tokens to 10% on the built-in set).",
    )


class PpoConfig(OptimConfig):
    """PPO's rollouts and update. The optimizer keys are pre-training's (OptimConfig): AdamW, here
    without weight decay, and the learning rate decayed over the steps as TRL and Ziegler et al.
    anneal it — a late update at the full rate is what undid a run that had found the reward."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(24, ge=1, description="rollouts, each followed by an update")
    batch_size: int = Field(16, ge=2, description="prompts (one answer each) per rollout")
    minibatch_size: int = Field(8, ge=1)
    ppo_epochs: int = Field(2, ge=1, description="passes over each rollout")
    max_new_tokens: int = Field(40, ge=1)
    dtype: WeightsDtype = Field("fp32", description="the policy's dtype in training (and the value head's), as TrainConfig.dtype")
    temperature: float = Field(1.0, gt=0, description="sampling temperature; log-probs use the same scaled logits")
    lr: float = Field(2e-4, gt=0, description="AdamW's peak; high for a large model, right for the quickstart's tiny one")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from lr/warmup_steps to lr.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="The floor of the cosine, as a share of lr (1: constant).")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-5, gt=0)
    grad_clip: float | None = Field(
        1.0, gt=0, validation_alias=AliasChoices("grad_clip", "max_grad_norm"),
        description="Clip the global gradient norm to this (formerly max_grad_norm, still read); null: no clipping.")
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ")
    clip_range: float = Field(0.2, gt=0, description="ε of the clipped policy ratio")
    clip_range_value: float = Field(0.2, gt=0, description="how far a value may move from its rollout value")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    normalize_prompts: int = Field(
        64, ge=0, description="training prompts whose SFT answers set the score's scale: the reward is the reward "
        "model's score less their mean, over their standard deviation (Ziegler et al., 2019); 0: the raw score")
    kl_coef: float = Field(0.1, ge=0, description="β, the initial weight of the per-token KL penalty")
    adaptive_kl: bool = Field(True, description="adapt β towards kl_target (Ziegler et al., 2019)")
    kl_target: float = Field(6.0, gt=0, description="KL budget, nats per answer: the controller's target")
    kl_horizon: int = Field(200, ge=1, description="samples over which the controller closes the gap")
    eval_prompts: int = Field(64, ge=0, description="held-out prompts for the win rate over the SFT model")
    seed: int = 0
    device: DeviceChoice = "auto"
    lora: LoraConfig | None = Field(None, description="low-rank adapters on the policy instead of every weight")
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


class CaiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: EndpointConfig | None = Field(None, description="an OpenAI-compatible endpoint; None: the local model folder")
    constitution: Path | None = Field(None, description="principles, one a line; None: the shipped default")
    critique_prompt: Path | None = Field(None, description="the critique request; None: the shipped default")
    revision_prompt: Path | None = Field(None, description="the revision request; None: the shipped default")
    max_prompts: int = Field(32, ge=1, description="prompts taken from the prompt set")
    answer_tokens: int = Field(40, ge=1, description="most new tokens of an answer, and of a revision")
    critique_tokens: int = Field(32, ge=1, description="most new tokens of a critique")
    temperature: float = Field(0.7, ge=0)
    batch_size: int = Field(32, ge=1, description="conversations decoded together by the local model")
    seed: int = 0
    device: DeviceChoice = Field("auto", description="where the local model runs")

Method = Literal["rm", "dpo", "ppo", "cai"]


class AlignData(BaseModel):
    """Files of your own (formats: docs/alignment.md); each one left empty is the built-in set's."""

    model_config = ConfigDict(extra="forbid")

    sft_train: str | None = None
    sft_eval: str | None = None
    pref_train: str | None = None
    pref_eval: str | None = None
    prompts_train: str | None = None
    prompts_eval: str | None = None

    def given(self) -> dict[str, str]:
        return {name: path for name, path in self.model_dump().items() if path}


class AlignConfig(BaseModel):
    """Stage 06: SFT always, then the methods listed; `deploy` names the model stage 08 quantizes."""

    model_config = ConfigDict(extra="forbid")

    methods: list[Method] = Field(
        default_factory=lambda: ["rm", "dpo", "ppo", "cai"], description="Methods after SFT, run in this order."
    )
    deploy: Literal["sft", "dpo", "ppo"] = Field("dpo", description="The aligned model that goes on to stage 08.")
    builtin: BuiltinConfig = Field(default_factory=BuiltinConfig)
    data: AlignData = Field(default_factory=AlignData)
    sft: SftConfig = Field(default_factory=SftConfig)
    rm: RewardConfig = Field(default_factory=RewardConfig)
    dpo: DpoConfig = Field(default_factory=DpoConfig)
    ppo: PpoConfig = Field(default_factory=PpoConfig)
    cai: CaiConfig = Field(default_factory=CaiConfig)
    lora: LoraConfig | None = Field(None, description="Low-rank adapters for SFT, RM, DPO and PPO (a method's own `lora` wins).")
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _check(self) -> AlignConfig:
        # The section-wide settings reach every method that does not set its own.
        for method in (self.sft, self.rm, self.dpo, self.ppo):
            for key in ("lora", "logging"):
                if key in self.model_fields_set and key not in method.model_fields_set:
                    setattr(method, key, getattr(self, key))
        if "ppo" in self.methods and "rm" not in self.methods:
            raise ValueError("methods: ppo needs rm (the reward model it optimises against)")
        if self.deploy != "sft" and self.deploy not in self.methods:
            raise ValueError(f"deploy: {self.deploy} is not among the methods {self.methods}")
        return self
