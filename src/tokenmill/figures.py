"""Every chart tokenmill draws, as SVG text drawn by matplotlib: one function per kind of chart.

The stages write their charts as files beside what they measured, and the explorer shows those
files; it draws with these same functions only what changes while it is watched (a pre-training
run in progress, attention on a prompt typed into the page).

Text is drawn as glyph outlines (svg.fonttype "path") and never parsed as mathtext, so a label
taken from a document (a token, a file name with a "$") is shown as it is and cannot become
markup. Figures are built without pyplot, and one at a time: matplotlib is not thread-safe, and
the explorer answers requests from a pool of threads. matplotlib is imported when the first
chart is drawn: the import takes about a second, which a command that draws nothing (reading a
config, serving a model) should not pay.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLORS = ("#4878a8", "#d0743c", "#6a9f58", "#b05a7a", "#8c6bb1", "#7f7f7f")
STYLE = {
    "svg.fonttype": "path",
    "svg.hashsalt": "tokenmill",  # the same figure gives the same bytes
    "text.parse_math": False,
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_lock = threading.Lock()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}" if n / size < 100 else f"{n / size:.0f}{unit}"
    return f"{n:.0f}"


def _tick(v: float) -> str:
    return f"{v:.3g}"


def _draw(width: float, height: float, paint: Callable[[Figure], None]) -> str:
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with _lock, rc_context(STYLE):
        fig = Figure(figsize=(width, height))
        paint(fig)
        out = io.StringIO()
        fig.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = out.getvalue()
    # The XML declaration and the DOCTYPE (an external DTD no viewer fetches) are dropped: the
    # file is UTF-8, XML's default, and starts at its <svg> element.
    return svg[svg.index("<svg"):]


def _title(ax: Axes, title: str) -> None:
    ax.set_title(title, loc="left", fontweight="bold")


def bar_chart(title: str, rows: Sequence[tuple[str, float, str]], xlabel: str = "",
              ticks: Callable[[float], str] | None = None) -> str:
    """Horizontal bars, one (label, value, value text) per row, the first on top; `xlabel` names
    the value and its unit, `ticks` formats the axis (human_bytes, human_count)."""
    labels, values = [r[0] for r in rows], [r[1] for r in rows]

    def paint(fig: Figure) -> None:
        ax = fig.add_subplot()
        y = np.arange(len(rows))
        ax.barh(y, values, color=COLORS[0])
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        biggest = max(values, default=0) or 1
        for yi, v, (_, _, text) in zip(y, values, rows):
            ax.text(v + biggest * 0.01, yi, text, va="center")
        ax.set_xlim(0, biggest * 1.25)
        if all(float(v).is_integer() for v in values):
            ax.locator_params(axis="x", integer=True)  # counts: no tick at 0.2 of a document
        if ticks is not None:
            ax.xaxis.set_major_formatter(lambda v, _: ticks(v))
        ax.set_xlabel(xlabel)
        _title(ax, title)

    return _draw(6.4, 0.9 + 0.3 * max(len(rows), 1), paint)


def funnel_chart(title: str, steps: Sequence[tuple[str, float, float, str]], unit: str = "documents") -> str:
    """A funnel: one (step, left after it, removed by it, note) per row, centred bars narrowing
    downwards, the part each step removed drawn beside what is left."""

    def paint(fig: Figure) -> None:
        ax = fig.add_subplot()
        y = np.arange(len(steps))
        kept = np.array([s[1] for s in steps], dtype=float)
        removed = np.array([s[2] for s in steps], dtype=float)
        ax.barh(y, kept, left=-kept / 2, color=COLORS[0], label=f"{unit} left")
        ax.barh(y, removed, left=kept / 2, color=COLORS[1], label=f"{unit} removed")
        ax.set_yticks(y, [s[0] for s in steps])
        ax.invert_yaxis()
        top = max((k + r for k, r in zip(kept, removed)), default=1) or 1
        for yi, (_, _, _, note) in zip(y, steps):
            ax.text(top / 2 + top * 0.05, yi, note, va="center")
        ax.set_xlim(-top / 2 - top * 0.02, top * 1.25)
        ax.set_xticks([])
        ax.spines["bottom"].set_visible(False)
        ax.spines["left"].set_visible(False)
        ax.legend(loc="upper left", bbox_to_anchor=(0, 0), ncols=2, frameon=False)  # below the bars and notes
        _title(ax, title)

    return _draw(7.5, 0.9 + 0.32 * max(len(steps), 1), paint)


def grouped_bars(title: str, labels: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str = "",
                 percent: bool = False) -> str:
    """Vertical bars, one group per label and one colour per series, each bar with its value."""

    def paint(fig: Figure) -> None:
        ax = fig.add_subplot()
        x = np.arange(len(labels))
        width = 0.8 / max(len(series), 1)
        for i, (name, values) in enumerate(series.items()):
            bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name,
                          color=COLORS[i % len(COLORS)])
            ax.bar_label(bars, labels=[f"{v:.1%}" if percent else human_count(v) for v in values], fontsize=7)
        ax.set_xticks(x, labels)
        if percent:
            ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        ax.set_ylabel(ylabel)
        ax.legend(frameon=False)
        _title(ax, title)

    return _draw(6.4, 3.2, paint)


def line_chart(title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]], xlabel: str = "step",
               ylabel: str = "", log_y: bool = False, hlines: Sequence[tuple[str, float]] = ()) -> str:
    """Lines on shared axes: one (name, [(x, y), ...]) per series, a legend when there are several,
    and labelled horizontal reference lines (name, y). Non-finite points are left out; a series
    of a few points shows each as a dot."""

    def paint(fig: Figure) -> None:
        ax = fig.add_subplot()
        xs = []
        for i, (name, points) in enumerate(series):
            pts = [(x, y) for x, y in points if y is not None and math.isfinite(x) and math.isfinite(y)
                   and (y > 0 or not log_y)]
            if not pts:
                continue
            px, py = zip(*pts)
            xs += px
            ax.plot(px, py, label=name, color=COLORS[i % len(COLORS)], marker="o" if len(pts) < 12 else None,
                    markersize=3)
        for name, y in hlines:
            if y is not None and math.isfinite(y):
                ax.axhline(y, color="#555", linestyle="--", linewidth=0.8)
                ax.annotate(name, (1, y), xycoords=("axes fraction", "data"), ha="right", va="bottom", color="#555")
        if xs and all(float(x).is_integer() for x in xs):
            ax.locator_params(axis="x", integer=True)  # steps: no tick at step 1.25
        if log_y:
            ax.set_yscale("log")
            # Plain numbers (the default writes mathtext, shown raw with math parsing off); over
            # less than a decade few major ticks fall inside, so minor ones at 2, 3, 5 are labelled.
            low, high = ax.get_ylim()
            ax.yaxis.set_major_formatter(lambda v, _: _tick(v))
            ax.yaxis.set_minor_formatter(lambda v, _: _tick(v) if high / low < 10 and f"{v:e}"[0] in "235" else "")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(frameon=False)
        _title(ax, title)

    return _draw(6.4, 3.0, paint)


def heatmaps(title: str, maps: Mapping[str, np.ndarray], labels: Sequence[str]) -> str:
    """Square heat-maps in [0, 1] with the same labels on both axes, one per named map, four to a
    row: for attention, queries down and keys across, darker is more."""
    n = len(labels)
    cols = min(len(maps), 4)
    rows = -(-len(maps) // cols)
    side = max(2.4, 0.16 * n + 1.2)
    shown = [label if len(label) <= 12 else label[:11] + "…" for label in labels]

    def paint(fig: Figure) -> None:
        axes = fig.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i >= len(maps):
                ax.set_axis_off()
                continue
            name, matrix = list(maps.items())[i]
            ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.set_xticks(range(n), shown if i // cols == rows - 1 or n <= 24 else [], rotation=90, fontsize=6)
            ax.set_yticks(range(n), shown if i % cols == 0 else [], fontsize=6)
        fig.suptitle(title, x=0.01, ha="left", fontweight="bold")

    return _draw(side * cols, side * rows + 0.5, paint)
