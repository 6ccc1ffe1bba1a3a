"""MBPP from the upstream files: every reference solution is run through the one verdict, and the ones that
fail are exactly the ones the out-of-process judge cannot serve, each explained."""

import pytest

from codefoundry.tasks import Problem, evaluate, evaluate_many, mbpp

try:
    mbpp.data_dir()
except FileNotFoundError as e:
    pytest.skip(str(e), allow_module_level=True)

# Reference solutions (the `code` field) that fail, by task id, and why. The upstream data README reports
# all 974 + 427 passing when code and tests share one interpreter. Here the asserts run in the judge; it
# reaches names the solution defines (MBPP 367 and 927 build trees of the solution's `Node` class in the
# setup code, 601 builds its `Pair` objects) as handles, and builtin types (533 passes `int`) cross as
# plain data, so none fails.
FULL_FAILING: dict[int, str] = {}
# None: the ten tasks whose asserts call `math.isclose` without importing math (98, 124, 137, 139, 163,
# 233, 246, 248, 276, 300; the data README names them) pass, because `setup` carries the variant's
# `test_imports` into the judge.
SANITIZED_FAILING: dict[int, str] = {}


@pytest.fixture(scope="module")
def full():
    return mbpp.load("full", "all", challenge=True)


@pytest.fixture(scope="module")
def sanitized():
    return mbpp.load("sanitized", "all")


def _by_id(problems):
    return {p.metadata["mbpp_id"]: p for p in problems}


def _failing(problems):
    scores = evaluate_many([(p, p.canonical_solution) for p in problems], workers=2, progress=False)
    assert not any(s.infrastructure_error for s in scores)
    return {p.metadata["mbpp_id"] for p, s in zip(problems, scores, strict=True) if not s.passed}


def test_splits_are_the_authors_task_id_ranges(full, sanitized):
    def sizes(problems):
        ids = [p.metadata["mbpp_id"] for p in problems]
        return {split: sum(i in r for i in ids) for split, r in mbpp.SPLITS.items()}

    assert len(full) == 974 and len(sanitized) == 427
    assert sizes(full) == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    assert sizes(sanitized) == {"prompt": 7, "test": 257, "validation": 43, "train": 120}
    test = mbpp.load("sanitized", "test")
    assert [p.metadata["mbpp_id"] for p in test] == [i for i in _by_id(sanitized) if 11 <= i <= 510]
    assert [p.task_id for p in test][:2] == ["MBPP/11", "MBPP/12"]
    assert len(mbpp.load("full", "validation")) == 90


def _split(problems, split):
    return [p for p in problems if p.metadata["mbpp_id"] in mbpp.SPLITS[split]]


def test_full_test_split_references_all_pass(full):
    assert sum(len(p.tests) > 3 for p in full) == 11  # the tasks with challenge asserts
    assert _failing(_split(full, "test")) == {i for i in FULL_FAILING if i in mbpp.SPLITS["test"]}


def test_sanitized_test_split_references_all_pass(sanitized):
    math_tasks = {98, 124, 137, 139, 163, 233, 246, 248, 276, 300}
    assert all(p.setup == "import math\n" for p in sanitized if p.metadata["mbpp_id"] in math_tasks)
    assert _failing(_split(sanitized, "test")) == {i for i in SANITIZED_FAILING if i in mbpp.SPLITS["test"]}


@pytest.mark.slow
def test_other_splits_references_fail_only_where_explained(full, sanitized):
    """The prompt, validation and train splits (about 900 more runs, so opt-in with `-m slow`)."""
    others = [p for p in full + sanitized if p.metadata["mbpp_id"] not in mbpp.SPLITS["test"]]
    assert _failing([p for p in others if p.metadata["variant"] == "full"]) == set(FULL_FAILING)
    assert _failing([p for p in others if p.metadata["variant"] == "sanitized"]) == set(SANITIZED_FAILING)


def test_problem_shape_and_prompt_format(full):
    p = _by_id(full)[2]
    assert (
        p.prompt == "" and p.program("def f(): pass\n") == "def f(): pass\n"
    )  # the completion is the program
    assert p.entry_point == "similar_elements"
    assert len(p.tests) == 3 and all(t.startswith("assert similar_elements(") for t in p.tests)
    assert "\r" not in p.canonical_solution
    text = mbpp.format_prompt(p)
    assert text == p.metadata["prompt_text"]
    assert text.startswith("You are an expert Python programmer, and here is your task: Write a function to "
                           "find the similar elements from the given two tuple lists. Your code should pass "
                           "these tests:\n\nassert similar_elements(")  # fmt: skip
    assert text.endswith(p.tests[2] + "\n") and text.count("\nassert ") == 3
    shots = [_by_id(full)[i] for i in (2, 3, 4)]  # the paper's few-shot examples
    few = mbpp.format_prompt(p, shots=shots)
    assert few.count("[BEGIN]\n") == 3 and few.count("\n[DONE]\n") == 3 and few.endswith(text)


def test_entry_point_is_the_function_the_tests_call(full):
    assert mbpp.entry_point("assert set(similar_elements((3, 4), (4, 5))) == {4}") == "similar_elements"
    assert mbpp.entry_point("assert math.isclose(area(2), 4.0)") == "area"
    assert mbpp.entry_point("assert sum(10, 15) == 6", "def sum(a, b):\n  pass\n") == "sum"  # task 126
    assert _by_id(full)[126].entry_point == "sum"


def test_a_wrong_program_fails_and_a_right_one_passes(sanitized):
    p = _by_id(sanitized)[17]  # square perimeter
    assert evaluate(p, "def square_perimeter(a):\n    return 4 * a\n").passed
    wrong = evaluate(p, "def square_perimeter(a):\n    return 2 * a\n")
    assert not wrong.passed and wrong.fraction == 0.0
    assert not evaluate(p, "import sys\nsys.exit(0)\n").passed  # exiting early is not passing


def test_missing_data_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv(mbpp.ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"MBPP data not found.*CODEFOUNDRY_MBPP_DIR") as info:
        mbpp.load()
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown MBPP split"):
        mbpp.load("full", "dev", path=tmp_path)


def test_path_may_name_a_file(tmp_path):
    file = mbpp.data_dir() / mbpp.FILES["sanitized"]
    assert [p.task_id for p in mbpp.load("sanitized", "prompt", path=file)] == [
        p.task_id for p in mbpp.load("sanitized", "prompt")
    ]
    assert isinstance(mbpp.load("sanitized", "prompt", path=file)[0], Problem)
