"""The built-in problem set: 168 original Python problems (problems.jsonl) in six categories, each with a
canonical solution, a plausible wrong solution, edge-case tests and a fixed train/test split."""

from __future__ import annotations

import json
from pathlib import Path

from codefoundry.tasks.problem import Problem

DATA = Path(__file__).with_name("problems.jsonl")
SPLITS = ("train", "test", "all")


def load(split: str = "test") -> list[Problem]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    problems = []
    with DATA.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if split != "all" and rec["split"] != split:
                continue
            problems.append(
                Problem(
                    task_id=rec["task_id"],
                    prompt=rec["prompt"],
                    entry_point=rec["entry_point"],
                    tests=tuple(rec["tests"]),
                    setup=rec.get("setup", ""),
                    canonical_solution=rec["canonical_solution"],
                    metadata={k: rec[k] for k in ("category", "difficulty", "split", "wrong_solution")},
                )
            )
    return problems
