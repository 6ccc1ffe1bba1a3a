"""The sandbox's value types: what a run may use (`Limits`), what a judged run checks (`Judge`), and what
comes back (`ExecutionResult`). Plain frozen dataclasses, JSON-friendly, shared by every executor."""

from __future__ import annotations

import dataclasses
import functools
import keyword
import numbers
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# Bounds of the limits: past these the kernel's or poll()'s integers overflow (poll takes int milliseconds,
# 24.8 days, and the default wall backstop is 3 x CPU), and a limit past them means nothing anyway.
MAX_SECONDS = 7 * 86400  # a week
MAX_MB = 1 << 30  # 1 PiB: << 20 stays well within a 64-bit rlimit
WORK_INODES = 4096  # files and directories a run's work directory holds (jail.WORK_INODES, the tmpfs's)


class Status(StrEnum):
    OK = "ok"  # exited 0 (and, when judged, every test passed)
    FAILED = "failed"  # non-zero exit, compile error, or a judged test that did not pass
    TIMEOUT = "timeout"  # CPU-time limit, or the wall-clock backstop (a build's: phase "compile")
    MEMORY_EXCEEDED = "memory_exceeded"
    OUTPUT_LIMIT = "output_limit"  # stdout + stderr went past Limits.output_bytes
    KILLED = "killed"  # ended by another signal (segfault, a stack past Limits.stack_mb, abort, self-kill)
    SANDBOX_ERROR = "sandbox_error"  # the sandbox failed, not the program: never a wrong answer


class Isolation(StrEnum):
    NAMESPACES = "namespaces"  # pid/net/mount/ipc/uts namespaces, private root, unprivileged uid, rlimits
    # Without root, where the kernel lends a user namespace: the same namespaces and root, inside it; one
    # uid for programs, judge and caller (kept apart by PID namespaces), a memory cgroup only where one is
    # delegated to the caller (userns.py).
    USER_NAMESPACE = "user_namespace"
    PROCESS = "process"  # rlimits + own session and process group only (no privileges to do more)


def _backstop(cpu_seconds: float) -> float:
    """A wall-clock backstop for `cpu_seconds` of CPU time: max(3 x CPU, CPU + 2 s)."""
    return max(3.0 * cpu_seconds, cpu_seconds + 2.0)


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run. `cpu_seconds` is what decides a timeout; `wall_seconds` is a backstop
    (default: max(3 x CPU, CPU + 2 s)) so that sleeping or blocked programs end too. Both count from the
    end of a C or C++ build, which has `compile_seconds` of CPU time and a backstop of its own
    (`build_wall`). `processes` counts every process and thread of the programs' uid, and the worker's
    parse helper runs under that uid too (at the namespaces level), so a program has one fewer than it
    says.

    `stack_mb` is the RLIMIT_STACK of a C or C++ program (set after its build: the compiler keeps the
    worker's own) and of a Python program, whose main thread's stack holds its C-level recursion (through
    `functools.lru_cache` or other C functions, under a raised `sys.setrecursionlimit`: ~700 bytes a level
    on CPython 3.11; the recursion limit is still Python's). Threads a Python program starts keep glibc's
    default stack; node keeps the worker's RLIMIT_STACK (worker.OWN_STACK) and V8 stops its recursion
    itself. Stack pages count as memory: in RLIMIT_AS and the run's memory cgroup. A program that passes
    its stack limit dies of SIGSEGV: `killed`, or `memory_exceeded` where it had used 90% of `memory_mb`
    (a SIGSEGV near the memory limit reads as that limit)."""

    cpu_seconds: float = 10.0
    wall_seconds: float | None = None
    memory_mb: int = 1024  # address space per process (RLIMIT_AS; node gets more: runners.py)
    processes: int = 32  # processes and threads of the run's user (RLIMIT_NPROC; a C/C++ build gets 16)
    file_size_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE; a C/C++ build gets 1024)
    disk_mb: int = 64  # size of the private work directory (a tmpfs)
    open_files: int = 64  # RLIMIT_NOFILE (a C/C++ build gets 1024)
    output_bytes: int = 1 << 20  # stdout + stderr captured; past this the run stops with output_limit
    compile_seconds: float = 30.0  # CPU seconds for the compile step of compiled languages
    # RLIMIT_STACK of the program (C, C++, Python; not node). At the usual 8 MB a C++ DFS 10^6 deep (~100
    # bytes a frame) died of SIGSEGV; judges commonly give the stack the memory limit, often 256 MB, which
    # holds 10^6 frames of 256 bytes. Not memory_mb itself: glibc gives each thread a stack of this size, so
    # under the default 1024 MB of address space a C/C++ program starts 3 threads (15 at 64 MB; measured).
    stack_mb: int = 256

    def __post_init__(self) -> None:
        # A nonsense limit used to come back as a verdict (0 s: every run a timeout; memory 0: no limit at
        # all) or as a sandbox error; it is the caller's mistake, so it is refused here, naming the field.
        for name in ("cpu_seconds", "wall_seconds", "compile_seconds"):
            value = getattr(self, name)
            if value is None and name == "wall_seconds":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"Limits.{name} must be a number of seconds, got {type(value).__name__}")
            if not 0 < value <= MAX_SECONDS:  # NaN fails too
                raise ValueError(f"Limits.{name} must be > 0 and at most {MAX_SECONDS} s, got {value!r}")
            if not isinstance(value, int | float):
                object.__setattr__(self, name, float(value))  # numpy and the like: plain JSON numbers
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"Limits.{name} must be an int, got {type(value).__name__}")
            if not low <= value <= high:
                raise ValueError(f"Limits.{name} must be between {low} and {high}, got {value!r}")
            object.__setattr__(self, name, int(value))

    @property
    def wall(self) -> float:
        return self.wall_seconds if self.wall_seconds is not None else _backstop(self.cpu_seconds)

    @property
    def build_wall(self) -> float:
        return _backstop(self.compile_seconds)

    def to_dict(self) -> dict[str, Any]:
        # Every field is a scalar: no need for dataclasses.asdict's deep copy (part of every request).
        fields = {name: getattr(self, name) for name in _LIMIT_FIELDS}
        return fields | {"wall_seconds": self.wall, "build_wall_seconds": self.build_wall}


@dataclass(frozen=True)
class Judge:
    """Trusted tests for a Python program, run in a separate, differently-privileged process.

    The judge executes `setup` (trusted helper code, e.g. a benchmark prompt), binds `entry_point` (and the
    name `candidate`) to a proxy of the function the program defines, then runs each snippet of `tests` in
    order in one namespace; a snippet passes when it raises nothing. Values cross between the two processes
    only as plain data (numbers, strings, bytes, containers of them, and by value `Fraction`, `Decimal`,
    `range` and namedtuples: rpc.py); anything else stays in the program's process behind a handle whose
    comparisons with plain values are always false, so an object whose `__eq__` always says yes cannot
    pass. `stop_on_failure` stops at the first failing snippet (the rest are reported as not run).

    The caller's mistakes are refused here, naming the field: no tests at all (nothing could pass, and
    every program came back `failed`), an `entry_point` that is not a Python name, test or setup code that
    does not compile (every program, the canonical solution too, failed on it)."""

    tests: tuple[str, ...]
    entry_point: str
    setup: str = ""
    stop_on_failure: bool = False

    def __post_init__(self) -> None:
        # A bare string would be taken for a sequence of one-character tests, each failing or passing.
        if not isinstance(self.tests, tuple | list) or not all(isinstance(t, str) for t in self.tests):
            raise TypeError(
                f"Judge.tests must be a tuple of str (one test snippet each), got {self.tests!r:.80}"
            )
        # A list is kept as a tuple: the Judge stays hashable, and the caller's list can change under it.
        object.__setattr__(self, "tests", tuple(self.tests))
        if not self.tests:
            raise ValueError("Judge.tests is empty: a judged run needs at least one test snippet")
        for name in ("entry_point", "setup"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Judge.{name} must be a str, got {type(getattr(self, name)).__name__}")
        if not self.entry_point.isidentifier() or keyword.iskeyword(self.entry_point):
            raise ValueError(
                f"Judge.entry_point must be the name of the program's function, got {self.entry_point!r:.80}"
            )
        _check_compiles(self.setup, "Judge.setup")
        for i, test in enumerate(self.tests):
            _check_compiles(test, f"Judge.tests[{i}]")
        # Sent to the worker as JSON: numpy's bool, say, passed every check and then could not be sent.
        if not isinstance(self.stop_on_failure, bool):
            raise TypeError(
                f"Judge.stop_on_failure must be a bool, got {type(self.stop_on_failure).__name__}"
            )


@functools.lru_cache(maxsize=4096)
def _compile_error(source: str) -> str:
    """Why `source` does not compile as the judge compiles it, or "" (cached: the same tests come with
    every sample of a problem)."""
    try:
        compile(source, "<test>", "exec", dont_inherit=True)
    except SyntaxError as e:
        return f"{e.msg} (line {e.lineno})"
    except ValueError as e:  # null bytes (3.11)
        return str(e)
    return ""


def _check_compiles(source: str, name: str) -> None:
    if error := _compile_error(source):
        raise ValueError(f"{name} is not valid Python: {error}")


@dataclass(frozen=True)
class TestOutcome:
    passed: bool
    error: str = ""  # "AssertionError: ..." or similar, capped

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "error": self.error}


@dataclass(frozen=True)
class ExecutionResult:
    status: Status
    exit_code: int | None = None  # None when ended by a signal
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False  # stdout or stderr was cut at Limits.output_bytes
    cpu_seconds: float = 0.0  # all the run's processes where extra["run_cpu_limit"] is set; never the build
    wall_seconds: float = 0.0  # from the build's end, for compiled languages
    # Largest resident set of the program or a child it waited for; 0 where not known (a built program
    # killed by a limit: its keeper, which measures it, is killed too) or where no program ran (a build
    # that failed: as cpu_seconds, never the compiler's).
    peak_memory_mb: float = 0.0
    isolation: Isolation = Isolation.NAMESPACES
    phase: str = "run"  # "compile": a compiled language failed to build, or Python did not parse (not run)
    tests: tuple[TestOutcome, ...] = ()  # judged runs: one outcome per test snippet, in order
    tests_completed: bool | None = None  # judged runs: the judge reached the end of the tests
    message: str = ""  # one line on why: the sandbox error, the limit hit, the compile error summary
    # What the worker could apply: "syscall_filter" (bool), "memory_cgroup" (bool: the run's memory bounded
    # as a whole), "run_cpu_limit" ("cgroup" or "pid_namespace": what counts the run's CPU time as a whole;
    # None: per process only).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True only for a clean exit that, when judged, passed every test: the one verdict."""
        if self.status is not Status.OK:
            return False
        if self.tests_completed is None:
            return True
        return bool(self.tests_completed and self.tests and all(t.passed for t in self.tests))

    @property
    def tests_passed(self) -> int:
        return sum(t.passed for t in self.tests)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        d["isolation"] = self.isolation.value
        d["tests"] = [t.to_dict() for t in self.tests]
        d["passed"] = self.passed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExecutionResult:
        kw = {k: v for k, v in d.items() if k in _RESULT_FIELDS}
        kw["status"] = Status(kw["status"])
        kw["isolation"] = Isolation(kw.get("isolation", "namespaces"))
        kw["tests"] = tuple(TestOutcome(**t) for t in kw.get("tests", ()))
        return cls(**kw)

    @classmethod
    def sandbox_error(cls, message: str, isolation: Isolation = Isolation.NAMESPACES) -> ExecutionResult:
        return cls(status=Status.SANDBOX_ERROR, message=message[:500], isolation=isolation)


_LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(Limits))
_INT_RANGES = {  # inclusive
    "memory_mb": (1, MAX_MB),
    "stack_mb": (1, MAX_MB),
    "processes": (1, 1 << 22),  # the kernel's largest pid_max
    "file_size_mb": (0, MAX_MB),
    "disk_mb": (1, MAX_MB),  # a tmpfs of size 0 would have no limit at all
    "open_files": (1, 1 << 20),  # the kernel's default fs.nr_open
    # A run's result comes back in one frame of at most 4 GiB (a 4-byte length), its output as JSON text,
    # up to 6 characters a byte ("\u001b"): past 512 MiB a flood failed inside the worker, a sandbox_error.
    "output_bytes": (0, 1 << 29),
}
_RESULT_FIELDS = frozenset(f.name for f in dataclasses.fields(ExecutionResult))
