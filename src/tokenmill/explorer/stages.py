"""The nine blocks of the pipeline picture, what state each is in, and the run's model folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenmill.explorer.files import read_json
from tokenmill.model.io import WEIGHTS


@dataclass(frozen=True)
class Block:
    number: str  # "01" .. "09", as in the run folder
    title: str
    folders: tuple[str, ...]  # the stage folders whose artifacts the block shows


BLOCKS = (
    Block("01", "Training data", ("01_data",)),
    Block("02", "Data processing", ("02_curate",)),
    Block("03", "Tokenization", ("03_tokenizer", "03_encode")),
    Block("04", "Architecture", ("04_model",)),
    Block("05", "Pre-training", ("05_pretrain",)),
    Block("06", "Alignment", ("06_align",)),
    Block("07", "Model weights", ()),  # reads the model folders the other stages wrote
    Block("08", "Deployment", ("08_quantize",)),
    Block("09", "Evaluation", ("09_eval",)),
)

# Every model folder a run may hold, most downstream first: the order in which the explorer
# picks the model it serves. Quantization is the last stage, so its folder comes first; then the
# aligned models (DPO, then PPO, then SFT, the base both start from); the pre-trained model last.
MODEL_FOLDERS = (
    ("quantized", "08_quantize/model", "quantized (stage 08)"),
    ("dpo", "06_align/dpo", "DPO (stage 06)"),
    ("ppo", "06_align/ppo", "PPO (stage 06)"),
    ("sft", "06_align/sft", "SFT (stage 06)"),
    ("pretrained", "05_pretrain/model", "pre-trained (stage 05)"),
)


def stage_status(run_dir: Path, folder: str) -> str:
    """done, running, failed, or "not run"; a folder the manifest does not know counts when it exists."""
    entry = (read_json(run_dir / "manifest.json", {}) or {}).get("stages", {}).get(folder)
    if entry and entry.get("status") in ("done", "running", "failed"):
        if entry["status"] == "done" and not (run_dir / folder).is_dir():
            return "not run"  # removed since
        return entry["status"]
    return "done" if (run_dir / folder).is_dir() else "not run"


def block_status(run_dir: Path, b: Block) -> str:
    if not b.folders:
        return "done" if model_folders(run_dir) else "not run"
    states = [stage_status(run_dir, f) for f in b.folders]
    for state in ("running", "failed"):
        if state in states:
            return state
    if all(s == "done" for s in states):
        return "done"
    return "partly done" if "done" in states else "not run"


def is_model_folder(path: Path) -> bool:
    return (path / "model.json").is_file() and (path / WEIGHTS).is_file()


def model_folders(run_dir: Path) -> list[dict]:
    """The run's model folders that exist: key, path inside the run, label; most downstream first."""
    return [
        {"key": key, "path": rel, "label": label}
        for key, rel, label in MODEL_FOLDERS
        if is_model_folder(run_dir / rel)
    ]


def latest_model(run_dir: Path) -> Path | None:
    """The most downstream model folder of the run (see MODEL_FOLDERS), or None."""
    found = model_folders(run_dir)
    return run_dir / found[0]["path"] if found else None


def model_folder(run_dir: Path, key: str) -> Path | None:
    """The folder of a model key ("pretrained", "dpo", ...) when the run has it; never a path from a request."""
    return next((run_dir / m["path"] for m in model_folders(run_dir) if m["key"] == key), None)
