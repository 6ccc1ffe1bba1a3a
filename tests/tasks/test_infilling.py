"""Fill-in-the-middle problems on real HumanEval: masked canonical lines put back pass the real tests, wrong
middles fail, spans are deterministic per seed; and HumanEval-infilling's file format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codefoundry.sandbox import Limits
from codefoundry.tasks import Problem, humaneval
from codefoundry.tasks.infilling import (
    InfillProblem,
    evaluate_infill,
    infill_problem_as_problem,
    load_infilling_jsonl,
    make_infilling,
    program,
    summarize,
)

DATA = Path(__file__).parent / "data"
SHORT = Limits(cpu_seconds=1)  # wrong middles can loop forever; no need to wait ten seconds for each


@pytest.fixture(scope="module")
def problems():
    return humaneval.load()


def _indent(text: str) -> str:
    return text[: len(text) - len(text.lstrip())]


def test_single_line_canonical_middles_pass_and_wrong_ones_fail(problems):
    ips = make_infilling(problems, mode="single-line")
    assert len(ips) == 164
    for ip, p in zip(ips, problems, strict=True):
        assert ip.problem is p
        assert program(ip, ip.middle) == p.prompt + p.canonical_solution
        assert ip.middle.strip() and ip.middle.count("\n") <= 1
    good = evaluate_infill([(ip, ip.middle) for ip in ips], workers=2)
    assert [r.task_id for r in good if not r.passed] == []
    assert summarize(good) == {"n": 164, "pass_rate": 1.0, "exact_match": 1.0}

    wrong = [(ip, _indent(ip.middle) + "pass\n") for ip in ips]  # a statement where one is needed
    bad = evaluate_infill(wrong, workers=2, limits=SHORT)
    summary = summarize(bad)
    assert summary["exact_match"] == 0.0
    assert summary["pass_rate"] <= 0.1  # a few masked lines are redundant for the tests
    assert not any(r.score.infrastructure_error for r in bad)


def test_multi_line_canonical_middles_pass_and_blank_ones_fail(problems):
    ips = make_infilling(problems, mode="multi-line", seed=3)
    assert 100 < len(ips) < 164  # one-line bodies have no 2-5 line span
    for ip in ips:
        lines = ip.middle.splitlines()
        assert 2 <= len(lines) <= 5 and lines[0].strip() and lines[-1].strip()
        assert program(ip, ip.middle) == ip.problem.prompt + ip.problem.canonical_solution
    good = evaluate_infill([(ip, ip.middle) for ip in ips], workers=2)
    assert [r.task_id for r in good if not r.passed] == []
    bad = evaluate_infill([(ip, "\n") for ip in ips], workers=2, limits=SHORT)
    assert summarize(bad)["pass_rate"] <= 0.05


def test_spans_are_deterministic_per_seed_and_independent_of_the_list(problems):
    first = make_infilling(problems, mode="multi-line", seed=7, per_problem=2)
    again = make_infilling(problems, mode="multi-line", seed=7, per_problem=2)
    assert [(ip.task_id, ip.middle) for ip in first] == [(ip.task_id, ip.middle) for ip in again]
    other = make_infilling(problems, mode="multi-line", seed=8, per_problem=2)
    assert [ip.task_id for ip in first] != [ip.task_id for ip in other]
    alone = make_infilling(problems[40:41], mode="multi-line", seed=7, per_problem=2)
    assert [ip.task_id for ip in alone] == [ip.task_id for ip in first if ip.problem is problems[40]]


def test_per_problem_spans_are_distinct_and_ordered(problems):
    ips = make_infilling(problems[:20], mode="single-line", per_problem=3)
    by_source: dict[str, list[InfillProblem]] = {}
    for ip in ips:
        by_source.setdefault(ip.problem.task_id, []).append(ip)
    for source, group in by_source.items():
        lines = [int(ip.task_id.rsplit("/L", 1)[1]) for ip in group]
        assert lines == sorted(set(lines)), source
        assert len(group) == min(
            3, sum(bool(x.strip()) for x in group[0].problem.canonical_solution.splitlines())
        )


def test_infill_problem_as_problem_grades_the_whole_program(problems):
    ip = make_infilling(problems[:1])[0]
    p = infill_problem_as_problem(ip)
    assert p.prompt == "" and p.tests == ip.problem.tests and p.setup == ip.problem.setup
    assert p.program(program(ip, ip.middle)) == ip.problem.prompt + ip.problem.canonical_solution
    assert p.metadata["source_task_id"] == "HumanEval/0"


def test_exact_match_ignores_trailing_whitespace_but_not_indentation(problems):
    ip = make_infilling(problems[2:3])[0]
    results = evaluate_infill([(ip, ip.middle.rstrip() + "   \n"), (ip, ip.middle.lstrip())])
    assert [r.exact_match for r in results] == [True, False]
    assert results[0].passed and not results[1].passed


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        make_infilling([], mode="random-span")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per_problem"):
        make_infilling([], per_problem=0)
    with pytest.raises(ValueError, match="toy/1: no canonical solution"):
        make_infilling([Problem("toy/1", "def f():\n", "f", ("assert True",))])


def test_load_infilling_jsonl_fixture():
    ips = load_infilling_jsonl(DATA / "infilling_tiny.jsonl")
    assert [ip.task_id for ip in ips] == [
        "TinyInfill/clamp/L1",
        "TinyInfill/encode/L2-L5",
        "TinyInfill/double/L0",
    ]
    good = evaluate_infill([(ip, ip.middle) for ip in ips])
    assert [r.passed for r in good] == [True, True, True]
    wrong = ["        return high\n", "        pairs.append((ch, 1))\n", "    return x\n"]
    bad = evaluate_infill(list(zip(ips, wrong, strict=True)), limits=SHORT)
    assert [r.passed for r in bad] == [False, False, False]
    assert [r.exact_match for r in bad] == [False, False, False]


def test_load_infilling_jsonl_errors_name_file_and_line(tmp_path):
    record = json.loads((DATA / "infilling_tiny.jsonl").read_text().splitlines()[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON"):
        load_infilling_jsonl(path)
    del record["suffix"]
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: record lacks suffix"):
        load_infilling_jsonl(path)
