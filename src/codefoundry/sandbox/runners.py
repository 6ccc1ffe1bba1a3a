"""The language table: how a program in each language is written, built and started in the sandbox.

Adding a language is one entry. `compile` and `run` are argument vectors run inside the program's work
directory; "<python>" means the program runs in the worker's already-warm interpreter (no start-up cost).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Runner:
    filename: str
    run: tuple[str, ...]
    compile: tuple[str, ...] | None = None
    min_processes: int = 1  # the least `Limits.processes` a program can run under (checks.check_program)


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/bin/{name}"


LANGUAGES: dict[str, Runner] = {
    "python": Runner("main.py", ("<python>",)),
    "c": Runner("main.c", ("./main",), (_tool("gcc"), "-O1", "-std=gnu11", "-o", "main", "main.c", "-lm")),
    "cpp": Runner("main.cpp", ("./main",), (_tool("g++"), "-O1", "-std=gnu++17", "-o", "main", "main.cpp")),
    # node starts its V8 worker threads before any script runs: below 8 processes and threads it aborts or
    # hangs until the wall-clock backstop (node 20, measured).
    "javascript": Runner("main.js", (_tool("node"), "main.js"), min_processes=8),
}
ALIASES = {"py": "python", "c++": "cpp", "js": "javascript", "node": "javascript"}


def runner_for(language: str) -> Runner:
    key = ALIASES.get(language.lower(), language.lower())
    if key not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; known: {', '.join(sorted(LANGUAGES))}")
    return LANGUAGES[key]
