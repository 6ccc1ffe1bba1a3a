"""Checks of the parametric easy-problem generator (`codefoundry.tasks.parametric`).

Generated programs are trusted, but they are still only run in a fresh `python3 -I -S` subprocess,
never in the test process."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from codefoundry.tasks.parametric import FAMILIES, ParametricProblem, generate, split

_MARKER = "__PARAMETRIC_REPORT__"
_HARNESS = """
import json

def _check(cases):
    failures = []
    for task_id, program, snippets in cases:
        namespace = {"__name__": "__candidate__"}
        try:
            exec(compile(program, task_id, "exec"), namespace)
        except BaseException as exc:
            failures.append([task_id, "definition: " + repr(exc)])
            continue
        for snippet in snippets:
            try:
                exec(compile(snippet, task_id, "exec"), dict(namespace))
            except BaseException as exc:
                failures.append([task_id, snippet + " -> " + repr(exc)])
    print(MARKER + json.dumps(failures))

_check(json.loads(CASES))
"""


def failing_snippets(problems: list[ParametricProblem], timeout: float = 60.0) -> list[list[str]]:
    """Run every problem's canonical solution against its tests in one isolated subprocess and
    return [task_id, what failed] pairs (empty when all pass)."""
    cases = [[p.task_id, p.prompt + p.canonical_solution, list(p.tests)] for p in problems]
    script = _HARNESS.replace("MARKER", repr(_MARKER)).replace("CASES", repr(json.dumps(cases)))
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-"], input=script, capture_output=True, text=True, timeout=timeout
    )
    for line in proc.stdout.splitlines():
        if line.startswith(_MARKER):
            return json.loads(line[len(_MARKER) :])
    raise AssertionError("harness produced no report: " + proc.stderr[-2000:])


def test_enough_families() -> None:
    assert len(FAMILIES) >= 12
    assert len(set(FAMILIES)) == len(FAMILIES)


def test_deterministic_for_a_seed() -> None:
    assert generate(60, seed=7) == generate(60, seed=7)
    assert generate(60, seed=7) != generate(60, seed=8)
    assert split(3, 40, 20) == split(3, 40, 20)


def test_ids_families_and_no_duplicate_prompts() -> None:
    problems = generate(200, seed=11)
    assert len(problems) == 200
    assert len({p.prompt for p in problems}) == 200
    assert len({p.task_id for p in problems}) == 200
    for i, p in enumerate(problems):
        assert p.task_id == f"parametric/{p.family}/{i}"
        assert p.family in FAMILIES
    counts = Counter(p.family for p in problems)
    assert set(counts) == set(FAMILIES)  # round-robin: every family is used


def test_family_filter_and_errors() -> None:
    only = generate(15, seed=0, families=["add_k", "reverse_string"])
    assert {p.family for p in only} == {"add_k", "reverse_string"}
    with pytest.raises(ValueError):
        generate(3, seed=0, families=["no_such_family"])
    with pytest.raises(ValueError):
        generate(1000, seed=0, families=["reverse_string"])  # only a few distinct prompts exist
    assert generate(0, seed=0) == []


def test_prompt_and_solution_shape() -> None:
    for p in generate(len(FAMILIES) * 5, seed=5):
        assert re.fullmatch(r'def \w+\(\w+: [^)]+\) -> [^:]+:\n    """[^\n]+"""\n', p.prompt), p.prompt
        assert p.prompt.startswith(f"def {p.entry_point}(")
        assert p.canonical_solution.startswith("    return ") and p.canonical_solution.count("\n") == 1
        ast.parse(p.prompt + p.canonical_solution)
        assert 3 <= len(p.tests) <= 5, p.task_id
        for snippet in p.tests:
            ast.parse(snippet)
            assert snippet.startswith(f"assert {p.entry_point}("), snippet


def test_split_is_disjoint_and_sized() -> None:
    train, test = split(seed=21, n_train=150, n_test=60)
    assert (len(train), len(test)) == (150, 60)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert not {p.task_id for p in train} & {p.task_id for p in test}
    assert len({p.family for p in test}) >= 12


def test_canonical_solutions_pass_their_tests() -> None:
    problems = generate(len(FAMILIES) * 8, seed=2024)
    assert failing_snippets(problems) == []


def test_harness_detects_a_wrong_solution() -> None:
    good = generate(1, seed=1, families=["add_k"])[0]
    bad = ParametricProblem(
        good.task_id, good.family, good.prompt, good.entry_point, "    return 0\n", good.tests
    )
    assert [tid for tid, _ in failing_snippets([bad])] != []
