"""`report.md`: the same content as the HTML page, as GitHub-flavoured Markdown.

Plots are not embedded: they are PNG files in `plots/` beside the report, linked by relative path, so
the Markdown stays readable as text and renders on a code host. Strings from the results are escaped
twice over: `html.escape` (a Markdown renderer passes raw HTML through) and a backslash before the
Markdown punctuation that would otherwise turn a metric name into emphasis, a link or a new table
cell. Commands, configuration and versions go in fenced code blocks, whose content is literal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from codefoundry.report.schema import (
    HEADLINE_COLUMNS,
    STAGE_COLUMNS,
    fmt_number,
    fmt_value,
    headline_rows,
    stage_rows,
)

__all__ = ["md_escape", "render_markdown"]

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#])")


def md_escape(text: str) -> str:
    """`text` as inert Markdown inline text on one line (newlines would end a table row)."""
    one_line = " ".join(text.splitlines())
    return _MD_SPECIAL.sub(r"\\\1", escape(one_line, quote=False))


def _fence(text: str, info: str = "") -> str:
    # A fence longer than any backtick run inside, so the content cannot close it early.
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(md_escape(c) for c in columns) + " |"]
    # Right-align a column holding any number, as the HTML table does, so digits line up.
    numeric = [any(r[j] is not None and not isinstance(r[j], str) for r in rows) for j in range(len(columns))]
    align = ["---:" if n else "---" for n in numeric]
    lines.append("| " + " | ".join(align) + " |")
    for row in rows:
        lines.append("| " + " | ".join(md_escape(fmt_value(v)) for v in row) + " |")
    return "\n".join(lines)


def _headline(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return "No headline metrics were recorded."
    return _table(HEADLINE_COLUMNS, headline_rows(items))


def _stages(stages: Sequence[Mapping[str, Any]]) -> str:
    if not stages:
        return "No stages were recorded."
    return _table(STAGE_COLUMNS, stage_rows(stages))


def _figures(curves: Sequence[Mapping[str, Any]], plot_paths: Sequence[str]) -> str:
    if not curves:
        return "No curves were recorded."
    # Paths are ASCII slugs made by plots.plot_filename, so they need no escaping in the link target.
    return "\n\n".join(
        f"![{md_escape(c['title'])}]({path})" for c, path in zip(curves, plot_paths, strict=True)
    )


def _tables(tables: Sequence[Mapping[str, Any]]) -> str:
    if not tables:
        return "No tables were recorded."
    blocks = []
    for t in tables:
        head = f"**{md_escape(t['title'])}**\n\n" if t["title"] else ""
        blocks.append(head + _table(t["columns"], t["rows"]))
    return "\n\n".join(blocks)


def render_markdown(results: Mapping[str, Any], plot_paths: Sequence[str]) -> str:
    """The Markdown report for validated `results`; `plot_paths[i]` is the relative path of curve i's
    PNG (e.g. `plots/01-loss.png`)."""
    config = json.dumps(results["config"], indent=2, ensure_ascii=False, default=str)
    versions = json.dumps(results["versions"], indent=2, ensure_ascii=False, default=str)
    sections = [
        f"# {md_escape(results['title'])}",
        "Command:\n\n" + _fence(results["command"], "sh"),
        f"Seed: {fmt_number(results['seed'])}",
        "## Headline\n\n" + _headline(results["headline"]),
        "## Stages\n\n" + _stages(results["stages"]),
        "## Curves\n\n" + _figures(results["curves"], plot_paths),
        "## Tables\n\n" + _tables(results["tables"]),
        "## Configuration and versions",
        "Configuration:\n\n" + _fence(config, "json"),
        "Versions:\n\n" + _fence(versions, "json"),
    ]
    return "\n\n".join(sections) + "\n"
