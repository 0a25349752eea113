"""Small self-contained SVG charts, so that every stage leaves a figure a person can open."""

from __future__ import annotations

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
