"""MBPP, Mostly Basic Python Problems (Austin et al., 2021), from the upstream files in `shared/data/mbpp`.

Two variants: "full" (`mbpp.jsonl`, 974 tasks) and "sanitized" (`sanitized-mbpp.json`, the 427 tasks its
authors checked by hand, some reworded). Splits are the authors' task-id ranges: "prompt" 1-10 (few-shot
examples), "test" 11-510, "validation" 511-600, "train" 601-974; "all" keeps everything.

The model writes the whole program, so each `Problem` has `prompt=""` (the program is the completion
itself) and the text shown to the model lives in `metadata["prompt_text"]` (see `format_prompt`). The tests
are the task's `assert` lines, run by the out-of-process judge with `entry_point` bound to the program's
function; `setup` holds the task's `test_setup_code` and the imports its asserts use.

Limits: the judge hands the program plain data only and can name only the entry point. Tasks whose tests
build objects of a class the program defines (full 367 and 927 build trees of `Node`s, full 601 builds
`Pair`s) or pass a type as an argument (full 533) cannot pass here, so of the test split's 500 full tasks
499 are passable, and all 257 sanitized ones; `tests/tasks/test_mbpp.py` lists each failing reference.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from codefoundry.tasks.problem import Problem

__all__ = ["SPLITS", "data_dir", "entry_point", "format_prompt", "load", "problem_from_record"]

SPLITS: dict[str, range] = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}
FILES = {"full": "mbpp.jsonl", "sanitized": "sanitized-mbpp.json"}
ENV_VAR = "CODEFOUNDRY_MBPP_DIR"
_BUILTINS = frozenset(dir(builtins))


def data_dir() -> Path:
    """The folder holding the MBPP files: $CODEFOUNDRY_MBPP_DIR, else `shared/data/mbpp` beside the
    repository this package is installed from, else `../shared/data/mbpp` from the working directory."""
    if os.environ.get(ENV_VAR):
        candidates = [Path(os.environ[ENV_VAR])]
    else:
        repo = Path(__file__).resolve().parents[3]  # src/codefoundry/tasks/mbpp.py -> repository root
        candidates = [
            repo.parent / "shared" / "data" / "mbpp",
            Path.cwd().parent / "shared" / "data" / "mbpp",
        ]
    for folder in candidates:
        if any((folder / name).is_file() for name in FILES.values()):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"MBPP data not found (looked in {looked}); set {ENV_VAR} to the folder "
                            f"holding {FILES['full']} and {FILES['sanitized']}")  # fmt: skip


def load(
    variant: str = "full",
    split: str = "test",
    path: str | Path | None = None,
    *,
    challenge: bool = False,
) -> list[Problem]:
    """MBPP problems of one variant and split, in task-id order.

    `path` is the data folder or one of its two files (default: `data_dir()`); `challenge` adds the full
    variant's `challenge_test_list` asserts (11 tasks have any) to the tests."""
    if variant not in FILES:
        raise ValueError(f"unknown MBPP variant {variant!r}; use 'full' or 'sanitized'")
    if split != "all" and split not in SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; use one of {', '.join([*SPLITS, 'all'])}")
    file = Path(path) if path is not None else data_dir()
    if file.is_dir():
        file = file / FILES[variant]
    if not file.is_file():
        raise FileNotFoundError(f"MBPP file not found: {file}")
    problems = []
    for n, record in enumerate(_records(file), 1):
        if split != "all" and record.get("task_id") not in SPLITS[split]:
            continue
        try:
            problems.append(problem_from_record(record, variant=variant, challenge=challenge))
        except (KeyError, TypeError, ValueError, SyntaxError) as e:
            raise ValueError(f"{file}: record {n}: {type(e).__name__}: {e}") from None
    return sorted(problems, key=lambda p: p.metadata["mbpp_id"])


def _records(file: Path) -> list[dict]:
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def problem_from_record(record: dict, *, variant: str = "full", challenge: bool = False) -> Problem:
    """One MBPP record (either variant's fields) as a judged whole-program Problem."""
    shown = [_lf(t) for t in record["test_list"]]
    tests = shown + ([_lf(t) for t in record.get("challenge_test_list") or []] if challenge else [])
    code = _lf(record["code"])
    entry = entry_point(shown[0], code)
    text = record["text"] if "text" in record else record["prompt"]  # full: "text"; sanitized: "prompt"
    return Problem(
        task_id=f"MBPP/{record['task_id']}",
        prompt="",
        entry_point=entry,
        tests=tuple(tests),
        setup=_setup(record, tests, entry),
        canonical_solution=code,
        metadata={
            "mbpp_id": record["task_id"],
            "variant": variant,
            "text": text,
            "test_list": shown,
            "prompt_text": _prompt_text(text, shown),
        },
    )


def _lf(text: str) -> str:
    """Upstream `mbpp.jsonl` writes line breaks as CRLF; Python reads either, people read LF better."""
    return text.replace("\r\n", "\n")


def entry_point(test: str, code: str = "") -> str:
    """The function an assert calls: of the names it calls (outermost first), the first one `code` defines
    at top level, else the first that is not a builtin, else the first (task 126 defines its own `sum`)."""
    calls = [n.func.id for n in ast.walk(ast.parse(test))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]  # fmt: skip
    if not calls:
        raise ValueError(f"no function call in the first test: {test!r}")
    defined = _top_level_names(code)
    for pick in ([c for c in calls if c in defined], [c for c in calls if c not in _BUILTINS]):
        if pick:
            return pick[0]
    return calls[0]


def _top_level_names(code: str) -> set[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}


def _setup(record: dict, tests: list[str], entry: str) -> str:
    """The task's test setup code, after the imports its asserts need: the sanitized variant's
    `test_imports`, plus any standard-library module an assert names without importing it."""
    lines = [_lf(line) for line in record.get("test_imports") or []]
    used = set().union(*({n.id for n in ast.walk(ast.parse(t)) if isinstance(n, ast.Name)} for t in tests))
    imported = set().union(*(_imported(line) for line in lines)) if lines else set()
    for name in sorted(used - imported - _BUILTINS - {entry}):
        if name in sys.stdlib_module_names:
            lines.append(f"import {name}")
    setup = _lf(record.get("test_setup_code") or "")
    return "\n".join([*lines, setup]).strip() + "\n" if lines or setup else ""


def _imported(line: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(line)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def format_prompt(problem: Problem, *, shots: Sequence[Problem] = ()) -> str:
    """The text a model sees, in the MBPP paper's layout: the task statement, then its asserts.

        You are an expert Python programmer, and here is your task: {text} Your code should pass these
        tests:\\n\\n{assert 1}\\n{assert 2}\\n{assert 3}\\n

    (one line after "task:"; the wrap above is only for reading). `shots` are solved examples put first,
    each as its own prompt followed by "[BEGIN]\\n{reference code}\\n[DONE]\\n" (the paper used tasks 2, 3
    and 4, the "prompt" split); a model is then expected to answer between [BEGIN] and [DONE]."""
    examples = "".join(f"{format_prompt(s)}[BEGIN]\n{s.canonical_solution.strip()}\n[DONE]\n" for s in shots)
    return examples + _prompt_text(problem.metadata["text"], problem.metadata["test_list"])


def _prompt_text(text: str, tests: Sequence[str]) -> str:
    return (f"You are an expert Python programmer, and here is your task: {text.strip()} "
            f"Your code should pass these tests:\n\n" + "\n".join(tests) + "\n")  # fmt: skip
