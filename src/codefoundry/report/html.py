"""`report.html`: one self-contained page built from a validated results dict and its plot PNGs.

Self-contained means the file opens offline and from any directory: CSS is inline, every plot is a PNG
data URI, and a Content-Security-Policy meta tag tells the browser to fetch nothing from anywhere
(only `data:` images, inline style and the one inline script are allowed), so a stray URL in a result
string cannot make the page call out. Every string from the results is passed through `html.escape`;
nothing from the results is ever written into the script or the style.

The inline script counts the plot images that decoded (`complete && naturalWidth > 0`) and records it
on `<html data-images-loaded=N data-images-total=M>` once the page has loaded, so a headless browser's
DOM dump shows whether every plot rendered.
"""

from __future__ import annotations

import base64
import json
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

__all__ = ["render_html"]

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 60em;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; white-space: pre-wrap; }
table { border-collapse: collapse; margin: 0.8em 0; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
details { margin: 0.8em 0; }
summary { cursor: pointer; font-weight: 600; }
"""

# Static text only: the count of decoded images, read back by tests through a DOM dump.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.documentElement.setAttribute("data-images-loaded", String(ok));
  document.documentElement.setAttribute("data-images-total", String(imgs.length));
});
"""


def _table(caption: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    # Right-align a column holding any number (missing values included), so digits line up.
    numeric = [any(r[j] is not None and not isinstance(r[j], str) for r in rows) for j in range(len(columns))]
    tds = ['<td class="num">' if n else "<td>" for n in numeric]
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "\n".join(
        "<tr>" + "".join(f"{td}{escape(fmt_value(v))}</td>" for td, v in zip(tds, row, strict=True)) + "</tr>"
        for row in rows
    )
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def _headline(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return "<p>No headline metrics were recorded.</p>"
    return _table("", HEADLINE_COLUMNS, headline_rows(items))


def _stages(stages: Sequence[Mapping[str, Any]]) -> str:
    if not stages:
        return "<p>No stages were recorded.</p>"
    return _table("", STAGE_COLUMNS, stage_rows(stages))


def _figures(curves: Sequence[Mapping[str, Any]], pngs: Sequence[bytes]) -> str:
    if not curves:
        return "<p>No curves were recorded.</p>"
    out = []
    for curve, png in zip(curves, pngs, strict=True):
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        title = escape(curve["title"])
        out.append(f'<figure><img src="{uri}" alt="{title}"><figcaption>{title}</figcaption></figure>')
    return "\n".join(out)


def _json_block(summary: str, obj: Mapping[str, Any]) -> str:
    # default=str: an in-process run may hand over a Path or an enum; show it rather than fail the report.
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str)
    return f"<details><summary>{escape(summary)}</summary>\n<pre>{escape(text)}</pre>\n</details>"


def render_html(results: Mapping[str, Any], pngs: Sequence[bytes]) -> str:
    """The whole page for validated `results`; `pngs[i]` is the image of `results["curves"][i]`."""
    title = escape(results["title"])
    tables = [_table(t["title"], t["columns"], t["rows"]) for t in results["tables"]]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head>\n<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{title}</title>",
        f"<style>{_STYLE}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head>\n<body>",
        f"<h1>{title}</h1>",
        f"<p>Command: <code>{escape(results['command'])}</code><br>Seed: {fmt_number(results['seed'])}</p>",
        "<h2>Headline</h2>",
        _headline(results["headline"]),
        "<h2>Stages</h2>",
        _stages(results["stages"]),
        "<h2>Curves</h2>",
        _figures(results["curves"], pngs),
        "<h2>Tables</h2>",
        "\n".join(tables) if tables else "<p>No tables were recorded.</p>",
        "<h2>Configuration and versions</h2>",
        _json_block("configuration", results["config"]),
        _json_block("versions", results["versions"]),
        "</body>\n</html>\n",
    ]
    return "\n".join(parts)
