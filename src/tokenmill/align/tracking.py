"""Where an alignment method's per-step figures go: metrics.jsonl always, and the experiment
trackers a user asks for (`logging.backends`): TensorBoard event files beside it (the
`tensorboard` package's own writer, so `tensorboard --logdir runs/` shows every method of every
run), and Weights & Biases or trackio when installed. A tracker asked for and not installed is
an error at the start of training, not a silent gap in the logs."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

from tokenmill.errors import ConfigError

# The package each tracker needs, and how to install it.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def check_backends(backends: Sequence[str]) -> None:
    """Raise a ConfigError naming each backend that is unknown or not installed."""
    for name in backends:
        if name not in TRACKERS:
            raise ConfigError(f"logging.backends: unknown backend '{name}' (known: {', '.join(TRACKERS)})")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"logging.backends: '{name}' is asked for but not installed (pip install {TRACKERS[name]})")


class MetricsLog:
    """One record per step to metrics.jsonl in `out_dir` and to each backend; the numeric values
    of a record become scalars at its `step`, under `prefix/` in the trackers (e.g. `dpo/loss`)."""

    def __init__(self, out_dir: Path, backends: Sequence[str] = (), prefix: str = "", run_name: str | None = None) -> None:
        check_backends(backends)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = f"{prefix}/" if prefix else ""
        self.jsonl = open(out_dir / "metrics.jsonl", "w", encoding="utf-8")
        self.tensorboard = None
        self.runs: list = []  # wandb / trackio runs: both speak wandb's log(dict, step=) and finish()
        if "tensorboard" in backends:
            from tensorboard.summary import Writer

            self.tensorboard = Writer(str(out_dir / "tensorboard"))
        name = run_name or out_dir.name
        if "wandb" in backends:
            import wandb

            self.runs.append(wandb.init(project="tokenmill", name=name, dir=str(out_dir), reinit=True))
        if "trackio" in backends:
            import trackio

            self.runs.append(trackio.init(project="tokenmill", name=name))

    def write(self, record: dict) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        step = record.get("step", 0)
        scalars = {f"{self.prefix}{k}": float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tensorboard is not None:
            for tag, value in scalars.items():
                self.tensorboard.add_scalar(tag, value, step=step)
        for run in self.runs:
            run.log(scalars, step=step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        for run in self.runs:
            run.finish()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
