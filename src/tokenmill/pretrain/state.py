"""Where a run stands, besides its tensors: step, data position, skipped batches, recent losses.

The data sampler is a pure function of (seed, position) (see tokenizer/dataset.py), so its
whole state is the next position; batches that the loss-spike guard threw out are listed
and never drawn again. Everything here is JSON and travels in the checkpoint's marker file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    position: int = 0  # the next batch position of the data sampler
    tokens: int = 0  # tokens trained on
    skipped: list[list[int]] = field(default_factory=list)  # [first, last] batch positions never to use
    recent_losses: list[float] = field(default_factory=list)  # the spike guard's window
    rollbacks: int = 0
    scaler: dict[str, Any] | None = None  # fp16 loss scaling

    def next_position(self) -> int:
        """The batch position to train on next, past any skipped range."""
        moved = True
        while moved:
            moved = False
            for first, last in self.skipped:
                if first <= self.position <= last:
                    self.position, moved = last + 1, True
        return self.position

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        return cls(**data)
