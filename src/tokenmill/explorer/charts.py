"""The explorer's charts: SVG drawn by matplotlib on the server, shown by the page as images.

Text is drawn as glyph outlines (svg.fonttype "path") and never parsed as mathtext, so a label
taken from a document (a token, a file name with a "$") is shown as it is and cannot become
markup. Figures are built without pyplot, and one at a time: matplotlib is not thread-safe,
and the server answers requests from a pool of threads.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence

import numpy as np
from matplotlib import rc_context
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


def _svg(fig: Figure) -> str:
    out = io.StringIO()
    fig.savefig(out, format="svg", bbox_inches="tight")
    return out.getvalue()


def _draw(width: float, height: float, paint) -> str:
    with _lock, rc_context(STYLE):
        fig = Figure(figsize=(width, height))
        paint(fig)
        return _svg(fig)


def human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.4g}" if isinstance(n, float) and not float(n).is_integer() else f"{int(n)}"


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], texts: Sequence[str] | None = None,
              xlabel: str = "") -> str:
    """Horizontal bars, the first label on top."""
    texts = texts or [human(v) for v in values]

    def paint(fig: Figure) -> None:
        ax = fig.add_subplot()
        y = np.arange(len(labels))
        ax.barh(y, values, color=COLORS[0])
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        biggest = max(values, default=0) or 1
        for yi, v, t in zip(y, values, texts):
            ax.text(v + biggest * 0.01, yi, t, va="center")
        ax.set_xlim(0, biggest * 1.25)
        ax.set_title(title, loc="left", fontweight="bold")
        ax.set_xlabel(xlabel)

    return _draw(6.4, 0.6 + 0.32 * max(len(labels), 1), paint)


def funnel_chart(title: str, steps: Sequence[tuple[str, float, float]], unit: str = "documents") -> str:
    """A funnel: one (step, left after it, removed by it) per row, centred bars narrowing downwards,
    the part each step removed drawn beside what is left."""

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
        for yi, k, r in zip(y, kept, removed):
            note = f"{human(k)} left" + (f", {human(r)} removed" if r else "")
            ax.text(top / 2 + top * 0.05, yi, note, va="center")
        ax.set_xlim(-top / 2 - top * 0.02, top * 1.25)
        ax.set_xticks([])
        ax.spines["bottom"].set_visible(False)
        ax.spines["left"].set_visible(False)
        ax.legend(loc="lower right", frameon=False)
        ax.set_title(title, loc="left", fontweight="bold")

    return _draw(7.5, 0.8 + 0.34 * max(len(steps), 1), paint)


def grouped_bars(title: str, labels: Sequence[str], series: dict[str, Sequence[float]], percent: bool = False) -> str:
    """Vertical bars, one group per label and one colour per series."""

    def paint(fig: Figure) -> None:
        ax = fig.add_subplot()
        x = np.arange(len(labels))
        width = 0.8 / max(len(series), 1)
        for i, (name, values) in enumerate(series.items()):
            bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name, color=COLORS[i % len(COLORS)])
            ax.bar_label(bars, labels=[f"{v:.1%}" if percent else human(v) for v in values], fontsize=7)
        ax.set_xticks(x, labels)
        if percent:
            ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        ax.legend(frameon=False)
        ax.set_title(title, loc="left", fontweight="bold")

    return _draw(6.4, 3.2, paint)


def line_chart(title: str, series: Sequence[tuple[str, Sequence[float], Sequence[float]]], xlabel: str = "step",
               ylabel: str = "", log_y: bool = False, hlines: Sequence[tuple[str, float]] = ()) -> str:
    """Lines on shared axes: one (name, xs, ys) per series; non-finite points are left out."""

    def paint(fig: Figure) -> None:
        ax = fig.add_subplot()
        for i, (name, xs, ys) in enumerate(series):
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
            if not pts:
                continue
            px, py = zip(*pts)
            ax.plot(px, py, label=name, color=COLORS[i % len(COLORS)], marker="o" if len(pts) < 12 else None,
                    markersize=3)
        for name, y in hlines:
            ax.axhline(y, color="#555", linestyle="--", linewidth=0.8)
            ax.annotate(name, (1, y), xycoords=("axes fraction", "data"), ha="right", va="bottom", color="#555")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(frameon=False)
        ax.set_title(title, loc="left", fontweight="bold")

    return _draw(6.4, 3.0, paint)


def attention_heads(title: str, probs: np.ndarray, labels: Sequence[str]) -> str:
    """One layer's attention: a heat-map per head, queries down, keys across; darker is more."""
    heads, n = probs.shape[0], probs.shape[-1]
    cols = min(heads, 4)
    rows = -(-heads // cols)
    side = max(2.4, 0.16 * n + 1.2)
    shown = [label if len(label) <= 12 else label[:11] + "…" for label in labels]

    def paint(fig: Figure) -> None:
        axes = fig.subplots(rows, cols, squeeze=False)
        for h in range(rows * cols):
            ax = axes[h // cols][h % cols]
            if h >= heads:
                ax.set_axis_off()
                continue
            ax.imshow(probs[h], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"head {h}", fontsize=9)
            ticks = range(n)
            ax.set_xticks(ticks, shown if h // cols == rows - 1 or n <= 24 else [], rotation=90, fontsize=6)
            ax.set_yticks(ticks, shown if h % cols == 0 else [], fontsize=6)
        fig.suptitle(title, x=0.01, ha="left", fontweight="bold")

    return _draw(side * cols, side * rows + 0.5, paint)
