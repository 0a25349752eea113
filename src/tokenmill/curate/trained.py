"""A corpus block that trains a model on a sample of the corpus in fit, then scores each document with it.

fit leaves in the block's folder the model (`model_file`), `state.json` (what apply needs
besides the model) and `metrics.json` (the state and what a person can judge the model by).
When there was nothing to train on, the state says so (`"trained": false` and the reason)
and apply lets every document pass unscored, counted as "untrained": a corpus without a
reference domain is still curated by the other blocks.
"""

from __future__ import annotations

import json
import sys
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import PrivateAttr

from tokenmill.atomic import write_json
from tokenmill.curate.block import BlockStats, CorpusBlock, FitContext
from tokenmill.curate.workdir import DONE, open_workdir, shards_fingerprint
from tokenmill.errors import TokenmillError
from tokenmill.sources.document import Document

STATE_FILE = "state.json"
METRICS_FILE = "metrics.json"


class TrainedBlock(CorpusBlock):
    """Subclasses set `model_file`, `apply_only`, and write `fit`, `load_model` and `score`."""

    model_file: ClassVar[str]
    # Settings that only apply reads: changing them keeps the fitted model.
    apply_only: ClassVar[tuple[str, ...]] = ()

    _model: Any = PrivateAttr(None)
    _state: dict[str, Any] | None = PrivateAttr(None)

    def open_fit(self, ctx: FitContext) -> bool:
        """Make `ctx.workdir` ready for this fit; True when the same fit over the same shards is already done."""
        settings = self.model_dump(mode="json", exclude={"enabled", *self.apply_only})
        return open_workdir(ctx.workdir, {"block": settings, "seed": ctx.seed, "shards": shards_fingerprint(ctx.shards)})

    def finish_fit(self, workdir: Path, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        if not state["trained"]:
            print(f"[{self.name}] not trained: {state['reason']}; documents pass unscored", file=sys.stderr)
        write_json(workdir / STATE_FILE, state)
        write_json(workdir / METRICS_FILE, {**state, **metrics})
        write_json(workdir / DONE, {"done": True})

    def load(self, workdir: Path) -> None:
        state_path = workdir / STATE_FILE
        if not state_path.exists():
            raise TokenmillError(f"{self.name}: no fitted state in {workdir} (run fit first)")
        self._state = json.loads(state_path.read_text(encoding="utf-8"))
        self._model = self.load_model(workdir / self.model_file) if self._state["trained"] else None

    @abstractmethod
    def load_model(self, path: Path) -> Any:
        ...

    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        if self._state is None:
            raise TokenmillError(f"{self.name}: apply before load")
        if self._model is None:
            stats.count("untrained")
            return doc
        return self.score(doc, stats)

    @abstractmethod
    def score(self, doc: Document, stats: BlockStats) -> Document | None:
        """Score `doc` with the loaded model (`self._model`, `self._state`): annotate it, or remove it."""


def distribution(values: list[float], digits: int) -> dict[str, float]:
    """How many values, and their 10th, 50th and 90th percentiles rounded to `digits`."""
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"docs": len(values), "p10": round(float(p10), digits), "median": round(float(p50), digits),
            "p90": round(float(p90), digits)}
