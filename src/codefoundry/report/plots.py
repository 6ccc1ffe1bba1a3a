"""Curves from `results["curves"]` drawn as PNG bytes with matplotlib's Agg renderer.

Deterministic by construction: a fixed figure size and dpi, matplotlib's default style (a user's
matplotlibrc cannot change the pixels), and no "Software" PNG chunk, so the same curve gives the same
bytes on the same matplotlib/freetype install. Different matplotlib versions may draw differently; the
report records the versions of the run, not of the renderer.

Uses `matplotlib.figure.Figure` directly rather than pyplot: no global figure registry and no
process-wide backend switch, so rendering a report does not disturb a caller's own plotting.

Limits: linear axes only; points with a missing or non-finite x or y are skipped (a NaN loss would
otherwise break the line silently); text is drawn literally (no `$...$` mathtext); glyphs missing
from the bundled DejaVu fonts (e.g. CJK) render as boxes rather than failing.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FIG_DPI", "FIG_SIZE", "plot_filename", "render_curve_png"]

FIG_SIZE = (7.5, 4.0)  # inches; at FIG_DPI gives 750 x 400 px, readable inline and in a Markdown viewer
FIG_DPI = 100
# Markers only where points are sparse enough to see one by one; dense curves read better as lines.
_MARKER_MAX_POINTS = 40


def _finite_points(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[list[float], list[float]]:
    keep_x, keep_y = [], []
    for x, y in zip(xs, ys, strict=True):
        if x is None or y is None:
            continue
        fx, fy = float(x), float(y)
        if math.isfinite(fx) and math.isfinite(fy):
            keep_x.append(fx)
            keep_y.append(fy)
    return keep_x, keep_y


def render_curve_png(curve: Mapping[str, Any]) -> bytes:
    """Draw one validated curve (title, axis labels, named series) into PNG bytes.

    A curve with no plottable point still gives an image (empty axes saying "no data"), so the report
    keeps one picture per curve and a reader sees that the run recorded nothing rather than a gap."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        fig = Figure(figsize=FIG_SIZE, dpi=FIG_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        drawn = 0
        for i, series in enumerate(curve["series"]):
            xs, ys = _finite_points(series["x"], series["y"])
            if not xs:
                continue
            marker = "o" if len(xs) <= _MARKER_MAX_POINTS else None
            ax.plot(xs, ys, color=f"C{i % 10}", marker=marker, markersize=3, label=series["name"])
            drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.4")
        # parse_math=False: a title like "cost in $ per $1k" is text, not a mathtext formula to parse.
        ax.set_title(curve["title"], parse_math=False)
        ax.set_xlabel(curve["x_label"], parse_math=False)
        ax.set_ylabel(curve["y_label"], parse_math=False)
        ax.grid(alpha=0.3)
        if drawn:
            for text in ax.legend(loc="best", fontsize="small").get_texts():
                text.set_parse_math(False)
        buf = io.BytesIO()
        with warnings.catch_warnings():
            # A glyph outside DejaVu's coverage draws as a box; a warning per glyph helps nobody here.
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
            fig.savefig(buf, format="png", dpi=FIG_DPI, metadata={"Software": None})
    return buf.getvalue()


def plot_filename(index: int, title: str) -> str:
    """The file name of curve `index` in `plots/`: a zero-padded index (keeps order and uniqueness)
    and an ASCII slug of the title (so a person can tell the files apart)."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40].strip("-")
    return f"{index + 1:02d}-{slug or 'curve'}.png"
