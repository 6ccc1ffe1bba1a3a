"""Helpers shared by the verdict-integrity suites (test_integrity_*.py).

The judge is `Judge(tests=("assert add(1, 2) == 3", "assert add(2, 2) == 4"), entry_point="add")`. Each
forging trick comes with a WRONG `add` (or none), so the only way for it to pass is to defeat the judge.
Each legitimate case is a correct solution written in some less common style, and must pass.
"""

from __future__ import annotations

from redteam_kit import brief, src  # noqa: F401 (re-exported to the integrity suites)

from codefoundry.sandbox import ExecutionResult, Judge, Limits, Status, execute

LIMITS = Limits(cpu_seconds=2, memory_mb=256, processes=16, open_files=64, output_bytes=1 << 18)
ADD = Judge(tests=("assert add(1, 2) == 3", "assert add(2, 2) == 4"), entry_point="add")
CORRECT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"


def judged(program: str, judge: Judge = ADD, **kw) -> ExecutionResult:
    kw.setdefault("limits", LIMITS)
    return execute(program, judge=judge, **kw)


def assert_not_forged(r: ExecutionResult, *statuses: Status) -> None:
    assert not r.passed, brief(r)
    assert r.status != Status.OK, brief(r)
    assert r.status != Status.SANDBOX_ERROR, brief(r)
    if statuses:
        assert r.status in statuses, brief(r)


def assert_passes(r: ExecutionResult, n_tests: int) -> None:
    assert r.passed, brief(r)
    assert r.status == Status.OK, brief(r)
    assert r.tests_completed is True, brief(r)
    assert len(r.tests) == n_tests and all(t.passed for t in r.tests), brief(r)
    assert r.tests_passed == n_tests, brief(r)
