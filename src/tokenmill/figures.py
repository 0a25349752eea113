"""Small self-contained SVG charts, so that every stage leaves a figure a person can open."""

from __future__ import annotations

import math
from html import escape


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def bar_chart_svg(title: str, rows: list[tuple[str, float, str]], width: int = 640) -> str:
    """Horizontal bars: one (label, value, value_text) per row, scaled to the largest value."""
    bar_h, gap, left, top = 22, 8, 140, 40
    height = top + len(rows) * (bar_h + gap) + 20
    biggest = max((v for _, v, _ in rows), default=0) or 1
    room = width - left - 110
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="system-ui, sans-serif" font-size="13">',
        f'<rect width="100%" height="100%" fill="white"/>',
        f'<text x="12" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (label, value, text) in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = max(1.0, room * value / biggest)
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#4878a8"/>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 15}">{escape(text)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


PALETTE = ("#4878a8", "#d0743c", "#6a9f58", "#b05a7a", "#8c6bb1", "#7f7f7f")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _tick_text(v: float) -> str:
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.0e}"
    return f"{v:,.6g}"


def line_chart_svg(
    title: str,
    series: list[tuple[str, list[tuple[float, float]]]],
    x_label: str = "",
    y_label: str = "",
    hlines: list[tuple[str, float]] = (),
    width: int = 640,
    height: int = 360,
) -> str:
    """Lines on shared axes: one (name, [(x, y), ...]) per series, a legend, and optional
    labelled horizontal reference lines (name, y). Non-finite points are left out."""
    left, right, top, bottom = 64, 16, 40, 48
    series = [(name, [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]) for name, pts in series]
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts] + [y for _, y in hlines if math.isfinite(y)]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    w, h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="system-ui, sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="12" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
    ]
    for t in _ticks(x0, x1):
        parts.append(f'<line x1="{px(t):.1f}" y1="{top + h}" x2="{px(t):.1f}" y2="{top + h + 4}" stroke="#999"/>')
        parts.append(f'<text x="{px(t):.1f}" y="{top + h + 17}" text-anchor="middle">{_tick_text(t)}</text>')
    for t in _ticks(y0, y1):
        parts.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + w}" y2="{py(t):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_tick_text(t)}</text>')
    if x_label:
        parts.append(f'<text x="{left + w / 2:.1f}" y="{height - 10}" text-anchor="middle">{escape(x_label)}</text>')
    if y_label:
        mid = top + h / 2
        parts.append(f'<text x="14" y="{mid:.1f}" text-anchor="middle" transform="rotate(-90 14 {mid:.1f})">{escape(y_label)}</text>')
    for name, y in hlines:
        if math.isfinite(y):
            parts.append(
                f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + w}" y2="{py(y):.1f}" stroke="#555" stroke-dasharray="5 4"/>'
            )
            parts.append(f'<text x="{left + w - 4}" y="{py(y) - 4:.1f}" text-anchor="end" fill="#555">{escape(name)}</text>')
    for i, (name, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        if len(pts) == 1:
            parts.append(f'<circle cx="{px(pts[0][0]):.1f}" cy="{py(pts[0][1]):.1f}" r="3" fill="{color}"/>')
        elif pts:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        ly = top + 14 + 16 * i
        parts.append(f'<line x1="{left + 10}" y1="{ly - 4}" x2="{left + 28}" y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{left + 34}" y="{ly}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
