"""The Task interface and the built-in set through the real sandbox: canonical solutions pass, the
hand-written wrong ones fail, and so do most single-edit mutants; the parametric set's solutions pass."""

from codefoundry.sandbox import Limits
from codefoundry.tasks import Task, evaluate_many, get_task
from codefoundry.tasks.mutants import mutants


def test_builtin_canonical_pass_and_wrong_fail_in_the_sandbox():
    task = get_task("builtin-all")
    assert isinstance(task, Task)
    problems = task.problems()
    assert len(problems) >= 150
    pairs = [(p, p.canonical_solution) for p in problems] + [
        (p, p.metadata["wrong_solution"]) for p in problems
    ]
    scores = evaluate_many(pairs, workers=2, limits=Limits(cpu_seconds=3), progress=False)
    n = len(problems)
    assert [p.task_id for (p, _), s in zip(pairs[:n], scores[:n], strict=True) if not s.passed] == []
    assert [p.task_id for (p, _), s in zip(pairs[n:], scores[n:], strict=True) if s.passed] == []
    assert all(0.0 <= s.fraction < 1.0 for s in scores[n:])


def test_builtin_tests_reject_most_mutants():
    problems = get_task("builtin").problems()
    pairs = []
    for p in problems:
        for m in mutants(p.prompt + p.canonical_solution, function=p.entry_point, limit=2):
            pairs.append((p.__class__(p.task_id, "", p.entry_point, p.tests, p.setup), m))
    scores = evaluate_many(pairs, workers=2, limits=Limits(cpu_seconds=2), progress=False)
    killed = sum(not s.passed for s in scores) / len(scores)
    assert killed >= 0.85, f"only {killed:.0%} of mutants rejected"


def test_task_evaluate_is_the_verdict_for_parametric_problems():
    task = get_task("parametric")
    problems = task.problems()[:40]
    assert all(task.evaluate(p, p.canonical_solution).passed for p in problems[:5])
    scores = evaluate_many([(p, p.canonical_solution) for p in problems], workers=2, progress=False)
    assert all(s.passed and s.reward == 1.0 for s in scores)


def test_a_python_problem_whose_tests_cannot_judge_is_refused_when_made_naming_it():
    import pytest

    from codefoundry.tasks import Problem

    good = Problem("t/0", "def f():\n", "f", ("assert f() == 1",))
    assert good.judge().tests == ("assert f() == 1",)
    for tests, entry, why in [((), "f", "empty"), (("assert f(",), "f", "not valid Python"),
                              (("assert f() == 1",), "a.b", "entry_point")]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"problem 't/1': Judge\..*{why}"):
            Problem("t/1", "def f():\n", entry, tests)
    # Other languages carry their tests in the program: no judge, nothing to check.
    assert Problem("t/2", "", "f", (), language="cpp").tests == ()


def test_a_problem_named_python_in_another_spelling_is_judged():
    # language="Python" or "py" ran the program with no judge: a wrong solution passed as any program that
    # exits 0.
    from codefoundry.tasks import Problem, evaluate

    for spelling in ("Python", "py", "PY"):
        p = Problem("t/3", "", "f", ("assert f() == 1",), language=spelling)
        assert p.language == "python"
        assert not evaluate(p, "def f():\n    return 2\n").passed
        assert evaluate(p, "def f():\n    return 1\n").passed
    assert Problem("t/4", "", "f", (), language="C++").language == "cpp"


def test_a_problem_whose_tests_would_never_run_is_refused():
    import pytest

    from codefoundry.tasks import Problem

    with pytest.raises(ValueError, match=r"^problem 't/5': a cpp problem's tests are never run"):
        Problem("t/5", "int main() {}", "f", ("assert f() == 1",), language="cpp")
    with pytest.raises(ValueError, match=r"^problem 't/6': unknown language 'cobol'"):
        Problem("t/6", "", "f", ("assert f() == 1",), language="cobol")
    with pytest.raises(ValueError, match=r"^problem 't/7': language must be a str, not NoneType$"):
        Problem("t/7", "", "f", ("assert f() == 1",), language=None)
