"""The run report: `results.json` (written by the quickstart or a recipe) rendered as `report.html` and
`report.md`.

    from codefoundry.report import render_report
    html_path, md_path = render_report(results, "runs/quickstart")

or, from a saved results file: `python -m codefoundry.report OUT/results.json --out OUT`.

The report adds no facts of its own: every number shown is a value from `results` (or, for the stage
total, their sum), formatted to 4 significant digits. The same results give byte-identical files on the
same matplotlib install. Needs matplotlib (imported only when a report is rendered).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from codefoundry.report.schema import ResultsError, validate_results

__all__ = ["ResultsError", "render_report", "validate_results"]

PLOTS_DIR = "plots"


def _write_atomic(path: Path, data: bytes) -> None:
    # Write-then-rename: a crash mid-write leaves the previous report, never half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def render_report(results: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Validate `results` and write `out_dir/report.html`, `out_dir/report.md` and one PNG per curve
    in `out_dir/plots/`; returns (html path, md path).

    Raises `ResultsError` (one line naming the bad field, e.g. `results.tables[0].rows[3]: expected 4
    cells (one per column), got 3`) before writing anything. PNGs of curves no longer in `results`
    are not deleted from `plots/`."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("the run report draws its plots with matplotlib: pip install matplotlib") from None
    from codefoundry.report.html import render_html
    from codefoundry.report.markdown import render_markdown
    from codefoundry.report.plots import plot_filename, render_curve_png

    validate_results(results)
    out = Path(out_dir)
    (out / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    pngs = [render_curve_png(curve) for curve in results["curves"]]
    rel_paths = [f"{PLOTS_DIR}/{plot_filename(i, c['title'])}" for i, c in enumerate(results["curves"])]
    for rel, png in zip(rel_paths, pngs, strict=True):
        _write_atomic(out / rel, png)
    html_path, md_path = out / "report.html", out / "report.md"
    _write_atomic(html_path, render_html(results, pngs).encode("utf-8"))
    _write_atomic(md_path, render_markdown(results, rel_paths).encode("utf-8"))
    return html_path, md_path
