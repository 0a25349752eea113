"""What each block hands to the next: the artifact on the arrow between two blocks of the
picture, named by its file, its size on disk and how many items it holds."""

from __future__ import annotations

from pathlib import Path

from tokenmill.explorer.files import read_json
from tokenmill.explorer.stages import model_folders
from tokenmill.figures import human_bytes


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _params(folder: Path) -> int | None:
    from tokenmill.model.io import WEIGHTS

    weights = folder / WEIGHTS
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _handoff(run_dir: Path, path: str, count: str | None) -> dict | None:
    found = run_dir / path
    if not found.exists():
        return None
    return {"file": path, "size": human_bytes(_size(found)), "count": count}


def _of(n: object, what: str) -> str | None:
    return f"{n:,} {what}" if isinstance(n, int) else None


def handoffs(run_dir: Path) -> list[dict | None]:
    """The eight arrows of the picture, 01→02 to 08→09; None where the artifact is not there yet."""
    data = read_json(run_dir / "01_data" / "stats.json", {}) or {}
    mixture = read_json(run_dir / "02_curate" / "mixture.json", {}) or {}
    encoded = read_json(run_dir / "03_encode" / "encode_stats.json", {}) or {}
    tokenizer = read_json(run_dir / "03_tokenizer" / "tokenmill_tokenizer.json", {}) or {}
    params = (read_json(run_dir / "04_model" / "params.json", {}) or {}).get("parameters", {})
    deployed = (read_json(run_dir / "06_align" / "summary.json", {}) or {}).get("deploy")
    models = model_folders(run_dir)
    aligned = f"06_align/{deployed}" if deployed else "06_align"
    return [
        _handoff(run_dir, "01_data/shards", _of(data.get("documents"), "documents")),
        _handoff(run_dir, "02_curate/shards", _of(mixture.get("docs_after"), "documents, mixed")),
        _handoff(run_dir, "03_encode", _of(encoded.get("tokens"), "tokens") or _of(tokenizer.get("vocab_size"), "token vocabulary")),
        _handoff(run_dir, "04_model/model.json", _of(params.get("total"), "parameters")),
        _handoff(run_dir, "05_pretrain/model", _of(_params(run_dir / "05_pretrain" / "model"), "weights")),
        _handoff(run_dir, aligned, _of(_params(run_dir / aligned), "weights") if deployed else None),
        {"file": "model folders", "size": human_bytes(sum(_size(run_dir / m["path"]) for m in models)),
         "count": _of(len(models), "folders")} if models else None,
        _handoff(run_dir, "08_quantize", _of(len(models), "models to evaluate")),
    ]
