"""The pieces a panel is made of: a list of sections the page draws, each a dict of data.

A section has a `type` (idea, facts, chart, figures, table, samples, pairs, redactions,
architecture, tokenize, attention, follow, compare, engine, chat, note) and that type's fields; the page puts every value into
the document as text. Charts are the stages' own files, named by their path inside the run
(`file?path=...`); only a chart of a stage still running is drawn by the explorer
(`chart/NN/NAME.svg`, see progress.py).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from tokenmill.explorer.files import read_json
from tokenmill.explorer.stages import stage_status


def facts(title: str, items: list[tuple]) -> dict:
    """Labelled figures: (label, value) or (label, value, reading), the reading one line that says
    what the figure means; a None value is left out."""
    return {"type": "facts", "title": title,
            "items": [[label(k), _show(v), *rest] for k, v, *rest in items if v is not None]}


def label(key: str) -> str:
    """A key of a stats file as words ("docs_in" -> "docs in"): the page never shows a bare key."""
    return key.replace("_", " ")


def chart(title: str, src: str) -> dict:
    return {"type": "chart", "title": title, "src": src}


def file_src(path: str) -> str:
    """The explorer's route to a file of the run."""
    return f"file?path={quote(path, safe='')}"


def figure(run_dir: Path, title: str, path: str) -> dict | None:
    """A chart a stage wrote, as a titled chart; None when the run holds no such file."""
    return chart(title, file_src(path)) if (run_dir / path).is_file() else None


def table(title: str, columns: list[str], rows: list[list]) -> dict:
    return {"type": "table", "title": title, "columns": [label(c) for c in columns],
            "rows": [[_show(c) for c in r] for r in rows]}


def note(text: str) -> dict:
    return {"type": "note", "text": text}


def _show(v: object) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}"
    return str(v)


def stage_figures(run_dir: Path, folder: str, title: str | None = None) -> dict | None:
    """The SVG figures the stage itself wrote (the manifest lists them), shown as they are."""
    entry = (read_json(run_dir / "manifest.json", {}) or {}).get("stages", {}).get(folder, {})
    names = entry.get("figures") or sorted(p.name for p in (run_dir / folder).glob("*.svg"))
    files = [f"{folder}/{n}" for n in names if (run_dir / folder / n).is_file()]
    return {"type": "figures", "title": title or f"charts the stage drew ({folder})", "files": files} if files else None


def stage_facts(run_dir: Path, folder: str) -> dict:
    entry = (read_json(run_dir / "manifest.json", {}) or {}).get("stages", {}).get(folder, {})
    return facts(f"stage folder {folder}", [("status", stage_status(run_dir, folder)), ("wall time (s)", entry.get("wall_time_s")),
                               ("finished", entry.get("finished_at"))])


def each_figure_once(sections: list[dict | None]) -> list[dict]:
    """The sections that exist, with every figure shown once: a stage figure a panel placed as a
    chart is left out of that stage's list of figures (and the list, when nothing is left)."""
    placed = {s["src"] for s in sections if s and s["type"] == "chart"}
    out = []
    for s in sections:
        if s and s["type"] == "figures":
            s = {**s, "files": [f for f in s["files"] if file_src(f) not in placed]}
        if s and (s["type"] != "figures" or s["files"]):
            out.append(s)
    return out
