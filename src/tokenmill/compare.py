"""`tokenmill compare RUN_A RUN_B`: two run folders' summaries side by side — per stage its key
figure and wall time in each run, then every numeric metric the two manifests record, with the
difference, so that a change of seed, corpus or setting shows where it moved the figures."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tokenmill.errors import TokenmillError
from tokenmill.runfolder import MANIFEST, RunFolder
from tokenmill.runsummary import HEADLINES


def _numbers(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric metrics of a stage, nested dicts flattened to dotted keys (e.g. seconds.sft)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def _stages(root: Path) -> dict[str, dict]:
    if not (root / MANIFEST).is_file():
        raise TokenmillError(f"{root} is not a run folder: it has no {MANIFEST}")
    return RunFolder(root).manifest().get("stages", {})


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value == int(value) and abs(value) >= 1000 else f"{value:.4g}"


def compare_runs(run_a: Path, run_b: Path) -> str:
    """The side-by-side text `tokenmill compare` prints."""
    a, b = _stages(run_a), _stages(run_b)
    names = list(a) + [n for n in b if n not in a]  # pipeline order
    lines = [f"A: {run_a}", f"B: {run_b}", ""]
    for name in names:
        ea, eb = a.get(name) or {}, b.get(name) or {}
        headline = HEADLINES.get(name)
        lines.append(f"{name}")
        for label, entry in (("A", ea), ("B", eb)):
            wall = entry.get("wall_time_s")
            figure = headline(entry["metrics"]) if headline and entry.get("metrics") else ""
            status = entry.get("status", "absent")
            lines.append(f"  {label} {status:<7} {'' if wall is None else f'{wall:.1f} s':>9}  {figure}")
    width = 0
    rows = []
    for name in names:
        na = _numbers((a.get(name) or {}).get("metrics") or {})
        nb = _numbers((b.get(name) or {}).get("metrics") or {})
        for key in sorted(set(na) | set(nb)):
            va, vb = na.get(key), nb.get(key)
            diff = "" if va is None or vb is None else f"{vb - va:+.4g}"
            rows.append((f"{name} {key}", _fmt(va), _fmt(vb), diff))
            width = max(width, len(rows[-1][0]))
    if rows:
        lines += ["", f"{'metric':<{width}}  {'A':>12}  {'B':>12}  {'B - A':>10}"]
        lines += [f"{k:<{width}}  {va:>12}  {vb:>12}  {d:>10}" for k, va, vb, d in rows]
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="print two run folders' summaries side by side",
        description="Read RUN_A/manifest.json and RUN_B/manifest.json and print, per stage, each run's key figure "
        "and wall time, then every numeric metric of both with the difference B - A. Per-step curves: "
        "`tensorboard --logdir` over both run folders (alignment writes event files in 06_align/*/tensorboard).",
    )
    p.add_argument("run_a", metavar="RUN_A", type=Path, help="a run folder")
    p.add_argument("run_b", metavar="RUN_B", type=Path, help="another run folder")
    p.set_defaults(func=lambda args: print(compare_runs(args.run_a, args.run_b)) or 0)
