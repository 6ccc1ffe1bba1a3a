"""Builds under the program's own limits, compile errors under the output limit, node under its memory
limit, files the work directory cannot hold, and workers that cannot start: each came back as a wrong
verdict, a `sandbox_error` or a leak (one property per test, on the real sandbox)."""

from __future__ import annotations

import shutil

import pytest
from redteam_kit import _open_fd_count, _zombie_children

from codefoundry.sandbox import Limits, Program, Status, execute, execute_many, shutdown, worker
from codefoundry.sandbox.checks import PAGE

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None, reason="needs gcc")
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs node")

# Valid C and C++: reports the limits it runs under and whether it may write a byte.
LIMITS_PROBE = r"""
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
int main(void) {
    struct rlimit size, files;
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &size);
    getrlimit(RLIMIT_NOFILE, &files);
    FILE *out = fopen("out.txt", "w");
    fputs("abc", out);
    int failed = fflush(out);
    printf("%llu %llu %s\n", (unsigned long long)size.rlim_max, (unsigned long long)files.rlim_max,
           failed ? strerror(errno) : "written");
    return 0;
}
"""


@needs_gcc
@pytest.mark.parametrize("language", ["c", "cpp"])
def test_a_build_is_not_held_to_the_programs_file_limits(language):
    # At file_size_mb=0 every build failed ("File too large" on the assembler's temporary file); at
    # open_files=5 the build could not even make its pipe. The program itself is still held to both.
    limits = Limits(cpu_seconds=5, file_size_mb=0, open_files=5)
    r = execute(LIMITS_PROBE, language=language, limits=limits)
    assert r.status is Status.OK and r.phase == "run", (r.status, r.phase, r.stderr[-500:])
    assert r.stdout == "0 5 File too large\n"


@needs_gcc
def test_a_compile_error_is_a_compile_failure_whatever_the_output_limit():
    # The build's messages used to count as the program's output, written before the note that the build
    # failed: a compile error under a small output limit came back as `output_limit`.
    program = "int main(void) {\n" + "".join(f"    return undefined_{i};\n" for i in range(40)) + "}\n"
    for cap in (200, 0):
        r = execute(program, language="c", limits=Limits(cpu_seconds=5, output_bytes=cap))
        assert (r.status, r.phase, r.message) == (Status.FAILED, "compile", "compile error"), (cap, r)
        assert len(r.stderr.encode()) <= cap and r.stdout == ""
    assert "undefined_0" in execute(program, language="c", limits=Limits(cpu_seconds=5)).stderr


@needs_node
def test_node_runs_within_its_memory_limit_and_stops_at_it():
    # node holds ~728 MB of address space before any script runs: under RLIMIT_AS = memory_mb it could not
    # start at 512 MB, and at 1024 MB a 381 MB Float64Array failed. Its heap is now held to memory_mb.
    small = execute("console.log('up')", language="javascript", limits=Limits(cpu_seconds=5, memory_mb=512))
    assert small.status is Status.OK and small.stdout == "up\n", (small.status, small.stderr[-300:])
    big = "const a = new Float64Array(50e6); a.fill(1); console.log(a.length)"
    r = execute(big, language="javascript", limits=Limits(cpu_seconds=5, memory_mb=1024))
    assert r.status is Status.OK and r.stdout == "50000000\n", (r.status, r.stderr[-300:])
    grow = "const a = []; while (true) a.push(new Array(1e5).fill(1.5));"
    r = execute(grow, language="javascript", limits=Limits(cpu_seconds=5, memory_mb=128))
    assert r.status is Status.MEMORY_EXCEEDED, (r.status, r.message, r.stderr[-300:])


@needs_node
def test_node_out_of_memory_outside_its_heap_is_memory_exceeded():
    # An ArrayBuffer past the address space is a RangeError (exit 1), and a heap too small to start V8 a
    # "Fatal javascript OOM" (SIGTRAP): both ran out of memory.
    buffer = "const a = new Float64Array(100e6); console.log(a.length)"
    r = execute(buffer, language="javascript", limits=Limits(cpu_seconds=5, memory_mb=256))
    assert r.status is Status.MEMORY_EXCEEDED, (r.status, r.message, r.stderr[-300:])
    r = execute("console.log(1)", language="javascript", limits=Limits(cpu_seconds=5, memory_mb=1))
    assert r.status is Status.MEMORY_EXCEEDED, (r.status, r.message, r.stderr[-300:])


def test_a_file_inside_a_directory_named_like_the_programs_own_file_is_refused():
    # It made main.py a directory: the run failed with exit 70 (IsADirectoryError), and for C `gcc -o main`.
    with pytest.raises(ValueError) as e:
        execute("print(1)", files={"main.py/data.txt": "x"})
    assert str(e.value) == "files['main.py/data.txt']: 'main.py' is the name of the program's own file, not a directory"  # fmt: skip
    with pytest.raises(ValueError) as e:
        execute_many([Program("int main(void) { return 0; }", language="c", files={"main/x": "y"})])
    assert str(e.value) == "programs[0].files['main/x']: 'main' is the name of the program's own file, not a directory"  # fmt: skip


def test_files_are_counted_in_the_whole_pages_the_work_directory_gives_them():
    # The tmpfs gives each file whole pages: 400 one-byte files passed the byte count at disk_mb=1 and then
    # failed inside the worker (a sandbox_error, "No space left on device", and a worker restarted).
    limits, pages = Limits(cpu_seconds=2, disk_mb=1), (1 << 20) // PAGE
    program = "import os\nprint(len(os.listdir('.')))"  # itself one page
    with pytest.raises(ValueError) as e:
        execute(program, files={f"f{i}": "x" for i in range(pages)}, limits=limits)
    assert str(e.value) == (
        f"program and files: {len(program) + pages} bytes in all, stored as {pages + 1} pages of {PAGE} bytes "
        "(a file takes whole pages), more than the run's work directory holds (Limits.disk_mb=1)"
    )
    r = execute(program, files={f"f{i}": "x" for i in range(pages - 1)}, limits=limits)  # exactly 1 MB
    assert r.status is Status.OK and r.stdout == f"{pages}\n", (r.status, r.message, r.stderr[-300:])


def test_workers_that_cannot_start_leak_nothing_and_every_program_gets_a_result(monkeypatch):
    # A worker whose start failed kept its two pipes and its process (6 -> 12 fds over three calls), and
    # execute_many raised the raw WorkerDied from warming its pool instead of returning results.
    shutdown()  # no warm worker left to serve these runs
    monkeypatch.setattr(worker, "ZYGOTE", worker.ZYGOTE.with_name("no-such-zygote.py"))
    fds = _open_fd_count()
    for _ in range(3):
        r = execute("print(1)")
        assert r.status is Status.SANDBOX_ERROR and "could not start" in r.message, r
    assert _open_fd_count() == fds and _zombie_children() == []
    results = execute_many(["print(1)", "print(2)"], workers=2, progress=False)
    assert [r.status for r in results] == [Status.SANDBOX_ERROR] * 2
    assert _open_fd_count() == fds and _zombie_children() == []
