"""Fill-in-the-middle problems graded by execution, in the spirit of HumanEval-infilling.

`make_infilling` masks a span of a problem's canonical solution: one non-blank line ("single-line") or a
contiguous block of 2-5 lines that starts and ends on a non-blank line ("multi-line"). What is left is an
`InfillProblem(task_id, prefix, suffix, middle, problem)`: the prefix is the prompt plus the lines before the
span, the suffix the lines after it, the middle the masked lines with their newlines. A generated middle is
graded by running `prefix + middle + suffix` against the source problem's own tests, through the one
verdict (`evaluate_many`), and also compared with the masked text (`metrics.exact_match`, indentation
significant, trailing whitespace ignored).

Spans are drawn per problem from a generator seeded by (seed, mode, task id), so a problem's spans do not
depend on which other problems are in the list. A problem whose solution has no span of the mode (a
one-line body, for "multi-line") yields nothing. `load_infilling_jsonl` reads files in HumanEval-infilling's
format (`task_id, prompt` (the prefix), `suffix, canonical_solution` (the middle), `test, entry_point`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from codefoundry.jsonl import iter_records
from codefoundry.sandbox import Limits
from codefoundry.tasks.metrics import exact_match
from codefoundry.tasks.problem import Problem, Score, evaluate_many

__all__ = [
    "InfillProblem",
    "InfillScore",
    "evaluate_infill",
    "infill_problem_as_problem",
    "load_infilling_jsonl",
    "make_infilling",
    "program",
    "summarize",
]

Mode = Literal["single-line", "multi-line"]
MULTI_LINE_SPAN = (2, 5)  # lines masked in "multi-line" mode, inclusive


@dataclass(frozen=True)
class InfillProblem:
    task_id: str
    prefix: str
    suffix: str
    middle: str  # the masked text, the reference answer
    problem: Problem  # the source problem: its tests, setup and entry point grade the filled program


@dataclass(frozen=True)
class InfillScore:
    task_id: str
    score: Score
    exact_match: bool  # the generated middle equals the masked one (metrics.exact_match)

    @property
    def passed(self) -> bool:
        return self.score.passed


def program(ip: InfillProblem, middle: str) -> str:
    """The program that runs: prefix, the generated middle, suffix."""
    return ip.prefix + middle + ip.suffix


def _spans(lines: Sequence[str], mode: Mode) -> list[tuple[int, int]]:
    """Candidate [start, stop) line spans of `mode` over `lines`."""
    filled = [bool(line.strip()) for line in lines]
    if mode == "single-line":
        return [(i, i + 1) for i, ok in enumerate(filled) if ok]
    low, high = MULTI_LINE_SPAN
    return [
        (i, j)
        for i in range(len(lines))
        for j in range(i + low, min(i + high, len(lines)) + 1)
        if filled[i] and filled[j - 1]
    ]


def make_infilling(
    problems: Iterable[Problem], *, mode: Mode = "single-line", seed: int = 0, per_problem: int = 1
) -> list[InfillProblem]:
    """Up to `per_problem` distinct masked spans per problem, in problem order then line order.

    Task ids read `<source id>/<mode>/L<first line>` ("-L<last line>" added in multi-line mode), lines
    counted from 0 within the canonical solution."""
    if mode not in ("single-line", "multi-line"):
        raise ValueError(f"mode must be 'single-line' or 'multi-line', got {mode!r}")
    if per_problem < 1:
        raise ValueError(f"per_problem must be >= 1, got {per_problem}")
    out = []
    for p in problems:
        if not p.canonical_solution.strip():
            raise ValueError(f"{p.task_id}: no canonical solution to mask")
        lines = p.canonical_solution.splitlines(keepends=True)
        spans = _spans(lines, mode)
        rng = random.Random(f"{seed}/{mode}/{p.task_id}")  # str seeds hash stably across processes
        for start, stop in sorted(rng.sample(spans, min(per_problem, len(spans)))):
            where = f"L{start}" if mode == "single-line" else f"L{start}-L{stop - 1}"
            out.append(
                InfillProblem(
                    task_id=f"{p.task_id}/{mode}/{where}",
                    prefix=p.prompt + "".join(lines[:start]),
                    suffix="".join(lines[stop:]),
                    middle="".join(lines[start:stop]),
                    problem=p,
                )
            )
    return out


def infill_problem_as_problem(ip: InfillProblem) -> Problem:
    """A Problem with an empty prompt whose completion is the whole program (`program(ip, middle)`),
    judged by the source problem's tests and setup."""
    p = ip.problem
    return Problem(
        task_id=ip.task_id,
        prompt="",
        entry_point=p.entry_point,
        tests=p.tests,
        setup=p.setup,
        canonical_solution=program(ip, ip.middle),
        language=p.language,
        metadata={**p.metadata, "source_task_id": p.task_id},
    )


def evaluate_infill(
    pairs: Sequence[tuple[InfillProblem, str]],
    *,
    limits: Limits | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> list[InfillScore]:
    """Grade (infill problem, generated middle) pairs by execution, in input order."""
    graded = [(infill_problem_as_problem(ip), program(ip, middle)) for ip, middle in pairs]
    scores = evaluate_many(graded, limits=limits, workers=workers, progress=progress)
    return [
        InfillScore(ip.task_id, score, exact_match(middle, ip.middle))
        for (ip, middle), score in zip(pairs, scores, strict=True)
    ]


def summarize(results: Sequence[InfillScore]) -> dict[str, float]:
    """`{"n", "pass_rate", "exact_match"}` over the results (one sample per problem: pass rate = pass@1)."""
    n = len(results)
    if n == 0:
        raise ValueError("summarize: no results")
    return {
        "n": n,
        "pass_rate": sum(r.passed for r in results) / n,
        "exact_match": sum(r.exact_match for r in results) / n,
    }


_FIELDS = ("task_id", "prompt", "suffix", "canonical_solution", "test", "entry_point")


def load_infilling_jsonl(path: str | Path) -> list[InfillProblem]:
    """Infill problems from a HumanEval-infilling style JSONL file (optionally gzipped).

    The source Problem's prompt is the prefix, its tests are `test` followed by `check(<entry_point>)`,
    and its setup (trusted code the judge runs first, for helpers the tests call) is the whole reference
    program, prefix + canonical middle + suffix."""
    path = Path(path)
    out = []
    for lineno, record in iter_records(path, required=_FIELDS):
        wrong = [k for k in _FIELDS if not isinstance(record[k], str)]
        if wrong:
            raise ValueError(f"{path}:{lineno}: {', '.join(wrong)} must be strings")
        prefix, middle, suffix = record["prompt"], record["canonical_solution"], record["suffix"]
        entry = record["entry_point"]
        source = Problem(
            task_id=record["task_id"],
            prompt=prefix,
            entry_point=entry,
            tests=(record["test"] + f"\n\ncheck({entry})\n",),
            setup=prefix + middle + suffix,
            canonical_solution=middle,
        )
        out.append(InfillProblem(record["task_id"], prefix, suffix, middle, source))
    return out
