"""A model folder opened in the explorer: presented as a run that holds that one model.

`tokenmill explore MODEL_DIR` shows of a model folder no run wrote (one converted from the Hub,
say) what the explorer shows of a run's model: its tokenizer on your text, its architecture and
parameters per role, attention on your prompt, a chat. The explorer reads run folders, so the
model folder is laid out as one in a temporary folder: 03_tokenizer links the model's own
tokenizer files, 04_model holds what `tokenmill model` computes from its model.json, and the
model itself is linked where a run keeps its model (08_quantize/model when it is quantized,
05_pretrain/model otherwise). Nothing is copied and nothing in the model folder is written.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tokenmill.model.io import WEIGHTS

TOKENIZER_DIR, MODEL_STAGE_DIR = "03_tokenizer", "04_model"


def model_place(model_dir: Path) -> str:
    """Where a run keeps a model like this one, inside the run folder."""
    return "08_quantize/model" if (model_dir / "quantization.json").is_file() else "05_pretrain/model"


def open_model_folder(model_dir: Path) -> tempfile.TemporaryDirectory:
    """A temporary run folder (`.name`, then the model folder's name) presenting `model_dir`; it is
    removed when the returned object is cleaned up or collected, or at exit."""
    from tokenmill.model.section import ModelSection
    from tokenmill.model.stage import build_model_stage
    from tokenmill.tokenizer import Tokenizer

    model_dir = model_dir.resolve()
    holder = tempfile.TemporaryDirectory(prefix="tokenmill-explore-")
    run_dir = Path(holder.name) / model_dir.name
    tokenizer_dir = run_dir / TOKENIZER_DIR
    tokenizer_dir.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.name not in (WEIGHTS, "model.json"):
            (tokenizer_dir / f.name).symlink_to(f)
    figures = []
    if (tokenizer_dir / "tokenizer.json").is_file():
        vocab = Tokenizer.load(tokenizer_dir).vocab_size
        figures.append({"stage": TOKENIZER_DIR, "figure": f"the model's tokenizer, vocabulary {vocab:,}"})
    else:
        tokenizer_dir.rmdir()  # no tokenizer: the block says so, and the model gets ids only
    metrics = build_model_stage(ModelSection(preset=str(model_dir)), None, run_dir / MODEL_STAGE_DIR)
    figures.append({"stage": MODEL_STAGE_DIR, "figure": f"{metrics['params']:,} parameters"})
    place = run_dir / model_place(model_dir)
    place.parent.mkdir(parents=True)
    place.symlink_to(model_dir, target_is_directory=True)
    (run_dir / "summary.json").write_text(json.dumps(figures), encoding="utf-8")
    return holder


def run_folder(holder: tempfile.TemporaryDirectory) -> Path:
    """The run folder inside what `open_model_folder` returned."""
    (run_dir,) = Path(holder.name).iterdir()
    return run_dir

