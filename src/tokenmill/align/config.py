"""The `align` section of a run config: the data of stage 06 and one sub-section per method."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenmill.align.builtin import BuiltinConfig
from tokenmill.align.cai import CaiConfig
from tokenmill.align.dpo import DpoConfig
from tokenmill.align.ppo import PpoConfig
from tokenmill.align.reward import RewardConfig
from tokenmill.align.sft import SftConfig

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

    @model_validator(mode="after")
    def _check(self) -> AlignConfig:
        if "ppo" in self.methods and "rm" not in self.methods:
            raise ValueError("methods: ppo needs rm (the reward model it optimises against)")
        if self.deploy != "sft" and self.deploy not in self.methods:
            raise ValueError(f"deploy: {self.deploy} is not among the methods {self.methods}")
        return self
