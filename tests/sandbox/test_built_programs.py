"""A C/C++ program's report is its own, not its compiler's: the process that reaps the compiler cannot
report the program's memory (wait4's largest resident set covers the children it reaped), so a keeper
does (sandbox/build.py). Each test runs the real sandbox."""

from __future__ import annotations

import shutil

import pytest

from codefoundry.sandbox import Limits, Status, execute

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")

# bits/stdc++.h makes cc1plus hold ~190 MB: far more than the programs below use.
HEAVY_INCLUDE = "#include <bits/stdc++.h>\n"


def _cpp(body: str) -> str:
    return HEAVY_INCLUDE + "int main() {\n" + body + "\n}\n"


def test_a_built_programs_peak_memory_is_its_own():
    small = execute(_cpp('std::cout << "hi\\n";'), language="cpp", limits=Limits(cpu_seconds=5))
    assert small.status is Status.OK and small.stdout == "hi\n"
    assert small.peak_memory_mb < 40, small.peak_memory_mb  # was ~193: the compiler's
    # 96 MB touched: reported as about that, not as the compiler's.
    touch = "std::vector<char> v(96 << 20, 1); long s = 0; for (char c : v) s += c; std::cout << s << '\\n';"
    big = execute(_cpp(touch), language="cpp", limits=Limits(cpu_seconds=5, memory_mb=512))
    assert big.status is Status.OK and big.stdout == f"{96 << 20}\n", (big.status, big.stderr[-300:])
    assert 96 <= big.peak_memory_mb < 96 + 40, big.peak_memory_mb


def test_a_crash_under_a_small_memory_limit_is_a_crash():
    # The verdict reads a crash near the memory limit as running out of memory; with the compiler's 190 MB
    # taken for the program's, a null write under a 128 MB limit was `memory_exceeded`.
    r = execute(_cpp("volatile int *p = nullptr; *p = 1;"), language="cpp", limits=Limits(memory_mb=128))
    assert (r.status, r.signal) == (Status.KILLED, 11), (r.status, r.message, r.peak_memory_mb)


@pytest.mark.parametrize(
    ("body", "status", "exit_code", "signal"),
    [
        ("return 0;", Status.OK, 0, None),
        ("return 3;", Status.FAILED, 3, None),
        ("std::exit(255);", Status.FAILED, 255, None),
        ("std::abort();", Status.KILLED, None, 6),
        ("std::raise(SIGTERM);", Status.KILLED, None, 15),
        ("std::signal(SIGTERM, SIG_IGN); std::raise(SIGKILL);", Status.KILLED, None, 9),
        ("std::signal(SIGXCPU, SIG_IGN); for (volatile long i = 0;; ++i) {}", Status.TIMEOUT, None, 9),
        ("for (volatile long i = 0;; ++i) {}", Status.TIMEOUT, None, 24),
    ],
)
def test_a_built_program_ends_as_it_ended(body, status, exit_code, signal):
    r = execute(_cpp(body), language="cpp", limits=Limits(cpu_seconds=1, wall_seconds=10))
    assert (r.status, r.exit_code) == (status, exit_code), (r.status, r.message, r.stderr[-300:])
    if status is not Status.TIMEOUT:  # the CPU watch may end a spinning run before the kernel does
        assert r.signal == signal


def test_a_built_program_never_holds_the_trusted_notes():
    # fd 5 carries the build's and the keeper's notes to the zygote; the program must not be able to
    # write a forged line there (a peak of 1 KB, or a build that took all of the CPU time).
    probe = (
        'errno = 0; long n = write(5, "{\\"program_maxrss_kb\\": 1}\\n", 25); std::cout << n << " " << errno;'
    )
    r = execute("#include <unistd.h>\n#include <cerrno>\n" + _cpp(probe), language="cpp")
    assert r.status is Status.OK and r.stdout == "-1 9", (r.stdout, r.stderr[-300:])  # EBADF
    assert r.peak_memory_mb > 0.5


FORKS_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    int n = 0;
    while (n < 64) {
        pid_t pid = fork();
        if (pid < 0) break;
        if (pid == 0) { pause(); _exit(0); }
        n++;
    }
    printf("%d\n", n);
    fflush(stdout);
    _exit(0);
}
"""
FORKS_PY = """
import os, signal
n = 0
while n < 64:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        signal.pause()
        os._exit(0)
    n += 1
print(n, flush=True)
os._exit(0)
"""


def test_the_keeper_takes_no_process_from_the_program():
    # The keeper is one more process of the uid; the program's RLIMIT_NPROC counts it, so a built program
    # may start as many processes as a Python program under the same limit.
    limits = Limits(cpu_seconds=5, processes=6)
    c, py = execute(FORKS_C, language="c", limits=limits), execute(FORKS_PY, limits=limits)
    if c.isolation == "process":
        pytest.skip("the process level sets no per-run process limit after a build")
    assert c.status is Status.OK and py.status is Status.OK, (c.stderr[-300:], py.stderr[-300:])
    assert 0 < int(c.stdout) == int(py.stdout) < 6, (c.stdout, py.stdout)


# cc1plus holds ~320 MB building this (<regex> above all); the program itself needs a few MB.
REGEX_PROGRAM = (
    HEAVY_INCLUDE
    + r"""
int main() {
    std::regex pattern("a+b*");
    std::map<std::string, std::function<long(int)>> calls;
    calls["twice"] = [](int x) { return 2L * x; };
    std::cout << std::regex_match("aab", pattern) << " " << calls["twice"](21) << "\n";
}
"""
)

# Eight processes of 40 MB each, all alive at once: 320 MB in all, each under a 64 MB address space.
SPREAD_MEMORY_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    for (int i = 0; i < 8; i++) {
        if (fork() == 0) {
            size_t n = 40u << 20;
            volatile char *p = malloc(n);
            if (!p) _exit(3);
            for (size_t j = 0; j < n; j += 4096) p[j] = 1;
            sleep(2);
            _exit(p[n - 4096] == 1 ? 0 : 4);
        }
    }
    int status, bad = 0;
    while (wait(&status) > 0) bad += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    printf("%d\n", bad);
    return bad != 0;
}
"""


def test_a_build_is_not_held_to_the_programs_memory_limit():
    # The build ran under the run's memory cgroup (64 MB + room for the disk): a program using <regex>
    # could not be built under a 64 MB limit (Codeforces' older problems have one), `memory_exceeded` in
    # phase compile. While it builds, the cgroup allows cgroup.BUILD_MEMORY_MB.
    r = execute(REGEX_PROGRAM, language="cpp", limits=Limits(memory_mb=64, cpu_seconds=5, compile_seconds=30))
    assert (r.status, r.phase, r.stdout) == (Status.OK, "run", "1 42\n"), (
        r.status,
        r.message,
        r.stderr[-300:],
    )
    assert r.peak_memory_mb < 40, r.peak_memory_mb


def test_the_programs_memory_limit_holds_again_once_built():
    limits = Limits(memory_mb=64, processes=16, cpu_seconds=5, wall_seconds=20)
    r = execute(SPREAD_MEMORY_C, language="c", limits=limits)
    if not r.extra.get("memory_cgroup"):
        pytest.skip("no memory cgroup here: memory is bounded per process only")
    assert r.status is Status.MEMORY_EXCEEDED, (r.status, r.message, r.stdout)
    roomy = execute(
        SPREAD_MEMORY_C, language="c", limits=Limits(memory_mb=1024, processes=16, wall_seconds=20)
    )
    assert (roomy.status, roomy.stdout) == (Status.OK, "0\n"), (roomy.status, roomy.message)


def test_a_built_program_killed_by_a_limit_never_reports_the_compilers_memory():
    r = execute(_cpp("for (volatile long i = 0;; ++i) {}"), language="cpp", limits=Limits(cpu_seconds=1))
    assert r.status is Status.TIMEOUT
    assert r.peak_memory_mb < 40, r.peak_memory_mb  # its keeper's figure, or 0 when it was killed too
