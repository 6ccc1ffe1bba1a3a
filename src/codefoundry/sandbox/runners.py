"""The language table: how a program in each language is written, built and started in the sandbox.

Adding a language is one entry. `compile` and `run` are argument vectors run inside the program's work
directory; "<python>" means the program runs in the worker's already-warm interpreter (no start-up cost).
A runtime that reserves address space it never uses gets that much more than `Limits.memory_mb` as its
RLIMIT_AS (`reserved_mb`), and an option that holds its own heap to `memory_mb` (`heap_option`); where the
worker has a memory cgroup, that stays the bound on what the run really uses.
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
    reserved_mb: int = 0  # address space the runtime reserves beyond its use: added to RLIMIT_AS
    heap_option: str = ""  # put after run[0], "{mb}" replaced by Limits.memory_mb: the runtime's heap limit

    def command(self, memory_mb: int) -> list[str]:
        """The argument vector that starts a program under `memory_mb` of memory."""
        if not self.heap_option:
            return list(self.run)
        return [self.run[0], self.heap_option.format(mb=memory_mb), *self.run[1:]]


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/bin/{name}"


LANGUAGES: dict[str, Runner] = {
    "python": Runner("main.py", ("<python>",)),
    "c": Runner("main.c", ("./main",), (_tool("gcc"), "-O1", "-std=gnu11", "-o", "main", "main.c", "-lm")),
    "cpp": Runner("main.cpp", ("./main",), (_tool("g++"), "-O1", "-std=gnu++17", "-o", "main", "main.cpp")),
    # node starts its V8 worker threads before any script runs: below 8 processes and threads it aborts or
    # hangs until the wall-clock backstop (node 20, measured). Before any script runs it also holds ~728 MB
    # of address space (VmSize; ~40 MB resident): a 510 MB V8 reservation, 8 MB stacks for its threads, a
    # 64 MB malloc arena. Under RLIMIT_AS = memory_mb it could not start at 512 MB ("Fatal process OOM ...
    # CodeRange") and at 1024 MB a 381 MB Float64Array failed; 1024 MB more leaves room for a dozen more
    # threads. V8's old generation is then held to memory_mb, so a program that fills it stops with "heap
    # out of memory" rather than at the address-space limit.
    "javascript": Runner(
        "main.js",
        (_tool("node"), "main.js"),
        min_processes=8,
        reserved_mb=1024,
        heap_option="--max-old-space-size={mb}",
    ),
}
# Other names that fence tags and datasets give them (tasks/prompts.py reads the same), in any case.
ALIASES = {
    "py": "python",
    "c++": "cpp",
    "cxx": "cpp",
    "js": "javascript",
    "node": "javascript",
    "nodejs": "javascript",
}


def language_name(language: str) -> str:
    """The runner table's name for a language or one of its aliases, in any case ("Py" -> "python")."""
    key = ALIASES.get(language.lower(), language.lower())
    if key not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; known: {', '.join(sorted(LANGUAGES))}")
    return key


def runner_for(language: str) -> Runner:
    return LANGUAGES[language_name(language)]
