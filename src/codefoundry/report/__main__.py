"""`python -m codefoundry.report RESULTS.json [--out DIR]`: re-render a run's report from its results file
(by default beside it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from codefoundry.report import ResultsError, render_report


def main(argv: list[str] | None = None) -> int:
    """Render `report.html` and `report.md` from a results JSON file; exit 2 with one line on bad input."""
    ap = argparse.ArgumentParser(prog="python -m codefoundry.report", description=main.__doc__)
    ap.add_argument("results", type=Path, help="the run's results.json")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: beside RESULTS)")
    args = ap.parse_args(argv)
    try:
        results = json.loads(args.results.read_text(encoding="utf-8"))
    except OSError as e:
        print(f"{args.results}: cannot read: {e.strerror or e}", file=sys.stderr)
        return 2
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        print(f"{args.results}: not valid JSON: {e}", file=sys.stderr)
        return 2
    try:
        html_path, md_path = render_report(results, args.out or args.results.parent)
    except ResultsError as e:
        print(f"{args.results}: {e}", file=sys.stderr)
        return 2
    print(html_path)
    print(md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
