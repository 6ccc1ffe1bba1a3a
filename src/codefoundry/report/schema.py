"""The `results.json` contract between a run (the quickstart, a recipe) and the report, and the number
formatting both renderings share.

Schema (top-level keys beyond these are ignored, so a run may record more than the report shows):

    {"title": str, "command": str, "config": {...}, "seed": int, "versions": {...},
     "stages":   [{"name": str, "wall_s": number, "summary": {str: number | str | null}}],
     "curves":   [{"title": str, "x_label": str, "y_label": str,
                   "series": [{"name": str, "x": [number | null], "y": [number | null]}]}],
     "tables":   [{"title": str, "columns": [str], "rows": [[str | number | null]]}],
     "headline": [{"metric": str, "value": number | null, "ci": [lo, hi] | null, "note": str}]}

"number" means int or float, NaN and infinities included (a run may legitimately record a diverged
loss); booleans are rejected because `True` silently reading as 1 hides a writer's bug. Missing values
(None, NaN) are allowed wherever a number is and render as "—"; plots skip such points.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ResultsError", "fmt_number", "fmt_value", "headline_rows", "stage_rows", "validate_results"]

MISSING = "—"


class ResultsError(ValueError):
    """A results dict that does not follow the schema; the message is one line naming the bad field's
    path, e.g. `results.curves[2].series[0].x: expected a list of numbers`."""


def _is_number(v: Any) -> bool:
    # numbers.Real so numpy scalars from an in-process run pass too.
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _fail(path: str, what: str) -> ResultsError:
    return ResultsError(f"{path}: {what}")


def _require(obj: Mapping[str, Any], path: str, key: str) -> Any:
    if key not in obj:
        raise _fail(path, f"missing key {key!r}")
    return obj[key]


def _check_str(v: Any, path: str) -> None:
    if not isinstance(v, str):
        raise _fail(path, f"expected a string, got {type(v).__name__}")


def _check_dict(v: Any, path: str) -> None:
    if not isinstance(v, Mapping):
        raise _fail(path, f"expected an object, got {type(v).__name__}")


def _check_list(v: Any, path: str) -> None:
    if not isinstance(v, list | tuple):
        raise _fail(path, f"expected a list, got {type(v).__name__}")


def _check_number_or_null(v: Any, path: str) -> None:
    if v is not None and not _is_number(v):
        raise _fail(path, f"expected a number or null, got {type(v).__name__}")


def _check_cell(v: Any, path: str) -> None:
    if v is not None and not isinstance(v, str) and not _is_number(v):
        raise _fail(path, f"expected a string, number or null, got {type(v).__name__}")


def _check_numbers(v: Any, path: str) -> None:
    # One message for the whole list (the brief's example), with the first offending index for the fix.
    if not isinstance(v, list | tuple):
        raise _fail(path, f"expected a list of numbers, got {type(v).__name__}")
    for i, item in enumerate(v):
        if item is not None and not _is_number(item):
            raise _fail(path, f"expected a list of numbers (item {i} is {type(item).__name__})")


def _check_stage(stage: Any, path: str) -> None:
    _check_dict(stage, path)
    _check_str(_require(stage, path, "name"), f"{path}.name")
    _check_number_or_null(_require(stage, path, "wall_s"), f"{path}.wall_s")
    summary = _require(stage, path, "summary")
    _check_dict(summary, f"{path}.summary")
    for key, value in summary.items():
        _check_str(key, f"{path}.summary (a key)")
        _check_cell(value, f"{path}.summary.{key}")


def _check_curve(curve: Any, path: str) -> None:
    _check_dict(curve, path)
    for key in ("title", "x_label", "y_label"):
        _check_str(_require(curve, path, key), f"{path}.{key}")
    series = _require(curve, path, "series")
    _check_list(series, f"{path}.series")
    for j, s in enumerate(series):
        spath = f"{path}.series[{j}]"
        _check_dict(s, spath)
        _check_str(_require(s, spath, "name"), f"{spath}.name")
        xs, ys = _require(s, spath, "x"), _require(s, spath, "y")
        _check_numbers(xs, f"{spath}.x")
        _check_numbers(ys, f"{spath}.y")
        if len(xs) != len(ys):
            raise _fail(spath, f"x has {len(xs)} values but y has {len(ys)}")


def _check_table(table: Any, path: str) -> None:
    _check_dict(table, path)
    _check_str(_require(table, path, "title"), f"{path}.title")
    columns = _require(table, path, "columns")
    _check_list(columns, f"{path}.columns")
    for j, c in enumerate(columns):
        _check_str(c, f"{path}.columns[{j}]")
    rows = _require(table, path, "rows")
    _check_list(rows, f"{path}.rows")
    for r, row in enumerate(rows):
        rpath = f"{path}.rows[{r}]"
        _check_list(row, rpath)
        if len(row) != len(columns):
            raise _fail(rpath, f"expected {len(columns)} cells (one per column), got {len(row)}")
        for c, cell in enumerate(row):
            _check_cell(cell, f"{rpath}[{c}]")


def _check_headline(item: Any, path: str) -> None:
    _check_dict(item, path)
    _check_str(_require(item, path, "metric"), f"{path}.metric")
    _check_number_or_null(_require(item, path, "value"), f"{path}.value")
    ci = _require(item, path, "ci")
    if ci is not None:
        if not isinstance(ci, list | tuple) or len(ci) != 2:
            raise _fail(f"{path}.ci", "expected [lo, hi] or null")
        _check_number_or_null(ci[0], f"{path}.ci[0]")
        _check_number_or_null(ci[1], f"{path}.ci[1]")
    _check_str(_require(item, path, "note"), f"{path}.note")


def validate_results(results: Any) -> None:
    """Check `results` against the schema above; raise `ResultsError` naming the first bad field.

    Checks types and shapes only, not meaning: a CI whose lo exceeds hi, or a curve whose x is not
    sorted, passes (the report shows what the run recorded)."""
    _check_dict(results, "results")
    for key in ("title", "command"):
        _check_str(_require(results, "results", key), f"results.{key}")
    _check_dict(_require(results, "results", "config"), "results.config")
    _check_dict(_require(results, "results", "versions"), "results.versions")
    seed = _require(results, "results", "seed")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise _fail("results.seed", f"expected an integer, got {type(seed).__name__}")
    sections = {"stages": _check_stage, "curves": _check_curve, "tables": _check_table}
    sections["headline"] = _check_headline
    for key, check in sections.items():
        items = _require(results, "results", key)
        _check_list(items, f"results.{key}")
        for i, item in enumerate(items):
            check(item, f"results.{key}[{i}]")


def fmt_number(v: float | None) -> str:
    """One number as report text: ints exactly, floats to 4 significant digits (large ones as whole
    numbers rather than in exponent form, so timings read naturally), None and NaN as "—"."""
    if v is None:
        return MISSING
    if isinstance(v, numbers.Integral):
        return str(int(v))
    v = float(v)
    if math.isnan(v):
        return MISSING
    if math.isfinite(v) and 1e4 <= abs(v) < 1e15:
        return f"{v:.0f}"
    return f"{v:.4g}"


def fmt_value(v: str | float | None) -> str:
    """A table cell or summary value: strings as they are, numbers through `fmt_number`."""
    return v if isinstance(v, str) else fmt_number(v)


HEADLINE_COLUMNS = ["metric", "value", "confidence interval", "note"]
STAGE_COLUMNS = ["stage", "wall time (s)", "summary"]


def headline_rows(items: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Rows under HEADLINE_COLUMNS; the interval is pre-formatted text "[lo, hi]" (or None)."""
    rows = []
    for it in items:
        ci = it["ci"]
        ci_text = f"[{fmt_number(ci[0])}, {fmt_number(ci[1])}]" if ci is not None else None
        rows.append([it["metric"], it["value"], ci_text, it["note"]])
    return rows


def stage_rows(stages: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Rows under STAGE_COLUMNS, then a "total" row: the sum of the recorded wall times (missing and
    NaN ones left out), so the total too comes from the results."""
    rows: list[list[Any]] = []
    for st in stages:
        summary = "; ".join(f"{k} = {fmt_value(v)}" for k, v in st["summary"].items())
        rows.append([st["name"], st["wall_s"], summary])
    walls = [float(st["wall_s"]) for st in stages if st["wall_s"] is not None]
    rows.append(["total", sum(w for w in walls if not math.isnan(w)), ""])
    return rows
