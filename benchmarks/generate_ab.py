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
    """The other copy's generate.py, with its own decode_weights.py (the rest of the package is shared)."""
    modules = {}
    for name in ("decode_weights", "generate"):
        spec = importlib.util.spec_from_file_location(
            f"codefoundry.models._ab_{name}", models_dir / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        modules[name] = sys.modules[spec.name] = module  # dataclasses look their module up there
        # generate.py imports `codefoundry.models.decode_weights`: point that name at the other copy's
        # module while generate.py loads.
        saved = sys.modules.get("codefoundry.models.decode_weights")
        if name == "generate":
            sys.modules["codefoundry.models.decode_weights"] = modules["decode_weights"]
        try:
            spec.loader.exec_module(module)
        finally:
            if name == "generate":
                if saved is None:
                    sys.modules.pop("codefoundry.models.decode_weights", None)
                else:
                    sys.modules["codefoundry.models.decode_weights"] = saved
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
