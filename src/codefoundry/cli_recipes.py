"""The `quickstart` subcommand: `codefoundry quickstart [--out DIR] [--minutes N] [--seed S]`.

It runs `codefoundry.recipes.quickstart` on its embedded defaults; torch is imported only when
`quickstart` is the command."""

from __future__ import annotations

import argparse
import sys


def _quickstart(args: argparse.Namespace) -> int:
    from codefoundry.cli import UsageError
    from codefoundry.recipes.quickstart import QuickstartConfig, quickstart
    from codefoundry.recipes.results import summary_table

    try:
        config = QuickstartConfig(out=args.out, minutes=args.minutes, seed=args.seed,
                                  progress=not args.no_progress)  # fmt: skip
        results = quickstart(config, command=" ".join(["codefoundry", *sys.argv[1:]]))
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    print(summary_table(results))
    for h in results["headline"]:
        ci = f" [{h['ci'][0]:.3f}, {h['ci'][1]:.3f}]" if h["ci"] else ""
        print(f"{h['metric']}: {h['value']:.3f}{ci} ({h['note']})")
    print(f"results: {args.out}/results.json")
    return 0


def register(stages: argparse._SubParsersAction, argv: list[str]) -> None:
    """Add `quickstart` (data -> pretrain -> SFT -> RL -> eval -> safety -> report)."""
    del argv  # the options are few and need no heavy import
    p = stages.add_parser("quickstart", help="the whole chain end to end on a laptop (about 15 minutes)")
    p.add_argument("--out", default="runs/quickstart", help="run directory (a rerun resumes it)")
    p.add_argument("--minutes", type=float, default=15.0, help="budget the step counts are planned for")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_quickstart)
