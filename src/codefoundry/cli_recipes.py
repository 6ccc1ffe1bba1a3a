"""The `quickstart` subcommand: `codefoundry quickstart [--out DIR] [--minutes N] [--seed S]`, and
`codefoundry recipe NAME [--config FILE] [--variant laptop|gpu] [--out DIR] [--set KEY=VALUE]`.

`quickstart` runs `codefoundry.recipes.quickstart` on its embedded defaults; a recipe runs its module on
the values of its YAML config. torch is imported only when one of them is the command."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


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
    register_recipe(stages)


# ---------------------------------------------------------------------------------------- recipe NAME
# name -> (module, config class, run function); imported only when that recipe is the command.
RECIPES = {
    "scaling-law": ("codefoundry.recipes.scaling_law", "ScalingLawConfig", "run_scaling_law"),
    "sft-sensitivity": ("codefoundry.recipes.sft_sensitivity", "SFTSensitivityConfig", "run_sft_sensitivity"),
    "rl-estimators": ("codefoundry.recipes.rl_estimators", "RLEstimatorsConfig", "run_rl_estimators"),
    "rl-rollouts": ("codefoundry.recipes.rl_estimators", "RLRolloutsConfig", "run_rl_estimators"),
    "rl-length": ("codefoundry.recipes.rl_estimators", "RLLengthConfig", "run_rl_estimators"),
    "fim-rate": ("codefoundry.recipes.fim_rate", "FIMRateConfig", "run_fim_rate"),
}


def _recipe(args: argparse.Namespace) -> int:
    import importlib

    from codefoundry.cli import UsageError
    from codefoundry.recipes.recipe import find_config, load_config, parse_overrides

    module_name, config_name, run_name = RECIPES[args.name]
    module = importlib.import_module(module_name)
    path = args.config or find_config(args.name)
    try:
        fixed = {"out": args.out} if args.out else {}
        config = load_config(getattr(module, config_name), path, args.variant,
                             overrides=parse_overrides(args.set), **fixed)  # fmt: skip
        results = getattr(module, run_name)(config, command=shlex.join(["codefoundry", *sys.argv[1:]]))
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    for output in results.get("outputs", []):
        if output.endswith(".md"):
            print(Path(output).read_text(encoding="utf-8"))
    print("outputs: " + ", ".join(results.get("outputs", [])))
    return 0


def register_recipe(stages: argparse._SubParsersAction) -> None:
    """Add `recipe NAME [--config FILE] [--variant laptop|gpu] [--out DIR] [--set KEY=VALUE ...]`."""
    p = stages.add_parser("recipe", help="rerun an experiment of the survey's practical guide",
                          description="Configs live in configs/recipes/NAME.yaml (laptop and gpu sections).")  # fmt: skip
    p.add_argument("name", choices=sorted(RECIPES), help="the recipe")
    p.add_argument("--config", help="YAML config (default: configs/recipes/NAME.yaml)")
    p.add_argument("--variant", choices=("laptop", "gpu"), default="laptop", help="config section")
    p.add_argument("--out", help="run directory (a rerun resumes it; default from the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set steps=8")  # fmt: skip
    p.set_defaults(func=_recipe)
