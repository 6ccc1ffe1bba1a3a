"""Why sampled function bodies do not parse: the syntax-valid check of `codefoundry pretrain` (one body
sampled after the header of each held-out function, `codefoundry.models.infill_eval`) at several
temperatures, with the parser's error messages counted.

The held-out functions come from the files a pretraining run on `--data` holds out (the same split,
`holdout_score` < `--holdout`), as the run's own final evaluation draws them; `--limit` functions.

    python benchmarks/syntax_failures.py runs/dense/checkpoint --temperatures 0.8,0.2,0 --limit 100
"""

from __future__ import annotations

import argparse
import collections
import json
import sysconfig
from pathlib import Path

import torch

from _provenance import provenance
from codefoundry.models import checkpoint, infill_eval
from codefoundry.models import tokenizer as cft
from codefoundry.train.data import holdout_score


def heldout_texts(root: Path, holdout: float) -> list[str]:
    texts = []
    for f in cft.corpus_files(root):
        if holdout_score(f.relative_to(root).as_posix()) < holdout:
            try:
                texts.append(f.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                continue
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default=sysconfig.get_paths()["stdlib"], help="the pretraining data directory")
    ap.add_argument("--holdout", type=float, default=0.02, help="pretraining's held-out fraction")
    ap.add_argument("--temperatures", default="0.8,0.2,0")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument(
        "--top-p", type=float, default=1.0, help="sample from this nucleus (1 = the whole distribution)"
    )
    ap.add_argument("--min-p", type=float, default=0.0, help="generate()'s min-p (0 = off)")
    ap.add_argument(
        "--repetition-penalty", type=float, default=1.0,
        help="generate()'s penalty on tokens a body has already drawn (1 = off)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = checkpoint.load(args.checkpoint), cft.load(args.checkpoint)
    examples = infill_eval.heldout_functions(heldout_texts(Path(args.data), args.holdout), limit=args.limit,
                                             seed=args.seed)  # fmt: skip
    if not examples:
        raise SystemExit(f"{args.data}: no held-out functions")
    out = {"checkpoint": args.checkpoint, "functions": len(examples), "top_p": args.top_p,
           "min_p": args.min_p, "repetition_penalty": args.repetition_penalty, "max_new": args.max_new, "seed": args.seed,
           "data": args.data, "holdout": args.holdout, "limit": args.limit,
           "provenance": provenance(), "temperatures": {}}  # fmt: skip
    for temperature in (float(t) for t in args.temperatures.split(",")):
        records: list[dict] = []
        summary = infill_eval.syntax_valid_fraction(
            model, tok, examples, n=1, temperature=temperature, seed=args.seed, max_new_tokens=args.max_new, top_p=args.top_p,
            records=records, repetition_penalty=args.repetition_penalty, min_p=args.min_p,
        )  # fmt: skip
        errors = collections.Counter(
            ("ended: " if r["ended"] else "budget ran out: ") + r["error"].split(" (")[0]
            for r in records
            if r["error"] is not None
        )
        out["temperatures"][str(temperature)] = {**summary, "errors": dict(errors.most_common())}
        print(f"T={temperature}: {summary['valid']} of {summary['n']} bodies parse "
              f"({sum(r['ended'] for r in records)} ended before the {args.max_new}-token budget)")  # fmt: skip
        for message, count in errors.most_common(8):
            print(f"  {count:4d}  {message}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
