"""A plain Python run ends as `python3 main.py` does: `exit()` and `quit()` exist, `sys.exit("...")` prints
its message, non-daemon threads are waited for, `atexit` handlers run, stderr is line-buffered. Each program
runs in the sandbox and in a real `python3 main.py`, and the two must agree on stdout, stderr and how the
process ended. Last, the verdict's out-of-memory reading: only a run that ended abnormally, reported where the
runtime reports an uncaught error, is `memory_exceeded`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from codefoundry.sandbox import Judge, Limits, Status, execute
from codefoundry.sandbox.verdict import OUT_OF_MEMORY

LIMITS = Limits(cpu_seconds=2, memory_mb=256)


def python3(program: str, tmp_path) -> tuple[int, str, str]:
    """(exit status, negative for a signal; stdout; stderr) of `python3 main.py`, the reference."""
    (tmp_path / "main.py").write_text(program)
    done = subprocess.run(
        [sys.executable, "-I", "main.py"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    return done.returncode, done.stdout, done.stderr


def sandboxed(program: str) -> tuple[int, str, str]:
    r = execute(program, limits=LIMITS)
    assert r.status is not Status.SANDBOX_ERROR, r.message
    return (-r.signal if r.signal is not None else r.exit_code), r.stdout, r.stderr


@pytest.mark.parametrize("program", ["print('answer'); exit(0)", "print('x')\nquit(3)\n", "exit('bye')"])
def test_exit_and_quit_are_builtins(program, tmp_path):
    assert sandboxed(program) == python3(program, tmp_path)


@pytest.mark.parametrize("code", ["'usage: bad input'", "3.5", "['a']", "2 ** 40", "2 ** 70", "-1", "None"])
def test_sys_exit_code_and_message(code, tmp_path):
    """A code that is not an int is printed on stderr (exit 1); an int is taken as C's exit() takes it."""
    program = f"import sys\nprint('partial')\nsys.exit({code})\n"
    assert sandboxed(program) == python3(program, tmp_path)


def test_non_daemon_threads_are_waited_for(tmp_path):
    """The competitive-programming idiom: a bigger stack, and the whole program on a thread."""
    program = (
        "import threading, time\n"
        "def main():\n"
        "    time.sleep(0.1)\n"
        "    print('from thread')\n"
        "threading.stack_size(1 << 25)\n"
        "threading.Thread(target=main).start()\n"
        "print('main done')\n"
    )
    assert sandboxed(program) == python3(program, tmp_path) == (0, "main done\nfrom thread\n", "")


def test_atexit_handlers_run_after_threads(tmp_path):
    program = (
        "import atexit, threading, time\n"
        "atexit.register(print, 'first registered, last run')\n"
        "atexit.register(print, 'bye')\n"
        "threading.Thread(target=lambda: (time.sleep(0.05), print('thread'))).start()\n"
        "raise SystemExit('leaving')\n"
    )
    expected = (1, "thread\nbye\nfirst registered, last run\n", "leaving\n")
    assert sandboxed(program) == python3(program, tmp_path) == expected


def test_stderr_is_line_buffered(tmp_path):
    """What was written to stderr before a kill is kept, as Python's own stderr has been since 3.9."""
    program = "import os, sys\nsys.stderr.write('before the kill\\n')\nos.kill(os.getpid(), 9)\n"
    assert sandboxed(program) == python3(program, tmp_path) == (-9, "", "before the kill\n")


HANDLED_MEMORY_ERROR = (
    "import sys\n"
    "try:\n"
    "    bytearray(1 << 40)\n"
    "except MemoryError:\n"
    "    print('MemoryError caught, using fallback', file=sys.stderr)\n"
    "def f():\n"
    "    return 1\n"
    "print('ok')\n"
)


def test_a_handled_memory_error_is_not_memory_exceeded():
    r = execute(HANDLED_MEMORY_ERROR, limits=LIMITS)
    assert (r.status, r.stdout) == (Status.OK, "ok\n"), (r.status, r.message, r.stderr)
    judged = execute(
        HANDLED_MEMORY_ERROR, limits=LIMITS, judge=Judge(tests=("assert f() == 1",), entry_point="f")
    )
    assert judged.status is Status.OK, (judged.status, judged.message, judged.stderr)
    # a failing exit is out of memory only where the runtime reported it, not for any mention
    failing = execute("import sys\nprint('no MemoryError here', file=sys.stderr)\nsys.exit(2)", limits=LIMITS)
    assert failing.status is Status.FAILED, (failing.status, failing.message)
    uncaught = execute("x = bytearray(1 << 40)", limits=LIMITS)
    assert uncaught.status is Status.MEMORY_EXCEEDED, (uncaught.status, uncaught.stderr)


# Each runtime's report of running out of memory, as Python, libstdc++, libc++ and node print it (real C++
# and node runs take seconds), and text a program merely writes.
OUT_OF_MEMORY_REPORTS = [
    'Traceback (most recent call last):\n  File "main.py", line 1, in <module>\nMemoryError\n',
    "numpy.core._exceptions._ArrayMemoryError: Unable to allocate 8.00 TiB for an array\n",
    "terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n",
    "libc++abi: terminating due to uncaught exception of type std::bad_alloc: std::bad_alloc\n",
    "<--- JS stacktrace --->\n\nFATAL ERROR: Reached heap limit Allocation failed - "
    "JavaScript heap out of memory\n",
]
MENTIONS = [
    "MemoryError caught, using fallback\n",
    "no MemoryError here\n",
    "std::bad_alloc caught, smaller table\n",
    "warning: heap out of memory soon\n",
]


@pytest.mark.parametrize("stderr", OUT_OF_MEMORY_REPORTS)
def test_out_of_memory_reports_are_read(stderr):
    assert OUT_OF_MEMORY.search(stderr)


@pytest.mark.parametrize("stderr", MENTIONS)
def test_mentions_of_memory_errors_are_not_reports(stderr):
    assert not OUT_OF_MEMORY.search(stderr)
