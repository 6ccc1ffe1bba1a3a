"""Session 34's review of built programs, node and the `sandbox run` command, as a user grading C, C++ and
JavaScript at scale: a build that ran out of time, a build that failed, a static array past the memory
limit, dataset language names, and the command's output and file names. One property per test, on the
real sandbox."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from codefoundry.sandbox import Limits, Status, execute

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None, reason="needs gcc")


def brief(r) -> str:
    return f"{r.status} {r.phase} {r.message!r} exit={r.exit_code} sig={r.signal} cpu={r.cpu_seconds} " \
           f"mem={r.peak_memory_mb} {r.stderr[-300:]!r}"  # fmt: skip


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "codefoundry.cli", "sandbox", "run", *args]
    return subprocess.run(cmd, capture_output=True, timeout=120, env=env)


# -- builds ----------------------------------------------------------------------------------------------------
@needs_gcc
def test_a_build_past_its_cpu_limit_is_a_timeout_in_phase_compile():
    # A compiler bomb that needs CPU, not memory: ~10**10 constexpr steps, far below g++'s own limits on
    # loop counts and operations taking effect within a second. It came back `failed`, "compile error",
    # while a build past its wall-clock backstop was already a timeout. (`#include "/dev/zero"` ends by
    # memory or by CPU, whichever comes first on the machine.)
    bomb = (
        "constexpr long f() {\n  long s = 0;\n  for (long i = 0; i < 100000; ++i)\n"
        "    for (long j = 0; j < 100000; ++j) s += i ^ j;\n  return s;\n}\n"
        "constexpr long x = f();\nint main() { return (int)x; }\n"
    )
    r = execute(bomb, language="cpp", limits=Limits(compile_seconds=1))
    assert (r.status, r.phase) == (Status.TIMEOUT, "compile"), brief(r)
    # (on a loaded machine the wall-clock backstop can end it first: a timeout in phase compile either way)
    assert "limit" in r.message or "backstop" in r.message or "wall" in r.message, brief(r)


@needs_gcc
def test_a_build_past_its_wall_backstop_is_in_phase_compile(tmp_path):
    # At the process level the host's files are visible, and a build can block on a FIFO: the build's
    # backstop ends it. The program never ran, yet the result said phase "run".
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code = (
        "import sys\n"
        "from codefoundry.sandbox import execute, Limits\n"
        "r = execute(sys.stdin.read(), language='c', limits=Limits(compile_seconds=0.5))\n"
        "print(r.isolation.value, r.status.value, r.phase)\n"
    )
    env = dict(os.environ, CODEFOUNDRY_SANDBOX_ISOLATION="process")
    out = subprocess.run([sys.executable, "-c", code], input=f'#include "{fifo}"\nint main(void) {{}}\n',
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.stdout.split() == ["process", "timeout", "compile"], out.stdout + out.stderr


@needs_gcc
def test_a_failed_build_reports_neither_the_compilers_memory_nor_its_cpu_time():
    # cpu_seconds never includes the build and peak_memory_mb is the program's own (result.py, README):
    # a compile error came back with cc1's CPU time and resident set (~20 MB; 190 MB for bits/stdc++.h).
    r = execute("int main(void) { return undeclared; }\n", language="c")
    assert (r.status, r.phase) == (Status.FAILED, "compile"), brief(r)
    assert (r.cpu_seconds, r.peak_memory_mb) == (0.0, 0.0), brief(r)


@needs_gcc
@pytest.mark.parametrize("language", ["c", "cpp"])
def test_a_static_array_past_the_memory_limit_is_memory_exceeded(language):
    # 1.2 GB of zeroed globals under 256 MB: the kernel cannot map them at exec and the program dies of
    # SIGSEGV before its first instruction, having used nothing; judges call this a memory limit, and it
    # came back `killed` (a crash).
    program = "static int a[300000000];\nint main(int argc, char **argv) { a[argc] = 1; return a[2]; }\n"
    r = execute(program, language=language, limits=Limits(memory_mb=256))
    assert r.status is Status.MEMORY_EXCEEDED, brief(r)


@needs_gcc
def test_a_static_array_within_the_memory_limit_still_crashes_as_a_crash():
    program = "static int a[1000];\nint main(void) { volatile int *p = 0; *p = a[1]; return 0; }\n"
    r = execute(program, language="c", limits=Limits(memory_mb=256))
    assert (r.status, r.signal) == (Status.KILLED, 11), brief(r)


# -- languages -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "program"), [
    pytest.param("nodejs", "console.log('ok')", marks=pytest.mark.skipif(not shutil.which("node"), reason="node")),
    pytest.param("CXX", '#include <cstdio>\nint main() { std::puts("ok"); }', marks=needs_gcc),
])  # fmt: skip
def test_language_names_fence_tags_use_are_accepted(name, program):
    # tasks/prompts.py reads ```nodejs and ```cxx blocks as JavaScript and C++; the sandbox refused them.
    r = execute(program, language=name)
    assert (r.status, r.stdout) == (Status.OK, "ok\n"), brief(r)


# -- the command ----------------------------------------------------------------------------------------------
def test_the_command_writes_non_ascii_output_whatever_its_stdout_encoding(tmp_path):
    # The program's bytes, as it wrote them: with a stdout encoding that is not UTF-8 (PYTHONIOENCODING,
    # a latin-1 locale), writing them as text ended in a UnicodeEncodeError traceback.
    path = tmp_path / "u.py"
    path.write_text("import sys\nprint('h\\u00e9llo')\nsys.stderr.write('\\u20ac\\n')\n")
    out = cli(str(path), env=dict(os.environ, PYTHONIOENCODING="ascii"))
    assert (out.returncode, out.stdout) == (0, "héllo\n".encode()), out.stderr
    # (at a weaker isolation level the one-time warning comes first)
    assert "€\n[ok]".encode() in out.stderr, out.stderr


@needs_gcc
def test_the_command_runs_a_capital_c_file_as_cpp(tmp_path):
    # gcc, and codefoundry.data.langid, take `.C` for C++; it was run as C and failed to compile.
    path = tmp_path / "main.C"
    path.write_text('#include <iostream>\nint main() { std::cout << "cpp\\n"; }\n')
    out = cli(str(path))
    assert (out.returncode, out.stdout) == (0, b"cpp\n"), out.stderr


def test_the_command_refuses_an_empty_language(tmp_path):
    # `--language ""` was taken as no --language at all, and the file's suffix chose.
    path = tmp_path / "ok.py"
    path.write_text("print('hi')\n")
    out = cli(str(path), "--language", "")
    assert (out.returncode, out.stdout) == (2, b""), out
    assert out.stderr.decode() == (
        "codefoundry sandbox: --language: unknown language ''; known: c, cpp, javascript, python\n"
    )


@needs_gcc
def test_a_build_reads_none_of_the_programs_stdin_at_the_process_level():
    # The compiler inherited the run's stdin: at the process level (host files visible) a program's
    # `#include "/dev/stdin"` compiled its test input into the binary. It reads /dev/null now.
    code = (
        "from codefoundry.sandbox import execute\n"
        "r = execute('#include \"/dev/stdin\"\\nint main(void) { return X; }\\n', language='c',"
        " stdin='#define X 0\\n')\n"
        "print(r.isolation.value, r.status.value, r.phase)\n"
    )
    env = dict(os.environ, CODEFOUNDRY_SANDBOX_ISOLATION="process")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["process", "failed", "compile"], out.stdout + out.stderr
