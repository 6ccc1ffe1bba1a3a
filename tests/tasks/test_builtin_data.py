"""Checks of the built-in problem set (`codefoundry/tasks/builtin/problems.jsonl`).

Schema, ids, counts and balance are checked in-process. Every program (prompt + canonical solution, and
prompt + wrong solution) is trusted data, yet it is still only ever run in a fresh `python3 -I -S`
subprocess, never in the test process: `run_snippets` is the one small function to swap for the
codefoundry sandbox later.
"""

from __future__ import annotations

import ast
import doctest
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROBLEMS_PATH = (
    Path(__file__).resolve().parents[2] / "src" / "codefoundry" / "tasks" / "builtin" / "problems.jsonl"
)

FIELDS = {
    "task_id": str,
    "category": str,
    "difficulty": str,
    "split": str,
    "prompt": str,
    "entry_point": str,
    "canonical_solution": str,
    "wrong_solution": str,
    "tests": list,
    "setup": str,
}
CATEGORIES = ("strings", "math", "data_structures", "parsing", "algorithms", "classes")
DIFFICULTIES = ("easy", "medium", "hard")
SPLITS = ("train", "test")
RUN_TIMEOUT_S = 30.0
_RESULT_MARKER = "__CODEFOUNDRY_SNIPPET_REPORT__"


# --------------------------------------------------------------------------------------------- runner


@dataclass(frozen=True)
class SnippetReport:
    """What one run of a program against its snippets gave. `defined` is False when the program itself
    crashed (or timed out) before any snippet ran; `errors[i]` is "" when snippet i passed."""

    defined: bool
    errors: tuple[str, ...] = ()
    doctest_failures: int = 0
    doctest_attempted: int = 0
    detail: str = ""

    @property
    def all_passed(self) -> bool:
        return self.defined and not any(self.errors) and self.doctest_failures == 0


_HARNESS = """

def __codefoundry_check(payload):
    import doctest as _doctest
    import io as _io
    import json as _json

    data = _json.loads(payload)
    base = {k: v for k, v in globals().items() if k != "__codefoundry_check"}
    errors = []
    for snippet in data["snippets"]:
        namespace = dict(base)
        try:
            exec(compile(snippet, "<snippet>", "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001 - any exception is a failed snippet
            errors.append((type(exc).__name__ + ": " + str(exc))[:300] or "error")
        else:
            errors.append("")
    failed = attempted = 0
    out = _io.StringIO()
    if data["doc_source"]:
        test = _doctest.DocTestParser().get_doctest(data["doc_source"], dict(base), "prompt", None, 0)
        runner = _doctest.DocTestRunner(verbose=False)
        failed, attempted = runner.run(test, out=out.write)
    report = {"errors": errors, "doc_failed": failed, "doc_attempted": attempted, "doc_out": out.getvalue()[-2000:]}
    print("\\n" + MARKER + _json.dumps(report))


__codefoundry_check(PAYLOAD)
"""


def build_check_script(program: str, snippets: Sequence[str], doc_source: str = "") -> str:
    """The program, then a harness that runs each snippet in its own copy of the program's globals and
    (when `doc_source` is given) its `>>>` examples with doctest, printing one JSON report line."""
    payload = json.dumps({"snippets": list(snippets), "doc_source": doc_source})
    harness = _HARNESS.replace("MARKER", repr(_RESULT_MARKER)).replace("PAYLOAD", repr(payload))
    return program.rstrip("\n") + "\n" + harness


def run_snippets(
    program: str, snippets: Sequence[str], doc_source: str = "", timeout: float = RUN_TIMEOUT_S
) -> SnippetReport:
    """Run `program` and then each snippet (and the doctest examples in `doc_source`) in a fresh
    isolated interpreter. Trusted code only: this is a plain subprocess, not a sandbox."""
    script = build_check_script(program, snippets, doc_source)
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return SnippetReport(defined=False, detail=f"timed out after {timeout} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_MARKER):
            report = json.loads(line[len(_RESULT_MARKER) :])
            return SnippetReport(
                defined=True,
                errors=tuple(report["errors"]),
                doctest_failures=report["doc_failed"],
                doctest_attempted=report["doc_attempted"],
                detail=report["doc_out"],
            )
    return SnippetReport(defined=False, detail=(proc.stderr or proc.stdout)[-2000:])


# --------------------------------------------------------------------------------------------- data


def load_problems(path: Path = PROBLEMS_PATH) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def problems() -> list[dict[str, Any]]:
    return load_problems()


def prompt_docstrings(prompt: str) -> str:
    """Every docstring of the prompt (function, or class and its method), dedented and joined."""
    nodes = [n for n in ast.walk(ast.parse(prompt)) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    return "\n\n".join(doc for n in nodes if (doc := ast.get_docstring(n, clean=True)))


def doctest_examples(prompt: str) -> list[doctest.Example]:
    """The `>>>` examples of a prompt's docstrings (parsed only, never run here)."""
    return doctest.DocTestParser().get_examples(prompt_docstrings(prompt))


@dataclass(frozen=True)
class ProblemRuns:
    canonical: SnippetReport
    wrong: SnippetReport


@pytest.fixture(scope="module")
def runs(problems: list[dict[str, Any]]) -> dict[str, ProblemRuns]:
    def check(problem: dict[str, Any]) -> tuple[str, ProblemRuns]:
        header = problem["setup"] + "\n" if problem["setup"] else ""
        canonical = run_snippets(
            header + problem["prompt"] + problem["canonical_solution"],
            problem["tests"],
            prompt_docstrings(problem["prompt"]),
        )
        wrong = run_snippets(header + problem["prompt"] + problem["wrong_solution"], problem["tests"])
        return problem["task_id"], ProblemRuns(canonical, wrong)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(check, problems))


# --------------------------------------------------------------------------------------------- schema


def test_schema_and_field_types(problems: list[dict[str, Any]]) -> None:
    for p in problems:
        assert set(p) == set(FIELDS), p.get("task_id")
        for name, kind in FIELDS.items():
            assert isinstance(p[name], kind), (p["task_id"], name)
        assert p["category"] in CATEGORIES, p["task_id"]
        assert p["difficulty"] in DIFFICULTIES, p["task_id"]
        assert p["split"] in SPLITS, p["task_id"]
        assert all(isinstance(t, str) and t.strip() for t in p["tests"]), p["task_id"]
        assert p["entry_point"].isidentifier(), p["task_id"]


def test_ids_unique_and_contiguous(problems: list[dict[str, Any]]) -> None:
    ids = [p["task_id"] for p in problems]
    assert ids == [f"builtin/{i:04d}" for i in range(1, len(problems) + 1)]


def test_counts_per_category(problems: list[dict[str, Any]]) -> None:
    assert len(problems) >= 160
    per_category = Counter(p["category"] for p in problems)
    for category in CATEGORIES:
        assert per_category[category] >= 20, category


def test_difficulty_mix(problems: list[dict[str, Any]]) -> None:
    share = {d: n / len(problems) for d, n in Counter(p["difficulty"] for p in problems).items()}
    assert 0.3 <= share["easy"] <= 0.5
    assert 0.3 <= share["medium"] <= 0.5
    assert 0.1 <= share["hard"] <= 0.3


def test_split_is_balanced_per_category(problems: list[dict[str, Any]]) -> None:
    for category in CATEGORIES:
        rows = [p for p in problems if p["category"] == category]
        share = sum(p["split"] == "test" for p in rows) / len(rows)
        assert 0.25 <= share <= 0.35, (category, share)


def test_prompt_shape(problems: list[dict[str, Any]]) -> None:
    for p in problems:
        prompt, tid = p["prompt"], p["task_id"]
        assert prompt.endswith('"""\n'), tid
        assert prompt.splitlines()[-1].strip() == '"""', tid
        tree = ast.parse(prompt)  # a signature whose body is only its docstring is valid Python
        tops = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert [n.name for n in tops] == [p["entry_point"]], tid
        top = tops[0]
        assert ast.get_docstring(top), tid
        if p["category"] == "classes":
            assert isinstance(top, ast.ClassDef), tid
            methods = [n for n in top.body if isinstance(n, ast.FunctionDef)]
            assert len(methods) == 1 and ast.get_docstring(methods[0]), tid
            assert prompt.endswith('        """\n'), tid
        else:
            assert isinstance(top, ast.FunctionDef), tid
            assert prompt.endswith('    """\n') and not prompt.endswith('     """\n'), tid


def test_docstring_examples_present(problems: list[dict[str, Any]]) -> None:
    for p in problems:
        examples = doctest_examples(p["prompt"])
        with_output = [e for e in examples if e.want.strip()]
        assert with_output, p["task_id"]
        if p["category"] != "classes":
            assert 1 <= len(examples) <= 3, p["task_id"]


def test_programs_parse(problems: list[dict[str, Any]]) -> None:
    for p in problems:
        ast.parse(p["prompt"] + p["canonical_solution"])
        ast.parse(p["prompt"] + p["wrong_solution"])
        assert p["canonical_solution"].strip() != p["wrong_solution"].strip(), p["task_id"]
        assert p["canonical_solution"].startswith("    "), p["task_id"]


def test_snippets_shape(problems: list[dict[str, Any]]) -> None:
    for p in problems:
        tests = p["tests"]
        assert 6 <= len(tests) <= 15, p["task_id"]
        assert len(set(tests)) == len(tests), p["task_id"]
        for snippet in tests:
            tree = ast.parse(snippet)
            names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
            assert p["entry_point"] in names, (p["task_id"], snippet)
            assigned = {
                t.id
                for n in ast.walk(tree)
                if isinstance(n, ast.Assign)
                for t in n.targets
                if isinstance(t, ast.Name)
            }
            assert p["entry_point"] not in assigned, (p["task_id"], snippet)
            for banned in ("random", "time", "datetime"):
                assert f"import {banned}" not in snippet, (p["task_id"], snippet)


# --------------------------------------------------------------------------------------------- execution


def test_canonical_solutions_pass_tests_and_doctests(runs: dict[str, ProblemRuns]) -> None:
    bad = {}
    for tid, r in runs.items():
        rep = r.canonical
        if not rep.all_passed or rep.doctest_attempted == 0:
            failing = [f"#{i}: {e}" for i, e in enumerate(rep.errors) if e]
            bad[tid] = (failing, rep.doctest_failures, rep.detail[-500:])
    assert not bad, bad


def test_wrong_solutions_define_and_fail(runs: dict[str, ProblemRuns]) -> None:
    bad = {}
    for tid, r in runs.items():
        rep = r.wrong
        if not rep.defined:
            bad[tid] = "wrong solution did not run to its tests: " + rep.detail[-300:]
        elif not any(rep.errors):
            bad[tid] = "wrong solution passes every test"
    assert not bad, bad


def test_runner_reports_failures() -> None:
    program = "def inc(x):\n    return x + 1\n"
    rep = run_snippets(program, ["assert inc(1) == 2", "assert inc(1) == 3"], ">>> inc(2)\n3\n")
    assert rep.defined and rep.errors[0] == "" and rep.errors[1].startswith("AssertionError")
    assert (rep.doctest_attempted, rep.doctest_failures) == (1, 0)
    assert not run_snippets("def broken(:\n", ["assert True"]).defined
