"""Bad input to the sandbox's public calls and its command: one line naming the argument (or file) and what
is wrong, raised before anything runs; never a traceback from the CLI, a verdict, or a `sandbox_error`.
What a program does is still its own result (test_sandbox_basic.py)."""

import os
import resource
import subprocess
import sys

import pytest

from codefoundry.sandbox import Judge, Limits, Program, Status, execute, execute_many, jail
from codefoundry.sandbox.checks import _can_raise_rlimits
from codefoundry.sandbox.result import WORK_INODES

FAST = Limits(cpu_seconds=2, memory_mb=256)


def cli(*args: str, stdin: bytes = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "codefoundry.cli", "sandbox", "run", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=120, env=env)


def assert_usage_error(out: subprocess.CompletedProcess, message: str) -> None:
    assert (out.returncode, out.stdout) == (2, b""), out.stderr
    assert out.stderr.decode() == f"codefoundry sandbox: {message}\n"


@pytest.fixture
def ok_py(tmp_path):
    path = tmp_path / "ok.py"
    path.write_text("print('hi')\n")
    return str(path)


# -- the command line ----------------------------------------------------------------------------------------
def test_cli_unknown_language_is_a_usage_error(ok_py):
    out = cli(ok_py, "--language", "cobol")
    assert_usage_error(out, "--language: unknown language 'cobol'; known: c, cpp, javascript, python")


def test_cli_unknown_suffix_is_refused_not_run_as_python(tmp_path):
    path = tmp_path / "main.rs"
    path.write_text("print('not rust')\n")
    out = cli(str(path))
    assert_usage_error(
        out, f"{path}: no language is known by the suffix '.rs'; pass --language (c, cpp, javascript, python)"
    )


def test_cli_cc_suffix_is_cpp(tmp_path):
    path = tmp_path / "main.cc"
    path.write_text('#include <iostream>\nint main(){std::cout << "cc" << std::endl; return 0;}\n')
    out = cli(str(path))
    assert out.returncode == 0 and out.stdout == b"cc\n", out.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e9"])
def test_cli_timeout_out_of_range_is_a_usage_error(ok_py, value):
    out = cli(ok_py, "--timeout", value)
    assert_usage_error(out, f"--timeout must be CPU seconds > 0 and at most 604800, got {float(value):g}")


@pytest.mark.parametrize("value", ["0", "-5", "100000000000"])
def test_cli_memory_out_of_range_is_a_usage_error(ok_py, value):
    out = cli(ok_py, "--memory", value)
    assert_usage_error(out, f"--memory must be MB from 1 to 1073741824, got {value}")


def test_cli_stdin_other_than_dash_is_a_usage_error(ok_py):
    out = cli(ok_py, "--stdin", "input.txt")
    assert_usage_error(out, "--stdin takes only '-' (this command's standard input), got 'input.txt'")


def test_cli_non_utf8_python_file_names_line_and_byte(tmp_path):
    path = tmp_path / "latin.py"
    path.write_bytes(b"x = 1\nprint('\xe9')\n")
    out = cli(str(path), "--json")
    assert_usage_error(
        out,
        f"{path}: line 2: byte 0xe9 is not valid utf-8; Python source must be UTF-8 or declare its encoding",
    )


def test_cli_python_file_declaring_its_encoding_runs_as_python_would(tmp_path):
    path = tmp_path / "latin.py"
    path.write_bytes(b"# -*- coding: latin-1 -*-\nprint('\xe9')\n")
    out = cli(str(path))
    assert out.returncode == 0 and out.stdout.decode() == "\xe9\n", out.stderr


def test_cli_sandbox_error_has_its_own_exit_status(tmp_path):
    """Exit 1 says the program failed; a sandbox failure (here: at process level a program can kill its
    worker) is not that."""
    path = tmp_path / "kill_worker.py"
    path.write_text("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    out = cli(str(path), "--json", env=dict(os.environ, CODEFOUNDRY_SANDBOX_ISOLATION="process"))
    assert out.returncode == 3, out.stderr
    assert b'"status": "sandbox_error"' in out.stdout


# -- execute: the program, language, stdin, limits, judge ----------------------------------------------------
def test_program_bytes_is_a_type_error_naming_program():
    with pytest.raises(TypeError) as e:
        execute(b"print(1)")
    assert str(e.value) == "program must be a str, got bytes (decode it first)"


def test_program_none_is_a_type_error_not_a_sandbox_error():
    with pytest.raises(TypeError) as e:
        execute(None)
    assert str(e.value) == "program must be a str, got NoneType"


def test_program_larger_than_the_run_disk_is_refused_not_failed():
    with pytest.raises(ValueError) as e:
        execute("#" + "x" * (2 << 20), limits=Limits(cpu_seconds=2, disk_mb=1))
    assert str(e.value) == (
        "program: 2097153 bytes, more than the run's work directory holds (Limits.disk_mb=1)"
    )


def test_language_none_is_a_type_error():
    with pytest.raises(TypeError) as e:
        execute("print(1)", language=None)
    assert str(e.value) == "language must be a str, got NoneType"


def test_unknown_language_names_the_argument():
    with pytest.raises(ValueError) as e:
        execute("print(1)", language="cobol")
    assert str(e.value) == "language: unknown language 'cobol'; known: c, cpp, javascript, python"


def test_stdin_int_is_a_type_error_not_nul_bytes():
    with pytest.raises(TypeError) as e:
        execute("import sys; print(repr(sys.stdin.read()))", stdin=5)
    assert str(e.value) == "stdin must be a str, bytes or None, got int"


def test_limits_not_a_limits_is_a_type_error():
    with pytest.raises(TypeError) as e:
        execute("print(1)", limits={"cpu_seconds": 1})
    assert str(e.value) == "limits must be a Limits or None, got dict"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cpu_seconds", 0, "Limits.cpu_seconds must be > 0 and at most 604800 s, got 0"),
        ("cpu_seconds", float("nan"), "Limits.cpu_seconds must be > 0 and at most 604800 s, got nan"),
        ("wall_seconds", -1.0, "Limits.wall_seconds must be > 0 and at most 604800 s, got -1.0"),
        ("memory_mb", 0, "Limits.memory_mb must be between 1 and 1073741824, got 0"),
        ("memory_mb", 1 << 50, f"Limits.memory_mb must be between 1 and 1073741824, got {1 << 50}"),
        ("disk_mb", 0, "Limits.disk_mb must be between 1 and 1073741824, got 0"),
        ("output_bytes", -1, "Limits.output_bytes must be between 0 and 536870912, got -1"),
    ],
)
def test_limit_out_of_range_is_a_value_error(field, value, message):
    with pytest.raises(ValueError) as e:
        Limits(**{field: value})
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cpu_seconds", "10", "Limits.cpu_seconds must be a number of seconds, got str"),
        ("memory_mb", 1.5, "Limits.memory_mb must be an int, got float"),
    ],
)
def test_limit_of_the_wrong_type_is_a_type_error(field, value, message):
    with pytest.raises(TypeError) as e:
        Limits(**{field: value})
    assert str(e.value) == message


@pytest.mark.skipif(
    _can_raise_rlimits() or resource.getrlimit(resource.RLIMIT_NOFILE)[1] == resource.RLIM_INFINITY,
    reason="this process may raise its rlimits",
)
def test_limit_above_the_hard_rlimit_is_refused_not_failed():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with pytest.raises(ValueError) as e:
        execute("print(1)", limits=Limits(cpu_seconds=2, open_files=hard + 1))
    assert str(e.value) == (
        f"limits.open_files={hard + 1} is above this process's hard limit of {hard}, "
        "which the sandbox cannot raise"
    )


def test_javascript_below_the_processes_node_needs_is_refused_not_hung():
    # node's start-up threads: below 8 it aborted or hung until the wall-clock backstop (15 s a run)
    with pytest.raises(ValueError) as e:
        execute("console.log(1)", language="javascript", limits=Limits(cpu_seconds=5, processes=7))
    assert (
        str(e.value)
        == "limits.processes=7: a javascript program needs at least 8 processes and threads to start"
    )
    with pytest.raises(ValueError, match=r"^programs\[1\]\.limits\.processes=2: a js program"):
        execute_many(["print(1)", Program("console.log(1)", language="js", limits=Limits(processes=2))])


def test_judge_tests_as_one_string_is_a_type_error():
    with pytest.raises(TypeError) as e:
        Judge(tests="assert f(1) == 1", entry_point="f")
    assert (
        str(e.value) == "Judge.tests must be a tuple of str (one test snippet each), got 'assert f(1) == 1'"
    )


# -- execute: files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/etc/x", "files['/etc/x']: an absolute path; names are relative to the program's work directory"),
        ("../../x", "files['../../x']: leaves the program's work directory"),
        ("a/../../x", "files['a/../../x']: leaves the program's work directory"),
        ("", "files['']: a file name must be non-empty and hold no NUL character"),
        ("d/", "files['d/']: names a directory, not a file"),
    ],
)
def test_file_name_outside_the_work_directory_is_a_value_error(name, message):
    with pytest.raises(ValueError) as e:
        execute("print(1)", files={name: "x"}, limits=FAST)
    assert str(e.value) == message


def test_file_named_like_the_program_is_refused_not_overwritten():
    with pytest.raises(ValueError) as e:
        execute("print(open('main.py').read())", files={"main.py": "print('other')"}, limits=FAST)
    assert str(e.value) == "files['main.py']: 'main.py' is the name of the program's own file"


def test_file_that_is_also_a_directory_is_a_value_error():
    with pytest.raises(ValueError) as e:
        execute("print(1)", files={"a": "x", "a/b": "y"}, limits=FAST)
    assert str(e.value) == "files['a']: a file, yet files['a/b'] is inside it"


def test_file_content_int_is_a_type_error_not_nul_bytes():
    with pytest.raises(TypeError) as e:
        execute("print(1)", files={"a.txt": 5}, limits=FAST)
    assert str(e.value) == "files['a.txt'] must be a str or bytes, got int"


def test_files_larger_than_the_run_disk_are_refused_not_a_sandbox_error():
    with pytest.raises(ValueError) as e:
        execute("print(1)", files={"big": b"x" * (2 << 20)}, limits=Limits(cpu_seconds=2, disk_mb=1))
    assert str(e.value) == (
        "program and files: 2097160 bytes in all, more than the run's work directory holds (Limits.disk_mb=1)"
    )


def _many_files(n: int) -> dict[str, str]:
    """n empty files, half of them in 40 subdirectories."""
    return {(f"d{i // 2 % 40}/f{i}" if i % 2 else f"f{i}"): "" for i in range(n)}


def test_more_files_than_the_work_directory_holds_are_refused_not_a_sandbox_error():
    # the work directory itself, main.py, 40 directories and the files: one more than WORK_INODES
    files = _many_files(WORK_INODES - 41)
    with pytest.raises(ValueError) as e:
        execute("print(1)", files=files, limits=FAST)
    assert str(e.value) == (
        f"files: {WORK_INODES - 41} files in 40 directories, more than the {WORK_INODES} files and "
        "directories a run's work directory holds"
    )


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the inode limit is the namespaces level's tmpfs"
)
def test_as_many_files_as_the_work_directory_holds_all_arrive():
    # One fewer than the case above: exactly WORK_INODES inodes, so the check and the tmpfs agree.
    files = _many_files(WORK_INODES - 42)
    program = "import os\nprint(sum(len(fs) for _, _, fs in os.walk('.')))"
    r = execute(program, files=files, limits=Limits(cpu_seconds=5))
    assert r.status is Status.OK and r.stdout == f"{WORK_INODES - 41}\n", (r.status, r.stderr[-500:])
    assert jail.WORK_INODES == WORK_INODES  # the tmpfs's figure and the one the check uses


def test_a_program_with_undecodable_bytes_is_a_syntax_error_not_a_sandbox_exception():
    # b"\xff" read with errors="surrogateescape": the program's file holds the byte itself. It used to fail
    # in phase "run" with the sandbox's own "UnicodeEncodeError: ... surrogates not allowed".
    source = b"print('\xff')\n".decode("utf-8", "surrogateescape")
    r = execute(source, limits=FAST)
    assert r.status is Status.FAILED and r.phase == "compile", (r.status, r.phase, r.stderr)
    assert r.stderr.endswith("SyntaxError: (unicode error) 'utf-8' codec can't decode byte 0xff in position 0: "
                             "invalid start byte\n"), r.stderr  # fmt: skip
    assert "another exception" not in r.stderr and "UnicodeEncodeError" not in r.stderr


def test_a_program_declaring_its_encoding_runs_from_its_bytes():
    source = "# -*- coding: latin-1 -*-\nprint('caf\xe9')\n".encode("latin-1").decode(
        "utf-8", "surrogateescape"
    )
    r = execute(source, limits=FAST)
    assert r.status is Status.OK and r.stdout == "caf\xe9\n", (r.status, r.stderr)


def test_a_directory_made_for_the_files_belongs_to_the_program():
    r = execute(
        "open('data/out.txt', 'w').write(open('data/in.txt').read() * 2)\nprint(open('data/out.txt').read())",
        files={"data/in.txt": "ab"},
        limits=FAST,
    )
    assert r.status is Status.OK and r.stdout == "abab\n", r.stderr


# -- execute_many --------------------------------------------------------------------------------------------
def test_execute_many_names_the_bad_entry_before_running_any():
    programs = ["print(1)", Program("print(2)", language="cobol"), "print(3)"]
    with pytest.raises(ValueError) as e:
        execute_many(programs, workers=2, progress=False)
    assert str(e.value) == "programs[1].language: unknown language 'cobol'; known: c, cpp, javascript, python"


def test_execute_many_none_entry_is_a_type_error_not_a_sandbox_error():
    with pytest.raises(TypeError) as e:
        execute_many(["print(1)", None], workers=2, progress=False)
    assert str(e.value) == "programs[1] must be a str or a Program, got NoneType"


def test_execute_many_bad_file_in_one_entry_names_it():
    programs = ["print(1)", Program("print(2)", files={"../x": "a"})]
    with pytest.raises(ValueError) as e:
        execute_many(programs, workers=2, progress=False)
    assert str(e.value) == "programs[1].files['../x']: leaves the program's work directory"


def test_execute_many_of_a_string_is_refused_not_run_per_character():
    with pytest.raises(TypeError) as e:
        execute_many("print(1)", progress=False)
    assert (
        str(e.value)
        == "programs must be an iterable of str or Program, got str (put a single program in a list)"
    )


@pytest.mark.parametrize("workers", [0, -2])
def test_execute_many_workers_below_one_is_a_value_error(workers):
    with pytest.raises(ValueError) as e:
        execute_many(["print(1)"], workers=workers, progress=False)
    assert str(e.value) == f"workers must be >= 1, or None for one per CPU, got {workers}"


def test_a_worker_whose_run_raised_is_not_leaked():
    """An exception inside a worker's run (here: a language only the public calls check) used to leave the
    worker alive, out of the pool and possibly out of step; it is discarded."""
    from codefoundry.sandbox.api import Pool

    pool = Pool()
    try:
        pool.warm(1)
        worker = pool._all[0]
        with pytest.raises(ValueError):
            pool.run(Program("print(1)", language="cobol"), language="python", limits=FAST)
        assert pool._all == [] and not worker.alive
    finally:
        pool.close()
