"""A/B of the decoding code: the installed `codefoundry.models.generate` against the one in another copy of
`src/codefoundry/models` (another commit's), on the same model and prompts, alternating round by round in
one process (the order swapped every round); greedy tokens/s of each (medians, the median of the per-round
ratios, and the ratio of the best rounds) and whether both produced the same tokens. How the decode-step
changes in `benchmarks/README.md` were measured.

    git worktree add /tmp/old HEAD~1        # or any copy of the package at the other commit
    python benchmarks/generate_ab.py --against /tmp/old/src/codefoundry/models --rounds 7
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from codefoundry.models import generate as installed
from codefoundry.models.config import config_for_size
from codefoundry.models.transformer import Transformer


def load_other(models_dir: Path) -> types.ModuleType:
    """The other copy's generate.py, with its own decode_weights.py and step.py where it has one (the rest
    of the package is shared)."""
    modules: dict[str, types.ModuleType] = {}
    for name in ("decode_weights", "step", "generate"):
        path = models_dir / f"{name}.py"
        if not path.exists():  # step.py is newer than some commits worth comparing against
            continue
        spec = importlib.util.spec_from_file_location(f"codefoundry.models._ab_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        # Its imports of `codefoundry.models.decode_weights` (and `.step`) must find the other copy's
        # modules: point those names at them while it loads.
        saved = {dep: sys.modules.get(f"codefoundry.models.{dep}") for dep in modules}
        sys.modules.update({f"codefoundry.models.{dep}": mod for dep, mod in modules.items()})
        try:
            spec.loader.exec_module(module)
        finally:
            for dep, old in saved.items():
                if old is None:
                    sys.modules.pop(f"codefoundry.models.{dep}", None)
                else:
                    sys.modules[f"codefoundry.models.{dep}"] = old
        modules[name] = module
    return modules["generate"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", required=True, help="another copy of src/codefoundry/models")
    ap.add_argument("--size", default="10m")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    other = load_other(Path(args.against))
    model = Transformer(config_for_size(args.size, args.vocab)).eval()
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = torch.randint(0, args.vocab, (batch, args.prompt)).tolist()
        rates: dict[str, list[float]] = {"other": [], "installed": []}
        outputs = {}
        for module in (other, installed):  # warm-up: weight layouts, allocator
            module.generate(model, prompts, max_new_tokens=8)
        sides = [("other", other), ("installed", installed)]
        for r in range(args.rounds):
            for name, module in sides[:: 1 if r % 2 == 0 else -1]:  # the order swapped every round
                t = time.perf_counter()
                outputs[name] = module.generate(model, prompts, max_new_tokens=args.new)
                rates[name].append(batch * args.new / (time.perf_counter() - t))
        a, b = statistics.median(rates["other"]), statistics.median(rates["installed"])
        per_round = [round(y / x, 3) for x, y in zip(rates["other"], rates["installed"], strict=True)]
        best = max(rates["installed"]) / max(rates["other"])
        print(
            f"batch {batch}: other {a:.0f} tok/s, installed {b:.0f} tok/s, ratio {b / a:.3f}, median per-round "
            f"ratio {statistics.median(per_round):.3f}, best-of ratio {best:.3f} (per round {per_round}); "
            f"same tokens: {outputs['other'] == outputs['installed']}"
        )


if __name__ == "__main__":
    main()
