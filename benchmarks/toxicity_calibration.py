"""Pick the toxicity threshold and window on a labelled set; print one JSON line.

The set (tests/data/toxicity_labelled.jsonl) holds abusive comments (label 1) and benign text
that a word-level model finds hard (label 0): medicine and sexual health, law, history quoting
the language of its time, literature, technical text about killing processes, casual swearing,
words with a second meaning. Each row belongs to the `calibration` or the `heldout` split.

Documents that reach this filter in a pipeline are longer than one comment, so from each
split's own rows the script also builds, with a fixed seed, longer documents of three kinds:
a thread of three abusive posts and one benign (label 1), a page of four benign posts and one
abusive (label 0: one bad reply does not make a page toxic) and a page of five benign posts
(label 0).

The threshold is the one with the best F0.5 on the calibration split (precision counts double:
a wrongly removed medical or legal text is lost for good); the held-out split then says how
well the choice carries over. The same is done for other window sizes and for the
aggregations the block does not use, to show why it scores windows.

    python benchmarks/toxicity_calibration.py [--data tests/data/toxicity_labelled.jsonl]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tokenmill.curate.toxicity import ToxicityFilter, windows

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "toxicity_labelled.jsonl"
GRID = [round(float(t), 2) for t in (*np.arange(0.05, 0.96, 0.05), 0.97, 0.98, 0.99)]
SPLITS = ("calibration", "heldout")


def load(path: Path, per_kind: int = 20, seed: int = 0) -> dict[str, list[tuple[str, str, int]]]:
    """(kind, text, label) per split: the written rows, then the composed documents."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    data: dict[str, list[tuple[str, str, int]]] = {}
    for split in SPLITS:
        toxic = [r["text"] for r in rows if r["split"] == split and r["label"] == 1]
        benign = [r["text"] for r in rows if r["split"] == split and r["label"] == 0]
        docs = [("row", r["text"], r["label"]) for r in rows if r["split"] == split]
        for _ in range(per_kind):
            for kind, n_toxic, n_benign, label in (
                ("thread_mostly_abusive", 3, 1, 1),
                ("page_one_abusive_post", 1, 4, 0),
                ("page_benign", 0, 5, 0),
            ):
                posts = list(rng.choice(toxic, n_toxic, replace=False)) + list(rng.choice(benign, n_benign, replace=False))
                rng.shuffle(posts)
                docs.append((kind, "\n\n".join(posts), label))
        data[split] = docs
    return data


def metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    flagged = scores >= threshold
    tp = int((flagged & (labels == 1)).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int((labels == 1).sum()), 1)
    f05 = 1.25 * precision * recall / (0.25 * precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f0.5": round(f05, 4)}


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    return round(float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()), 4)


def evaluate(score: Callable[[str], float], data: dict[str, list[tuple[str, str, int]]]) -> dict:
    scores = {s: np.array([score(text) for _, text, _ in data[s]]) for s in SPLITS}
    labels = {s: np.array([label for _, _, label in data[s]]) for s in SPLITS}
    best = max(GRID, key=lambda t: (metrics(scores["calibration"], labels["calibration"], t)["f0.5"], t))
    return {
        "threshold": best,
        "calibration": metrics(scores["calibration"], labels["calibration"], best),
        "heldout": metrics(scores["heldout"], labels["heldout"], best),
        "auc": auc(np.concatenate(list(scores.values())), np.concatenate(list(labels.values()))),
        "_scores": scores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    data = load(args.data)
    block = ToxicityFilter()

    def sentences(text: str, reduce: Callable[[np.ndarray, np.ndarray], float]) -> float:
        parts = windows(text, 1)
        return reduce(block.probabilities(parts), np.array([len(p) for p in parts], dtype=np.float64)) if parts else 0.0

    alternatives = {
        "whole_document": lambda t: float(block.probabilities([t])[0]),
        "max_sentence": lambda t: sentences(t, lambda p, w: float(p.max())),
        "mean_sentence": lambda t: sentences(t, lambda p, w: float(p @ w / w.sum())),
        **{f"mean_window_{n}": ToxicityFilter(window_chars=n).score for n in (100, 200, 300, 500, 1000)},
    }
    compared = {name: evaluate(fn, data) for name, fn in alternatives.items()}
    chosen = evaluate(block.score, data)
    flagged_by_kind = {
        f"{split}/{kind}": round(
            float(np.mean([s >= block.threshold for (k, _, _), s in zip(data[split], chosen["_scores"][split]) if k == kind])), 4
        )
        for split in SPLITS
        for kind in ("row", "thread_mostly_abusive", "page_one_abusive_post", "page_benign")
    }
    texts = [(text, label, s) for split in SPLITS for (kind, text, label), s in zip(data[split], chosen["_scores"][split]) if kind == "row"]
    print(
        json.dumps(
            {
                "documents": {s: len(data[s]) for s in SPLITS},
                "window_chars": block.window_chars,
                "default_threshold": block.threshold,
                "chosen": {k: v for k, v in chosen.items() if k != "_scores"},
                "at_default_threshold": {
                    s: metrics(chosen["_scores"][s], np.array([lab for _, _, lab in data[s]]), block.threshold) for s in SPLITS
                },
                "flagged_share_by_kind": flagged_by_kind,
                "compared": {name: {k: v for k, v in r.items() if k != "_scores"} for name, r in compared.items()},
                "false_positive_rows": [t[:80] for t, lab, s in texts if lab == 0 and s >= block.threshold],
                "false_negative_rows": [t[:80] for t, lab, s in texts if lab == 1 and s < block.threshold],
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
