"""MultiPL-E (HumanEval and MBPP translated to other languages), from its JSONL files, judged by exit status.

A record has `name, language, prompt, tests, stop_tokens` (and `doctests, original, prompt_terminology`,
kept in metadata). The program is `prompt + completion + "\\n" + tests`, built and run by the sandbox's
runner for the language; it passes when it compiles and exits 0 (the tests are asserts in a `main` or a
top-level call). A completion should first be cut at the record's stop tokens (`truncate`), as
MultiPL-E does when it generates; `evaluate` runs whatever completion it is given.

Languages: MultiPL-E's "cpp" and "js" (the sandbox's "cpp" and "javascript"); any other language the
sandbox knows is accepted by its sandbox name.

Limits, stated plainly: there is no separate judge for these languages, so the tests live in the same
program as the completion and a completion can defeat them (exit 0 before they run, `#define assert`).
That is MultiPL-E's own model; for scores that must resist a hostile policy (RL rewards) prefer Python
problems judged out of process.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from codefoundry.jsonl import iter_records
from codefoundry.sandbox import LANGUAGES
from codefoundry.tasks.problem import Problem

__all__ = ["LANGUAGE_NAMES", "MultiPLEProblem", "load", "problem_from_record", "program", "truncate"]

LANGUAGE_NAMES = {"cpp": "cpp", "js": "javascript"}  # MultiPL-E's name -> the sandbox's


class MultiPLEProblem(Problem):
    """A Problem whose program ends with its tests (`metadata["suffix"]`): the verdict is the exit status.

    Only `program` differs from `Problem`; should `Problem.program` itself append `metadata["suffix"]`,
    plain `Problem`s would do and this class can go."""

    def program(self, completion: str) -> str:
        return program(self, completion)


def program(problem: Problem, completion: str) -> str:
    """The whole program MultiPL-E runs: prompt, completion, a line break, then the tests."""
    return problem.prompt + completion + problem.metadata.get("suffix", "")


def truncate(completion: str, stop_tokens: Sequence[str]) -> str:
    """The completion up to (not including) the earliest stop token."""
    cut = min((i for i in (completion.find(t) for t in stop_tokens if t) if i >= 0), default=len(completion))
    return completion[:cut]


def load(path: str | Path, language: str) -> list[MultiPLEProblem]:
    """The problems of a MultiPL-E JSONL (or .jsonl.gz) file, all of which must be in `language`."""
    sandbox_language = _sandbox_language(language)
    problems = []
    for n, record in iter_records(path, required=("name", "prompt", "tests")):
        where = f"{path}: line {n} ({record['name']})"
        own = record.get("language")
        if own is not None and _sandbox_language(own) != sandbox_language:
            raise ValueError(f"{where}: record is in {own!r}, not {language!r}")
        problems.append(problem_from_record(record, language=sandbox_language))
    return problems


def _sandbox_language(language: str) -> str:
    name = LANGUAGE_NAMES.get(language, language)
    if name not in LANGUAGES:
        known = sorted({*LANGUAGE_NAMES, *LANGUAGES} - {"python"})
        raise ValueError(f"unsupported MultiPL-E language {language!r}; known: {', '.join(known)}")
    return name


def problem_from_record(record: dict, *, language: str | None = None) -> MultiPLEProblem:
    """One MultiPL-E record as a Problem judged by its program's exit status."""
    language = language or _sandbox_language(record["language"])
    extra = {k: record[k] for k in ("doctests", "original", "prompt_terminology") if k in record}
    return MultiPLEProblem(
        task_id=record["name"],
        prompt=record["prompt"],
        entry_point=_entry_point(record["tests"]),
        tests=(),  # no judge: the tests are part of the program (metadata["suffix"])
        language=language,
        metadata={
            "suffix": "\n" + record["tests"],
            "stop_tokens": list(record.get("stop_tokens") or []),
            "multipl_e_language": record.get("language", language),
            **extra,
        },
    )


def _entry_point(tests: str) -> str:
    """The function under test: MultiPL-E's tests start with `candidate = <name>` (or "" if not found)."""
    match = re.search(r"\bcandidate\s*=\s*([A-Za-z_$][\w$]*)", tests)
    return match.group(1) if match else ""
