"""Charts of pre-training while it runs, drawn from the steps logged so far.

A finished stage's charts are its own files (loss.svg, lr.svg, grad_norm.svg, written by
tokenmill.pretrain.report); these are the same charts, drawn by the same functions, from the
work folder's metrics.jsonl as it grows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tokenmill.explorer.files import read_jsonl
from tokenmill.explorer.stages import stage_status
from tokenmill.pretrain.report import grad_norm_chart, loss_chart, lr_chart


class NoChart(LookupError):
    """The run holds nothing to draw this chart from."""


# The reference lines of the loss chart (the corpus's unigram entropy) come with the stage's
# report, written when it finishes: the live chart has none.
LIVE: dict[str, Callable[[list[dict]], str]] = {
    "loss": lambda metrics: loss_chart(metrics, {}),
    "lr": lr_chart,
    "grad_norm": grad_norm_chart,
}


def pretrain_logs(run_dir: Path) -> Path | None:
    """Where the training logs are: the work folder while the stage runs (a re-run leaves the
    last run's folder in place until it finishes), else the finished stage's folder."""
    finished, work = run_dir / "05_pretrain", run_dir / "05_pretrain.work"
    order = (work, finished) if stage_status(run_dir, "05_pretrain") == "running" else (finished, work)
    return next((folder for folder in order if (folder / "metrics.jsonl").is_file()), None)


def draw(run_dir: Path, number: str, name: str) -> str:
    """The SVG of live chart `name` of block `number` (05: loss, lr, grad_norm), drawn from the
    logs `pretrain_logs` finds; NoChart when there is no such chart or no step logged yet."""
    paint = LIVE.get(name) if number == "05" else None
    if paint is None:
        raise NoChart(f"no live chart {number}/{name}: the explorer draws only pre-training's {', '.join(LIVE)} "
                      "while it runs; every other chart is a file its stage wrote")
    logs = pretrain_logs(run_dir)
    metrics = [m for m in read_jsonl(logs / "metrics.jsonl") if "step" in m] if logs else []
    if not metrics:
        raise NoChart(f"chart {number}/{name}: no training step is logged yet")
    return paint(metrics)
