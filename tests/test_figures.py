"""The charts every stage and the explorer draw (tokenmill.figures)."""

import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np

from tokenmill.figures import (
    COLORS,
    bar_chart,
    funnel_chart,
    grouped_bars,
    heatmaps,
    human_bytes,
    line_chart,
)

SVG = "{http://www.w3.org/2000/svg}"


def drawn_in_axes(svg: str) -> list[ET.Element]:
    """The paths clipped to the axes: data lines, grid lines, reference lines."""
    return [p for p in ET.fromstring(svg).iter(f"{SVG}path") if p.get("clip-path")]


def test_line_chart_draws_each_series_and_reference_line():
    svg = line_chart("Loss", [("train", [(1, 5.0), (2, float("nan")), (3, 4.0)]), ("validation", [(2, 4.5)])],
                     "step", "cross-entropy (nats per token)", hlines=[("unigram entropy", 6.0)])
    assert svg.startswith("<svg")  # a file that opens at its root element
    paths = drawn_in_axes(svg)
    (train,) = [p for p in paths if f"stroke: {COLORS[0]}" in p.get("style")]
    (validation,) = [p for p in paths if f"stroke: {COLORS[1]}" in p.get("style")]
    (reference,) = [p for p in paths if "stroke-dasharray" in p.get("style")]
    assert train.get("d").count("L") == 1  # two points: the NaN is left out
    assert validation.get("d").count("L") == 0  # one point, shown as a dot:
    assert any(f"fill: {COLORS[1]}" in (u.get("style") or "") for u in ET.fromstring(svg).iter(f"{SVG}use"))

    def first_y(p: ET.Element) -> float:
        return float(p.get("d").split()[2])

    assert first_y(reference) < first_y(train)  # 6 is drawn above 5


def glyph(char: str) -> str:
    """The id of a character's outline in a chart: text is drawn as glyphs of matplotlib's font."""
    from matplotlib.font_manager import findfont
    from matplotlib.ft2font import FT2Font

    return f"#DejaVuSans-{FT2Font(findfont('DejaVu Sans')).get_char_index(ord(char)):x}"


def test_log_scale_ticks_are_plain_numbers():
    # matplotlib's default log labels are mathtext ("$\mathdefault{10^{0}}$"), which the charts do
    # not parse (a label from a document must stay as written): they would show as raw markup.
    svg = line_chart("gradient norm", [("norm", [(1, 2.8), (2, 3.4), (3, 1.1), (4, 0.9)])], log_y=True)
    glyphs = {u.get("{http://www.w3.org/1999/xlink}href") for u in ET.fromstring(svg).iter(f"{SVG}use")}
    assert glyph("$") not in glyphs and glyph("\\") not in glyphs
    assert glyph("2") in glyphs and glyph("3") in glyphs  # the ticks 2 and 3 of less than a decade


def test_labels_from_documents_are_drawn_not_parsed():
    label = '--><script>alert(1)</script> $x^2$ & "q"'
    for svg in (bar_chart(label, [(label, 3.0, label)], label),
                funnel_chart(label, [(label, 10, 0, label), ("next", 8, 2, "8 left")]),
                grouped_bars(label, [label], {label: [0.5]}, label, percent=True),
                heatmaps(label, {label: np.eye(2)}, [label, "b"])):
        root = ET.fromstring(svg)  # well-formed, and the label is glyphs (named in an escaped comment)
        assert not list(root.iter(f"{SVG}script")) and not list(root.iter(f"{SVG}text"))
        assert "<script" not in svg


def test_the_same_chart_gives_the_same_bytes():
    rows = [("code", 210_000.0, human_bytes(210_000)), ("web", 150_000.0, human_bytes(150_000))]
    assert bar_chart("Raw text per domain", rows, "bytes", human_bytes) == bar_chart("Raw text per domain", rows, "bytes",
                                                                                      human_bytes)


def test_commands_that_draw_nothing_do_not_import_matplotlib():
    code = "import sys, tokenmill.cli, tokenmill.run; assert 'matplotlib' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
