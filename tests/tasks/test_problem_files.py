"""Problem files (`--task FILE`): what `write_problems_file` writes, `load_problems_file` reads back, and a
bad file is a one-line error naming the line."""

from __future__ import annotations

import json

import pytest

from codefoundry.tasks.problem import Problem
from codefoundry.tasks.registry import ProblemFileError, load_problems_file, write_problems_file


def test_round_trip(tmp_path):
    problems = [
        Problem(
            "a/0",
            "def f(x):\n",
            "f",
            ("assert f(1) == 2",),
            setup="import math",
            canonical_solution="    return x + 1\n",
        ),
        Problem("a/1", "def g():\n", "g", ("assert g() is None", "assert True")),
    ]
    path = write_problems_file(tmp_path / "p.jsonl", problems)
    back = load_problems_file(path)
    assert [(p.task_id, p.prompt, p.entry_point, p.tests, p.setup, p.canonical_solution) for p in back] == [
        (p.task_id, p.prompt, p.entry_point, p.tests, p.setup, p.canonical_solution) for p in problems
    ]
    assert "setup" not in json.loads(path.read_text().splitlines()[1])  # empty fields are left out


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"task_id": "x", "prompt": "p", "entry_point": "f"}', r"p\.jsonl:2: missing .*test or tests"),
        ('{"task_id": "x", "prompt": 3, "entry_point": "f", "tests": []}', r"p\.jsonl:2: .*prompt"),
        (
            '{"task_id": "a", "prompt": "p", "entry_point": "f", "tests": []}',
            r"p\.jsonl:2: duplicate task_id 'a'",
        ),
    ],
)
def test_bad_lines_are_named(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"task_id": "a", "prompt": "p", "entry_point": "f", "tests": ["assert True"]}\n' + line + "\n"
    )
    with pytest.raises(ProblemFileError, match=message):
        load_problems_file(path)
