"""Session 32's review: each test is one thing a user saw go wrong, run against the real sandbox.

Judged runs of correct solutions that must pass, arguments the sandbox cannot run as given (one line naming
them, before anything runs), a process forked after its parent ran programs, and compiled programs' signals.
"""

from __future__ import annotations

import multiprocessing
import shutil

import pytest

from codefoundry.sandbox import Judge, Limits, Program, Status, execute, execute_many

FAST = Limits(cpu_seconds=5, memory_mb=512)


# -- judged runs of correct solutions ------------------------------------------------------------------------
def test_a_judged_solution_returning_an_int_of_thousands_of_digits_passes():
    # Ints crossed the channel as decimal text, which CPython refuses past 4300 digits: the solution's
    # `str(n)` raised ValueError, and the correct answer failed.
    program = "def fact(n):\n    out = 1\n    for k in range(2, n + 1):\n        out *= k\n    return out\n"
    judge = Judge(tests=("import math\nassert fact(3000) == math.factorial(3000)",), entry_point="fact")
    r = execute(program, judge=judge, limits=FAST)
    assert r.passed, (r.status, r.tests, r.message)


def test_a_judged_test_may_hand_the_solution_an_int_of_thousands_of_digits():
    judge = Judge(tests=("n = 7 ** 6000\nassert succ(n) == n + 1",), entry_point="succ")
    program = "def succ(n):\n    return n + 1\n"
    r = execute(program, judge=judge, limits=FAST)
    assert r.passed, (r.status, r.tests, r.message)


def test_a_judged_solution_returning_a_list_of_a_million_and_a_half_ints_passes():
    # A collection of more than 1,000,000 items was taken for a malformed message ("program stopped
    # answering") although its frame was well within the channel's 16 MB.
    judge = Judge(tests=("assert upto(1_500_000) == list(range(1_500_000))",), entry_point="upto")
    r = execute("def upto(n):\n    return list(range(n))\n", judge=judge, limits=FAST)
    assert r.passed, (r.status, r.tests, r.message)


# -- a process forked after its parent ran programs --------------------------------------------------------------
def _echo(i: int) -> tuple[int, str, str]:
    r = execute(f"import time\ntime.sleep(0.02)\nprint({i})", limits=FAST)
    return i, r.status.value, r.stdout


def test_a_child_forked_after_runs_never_shares_its_parents_workers():
    # A forked child inherited the pool: the parent's warm workers, pipes and all. Runs sent to one worker
    # by both processes came back to whichever read first: program 9 got program 0's output, others a
    # sandbox_error.
    assert execute("print('warm')", limits=FAST).stdout == "warm\n"  # the parent holds a warm worker
    with multiprocessing.get_context("fork").Pool(3) as pool:
        got = pool.map(_echo, range(12))
    assert got == [(i, "ok", f"{i}\n") for i in range(12)]
    assert execute("print('still mine')", limits=FAST).stdout == "still mine\n"


# -- arguments the sandbox cannot run as given -------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, message",
    [
        ("\ud800.txt", r"files\['\\ud800.txt'\]: '\\ud800' at index 0 cannot be a file name"),
        ("a" * 256, r"files\['a{40}'\.\.\.\]: a name of 256 bytes in it, over the 255 a file name may have"),
        (
            "/".join(["d" * 200] * 20) + "/f",
            r"files\['d{40}'\.\.\.\]: 4021 bytes, over the 3840 a file's path may have",
        ),
    ],
    ids=["lone-surrogate", "long-name", "long-path"],
)
def test_a_file_name_the_work_directory_cannot_hold_is_a_value_error(name, message):
    # Each was a sandbox_error (UnicodeEncodeError, ENAMETOOLONG inside the worker), and a worker restarted.
    with pytest.raises(ValueError, match=message):
        execute("print(1)", files={name: "x"}, limits=FAST)
    with pytest.raises(ValueError, match=r"programs\[1\]\." + message):
        execute_many(["print(1)", Program("print(2)", files={name: "x"})], progress=False)


def test_a_file_name_holding_an_undecodable_byte_arrives_as_that_byte():
    program = "import os\nprint(os.listdir(b'd'))"
    r = execute(program, files={"d/\udcff.txt": b"x"}, limits=FAST)
    assert (r.status, r.stdout) == (Status.OK, "[b'\\xff.txt']\n"), (r.status, r.message)


def test_a_judge_whose_stop_on_failure_is_not_a_bool_is_refused_before_any_run():
    # numpy's bool passed every check, then could not be sent: a TypeError naming nothing, mid-batch, after
    # the programs before it had run and their results were lost.
    class NotBool:
        def __bool__(self) -> bool:
            return True

    with pytest.raises(TypeError, match="Judge.stop_on_failure must be a bool, got NotBool"):
        Judge(tests=("assert f(1) == 1",), entry_point="f", stop_on_failure=NotBool())


# -- compiled programs start as a shell would start them -------------------------------------------------------
HAS_GCC = shutil.which("gcc") is not None
SIGNALS = r"""
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(void) {
    static char block[1 << 16];
    memset(block, 'a', sizeof block);
    %s
    puts("survived");
    return 0;
}
"""


@pytest.mark.skipif(not HAS_GCC, reason="needs gcc")
@pytest.mark.parametrize(
    "body, signal",
    [
        # Writing past RLIMIT_FSIZE, errors unchecked: ./main dies of SIGXFSZ; it used to exit 0, "ok".
        (
            'FILE *f = fopen("big", "w"); for (int i = 0; i < 64; i++) fwrite(block, 1, sizeof block, f);'
            " fclose(f);",
            25,
        ),
        # Writing to a pipe no one reads: ./main dies of SIGPIPE.
        ("int p[2]; pipe(p); close(p[0]); write(p[1], block, 1);", 13),
    ],
    ids=["SIGXFSZ", "SIGPIPE"],
)
def test_a_built_program_starts_with_the_default_signal_dispositions(body, signal):
    # The program's process is a Python interpreter, which ignores SIGPIPE and SIGXFSZ; ignored signals stay
    # ignored across exec, so the program got EFBIG and EPIPE where `./main` is killed.
    r = execute(SIGNALS % body, language="c", limits=Limits(cpu_seconds=5, file_size_mb=1))
    assert (r.status, r.signal, r.stdout) == (Status.KILLED, signal, ""), (r.status, r.stdout, r.message)
