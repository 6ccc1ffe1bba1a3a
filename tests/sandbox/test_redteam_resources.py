"""Red-team suite, part 1: resource exhaustion, signals, C programs, and every attack at once
(helpers and attack programs in redteam_kit.py)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import sys
import time

import pytest
from redteam_kit import (
    BIG_FILE,
    C_FORK_BOMB,
    CPU_SPIN,
    CPU_SPIN_IGNORING_SIGNALS,
    CPU_SPREAD,
    CTYPES_SEGFAULT,
    DEEP_RECURSION,
    DISK_FILL,
    FAST,
    FD_EXHAUSTION,
    FORK_BOMB,
    MEMORY_BOMB,
    NO_MEMORY_CGROUP,
    PY_ATTACKS,
    SELF_STOP,
    SLACK,
    SLEEPER,
    STDERR_FLOOD,
    STDOUT_FLOOD,
    _open_fd_count,
    _proc_table,
    _zombie_children,
    assert_contained,
    assert_healthy,
    brief,
    needs_namespaces,
    run,
    src,
    wait_no_strays,
)

from codefoundry.sandbox import (
    Isolation,
    Judge,
    Limits,
    Program,
    Status,
    execute_many,
    shutdown,
)


# -- isolation level -------------------------------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0, reason="needs root on Linux")
def test_runs_with_namespaces_as_root():
    """As root on Linux the sandbox must not silently fall back to the weaker process level."""
    r = run("print('hi')")
    assert r.passed, brief(r)
    assert r.isolation == Isolation.NAMESPACES, brief(r)


# -- resource exhaustion ----------------------------------------------------------------------------------------
def test_fork_bomb():
    before = set(_proc_table())
    r = run(FORK_BOMB)
    assert_contained(r, Status.TIMEOUT)
    assert r.wall_seconds <= FAST.wall + SLACK, brief(r)
    assert wait_no_strays(before) == []
    assert_healthy()


def test_memory_bomb():
    r = run(MEMORY_BOMB)
    assert_contained(r, Status.MEMORY_EXCEEDED)
    assert r.peak_memory_mb <= FAST.memory_mb + 32, brief(r)
    assert_healthy()


def test_cpu_spin():
    r = run(CPU_SPIN)
    assert_contained(r, Status.TIMEOUT)
    assert r.cpu_seconds <= FAST.cpu_seconds + 0.5, brief(r)
    # close to the limit, unless a loaded machine let the wall-clock backstop end it first
    assert r.cpu_seconds >= 0.8 * FAST.cpu_seconds or r.wall_seconds >= FAST.wall - 0.1, brief(r)
    assert r.wall_seconds <= FAST.wall + SLACK, brief(r)


def test_cpu_spin_ignoring_sigxcpu():
    """SIGXCPU ignored: the hard CPU limit (or the wall backstop) must still end it."""
    r = run(CPU_SPIN_IGNORING_SIGNALS)
    assert_contained(r, Status.TIMEOUT)
    assert r.cpu_seconds <= FAST.cpu_seconds + 1.2, brief(r)
    assert r.wall_seconds <= FAST.wall + SLACK, brief(r)


def test_cpu_spin_spread_over_processes():
    """Each process stays under its own CPU limit; the run's processes together go over it: a timeout
    for the CPU limit (with a wall-clock backstop far enough away that a busy machine cannot reach it)."""
    r = run(CPU_SPREAD, limits=dataclasses.replace(FAST, wall_seconds=10))
    if not r.extra.get(
        "run_cpu_limit"
    ):  # counted by a cgroup or the run's PID namespace: not at process level
        needs_namespaces(r)
    assert_contained(r, Status.TIMEOUT)
    assert "together" in r.message, brief(r)
    assert FAST.cpu_seconds <= r.cpu_seconds <= FAST.cpu_seconds + 0.5, brief(r)


def test_raise_rlimits_then_allocate():
    prog = src("""
        import resource
        for name in ('RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_NPROC', 'RLIMIT_NOFILE', 'RLIMIT_FSIZE'):
            which = getattr(resource, name)
            try:
                resource.setrlimit(which, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                print('RAISED', name, flush=True)
            except (ValueError, OSError):
                pass
        blob = bytearray(1 << 30)
        print('allocated 1 GiB', flush=True)
    """)
    r = run(prog)
    assert_contained(r, Status.MEMORY_EXCEEDED)
    assert "RAISED" not in r.stdout, brief(r)
    assert "allocated" not in r.stdout, brief(r)


# memory a process can pin without it counting against its address space (RLIMIT_AS)
HOARD_LIMITS = Limits(cpu_seconds=2, memory_mb=128, open_files=64, file_size_mb=16)
HOARD_TARGET_MB = 384  # three times the memory limit; freed again when the run (or its worker) ends

SYSV_SHM = src("""
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
    libc.shmdt.argtypes = (ctypes.c_void_p,)
    KEY, SEGMENT_MB, COUNT = 0x43465254, SIZE_MB, COUNT_
    held = 0
    for i in range(COUNT):
        shmid = libc.shmget(KEY + i, SEGMENT_MB << 20, 0o1000 | 0o600)  # IPC_CREAT
        if shmid < 0:
            print('shmget refused', ctypes.get_errno())
            break
        addr = libc.shmat(shmid, None, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            print('shmat refused', ctypes.get_errno())
            break
        ctypes.memset(addr, 0x41, SEGMENT_MB << 20)
        libc.shmdt(addr)  # detached: no longer in this process's address space, still in RAM
        held += SEGMENT_MB
    print('HELD_MB', held, flush=True)
    sys.exit(0 if held > LIMIT_MB else 1)
""")


def test_memfd_memory_is_bounded_by_the_memory_limit():
    """memfd pages are RAM that RLIMIT_AS does not see: a run must not hold several times its memory limit
    (RLIMIT_FSIZE bounds each memfd, RLIMIT_NOFILE their number; both multiply by processes)."""
    prog = src(f"""
        import os, sys
        total, chunk, fds = 0, b'm' * (1 << 20), []
        try:
            while total < ({HOARD_TARGET_MB} << 20):
                fds.append(os.memfd_create('hoard'))
                for _ in range(16):
                    total += os.write(fds[-1], chunk)
        except OSError as e:
            print('stopped:', type(e).__name__, e)
        print('HELD_MB', total >> 20, flush=True)
        sys.exit(0 if total > (2 * {HOARD_LIMITS.memory_mb} << 20) else 1)
    """)
    r = run(prog, limits=HOARD_LIMITS)
    if not r.extra.get("memory_cgroup"):  # the user_namespace level has one only where it is delegated
        needs_namespaces(r, root_only=NO_MEMORY_CGROUP)
    assert_contained(r)


def test_sysv_shared_memory_is_bounded_by_the_memory_limit():
    prog = SYSV_SHM.replace("SIZE_MB", "32").replace("COUNT_", str(HOARD_TARGET_MB // 32))
    prog = prog.replace("LIMIT_MB", str(2 * HOARD_LIMITS.memory_mb))
    try:
        r = run(prog, limits=HOARD_LIMITS)
        if not r.extra.get("memory_cgroup"):
            needs_namespaces(r, root_only=NO_MEMORY_CGROUP)
        assert_contained(r)
    finally:
        shutdown()  # if the segments outlived the run, drop the worker (and its IPC namespace) to free them


def test_sysv_shared_memory_does_not_persist_between_runs():
    """A SysV segment left by one run must be gone for the next one on the same worker: otherwise memory
    leaks past the run and runs can pass data to later runs."""
    shutdown()  # one fresh worker: both runs land on it
    writer = SYSV_SHM.replace("SIZE_MB", "1").replace("COUNT_", "4").replace("LIMIT_MB", "0")
    reader = src("""
        import ctypes, sys
        libc = ctypes.CDLL(None, use_errno=True)
        found = [i for i in range(4) if libc.shmget(0x43465254 + i, 0, 0) >= 0]
        print('FOUND', found)
        sys.exit(0 if found else 1)
    """)
    try:
        w = run(writer, limits=HOARD_LIMITS)
        assert "HELD_MB 4" in w.stdout, brief(w)
        r = run(reader, limits=HOARD_LIMITS)
        assert "FOUND []" in r.stdout, brief(r)
        assert_contained(r, Status.FAILED)
    finally:
        shutdown()


def test_user_namespace_tmpfs_cannot_extend_the_disk_limit():
    """unshare(CLONE_NEWUSER | CLONE_NEWNS) then a private tmpfs: writing there must not give the program
    more than its disk budget (here it cannot even map its uid, so files cannot be created)."""
    prog = src(f"""
        import ctypes, os, sys
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000 | 0x00020000) != 0:
            print('unshare refused', ctypes.get_errno())
            sys.exit(1)
        if libc.mount(b'none', b'/tmp', b'tmpfs', 0, b'size=512m') != 0:
            print('mount refused', ctypes.get_errno())
            sys.exit(1)
        total = 0
        try:
            for i in range(4 * {FAST.disk_mb} // {FAST.file_size_mb}):
                with open(f'/tmp/f{{i}}', 'wb') as f:
                    f.write(b'u' * ({FAST.file_size_mb} << 20))
                total += {FAST.file_size_mb} << 20
        except OSError as e:
            print('stopped:', e)
        print('WROTE_MB', total >> 20)
        sys.exit(0 if total > ({FAST.disk_mb} << 20) else 1)
    """)
    r = run(
        prog,
        limits=Limits(cpu_seconds=2, memory_mb=256, disk_mb=FAST.disk_mb, file_size_mb=FAST.file_size_mb),
    )
    needs_namespaces(r)
    assert_contained(r, Status.FAILED)


def test_sleep_past_limit_hits_wall_backstop():
    r = run(SLEEPER)
    assert_contained(r, Status.TIMEOUT)
    assert FAST.wall - 0.5 <= r.wall_seconds <= FAST.wall + SLACK, brief(r)
    assert r.cpu_seconds < 0.5, brief(r)
    assert "woke up" not in r.stdout


def test_self_sigstop_does_not_hang_the_sandbox():
    """A stopped program never finishes (timeout); reporting it as ended by SIGSTOP is accepted too."""
    r = run(SELF_STOP)
    assert_contained(r, Status.TIMEOUT, Status.KILLED)
    if r.status == Status.KILLED:
        assert r.signal == signal.SIGSTOP and r.exit_code is None, brief(r)
    assert "resumed" not in r.stdout, brief(r)
    assert r.wall_seconds <= FAST.wall + SLACK, brief(r)
    assert_healthy()


def test_file_bigger_than_file_size_limit():
    r = run(BIG_FILE)
    assert_contained(r, Status.FAILED, Status.KILLED)
    if r.status == Status.KILLED:
        assert r.signal == signal.SIGXFSZ, brief(r)
    m = re.search(r"SIZE (\d+)", r.stdout)
    if m:
        assert int(m.group(1)) <= FAST.file_size_mb << 20, brief(r)
    assert_healthy()


def test_disk_fill_in_work_dir():
    r = run(DISK_FILL)
    assert_contained(r, Status.FAILED)
    m = re.search(r"TOTAL (\d+)", r.stdout)
    assert m, brief(r)
    assert int(m.group(1)) <= FAST.disk_mb << 20, brief(r)
    assert "No space left" in r.stderr or "Disk quota" in r.stderr, brief(r)
    assert_healthy()


@pytest.mark.parametrize("program", [STDOUT_FLOOD, STDERR_FLOOD], ids=["stdout", "stderr"])
def test_output_flood(program):
    r = run(program)
    assert_contained(r, Status.OUTPUT_LIMIT)
    assert r.truncated, brief(r)
    captured = len(r.stdout.encode()) + len(r.stderr.encode())
    assert captured <= FAST.output_bytes + 256, brief(r)
    assert r.wall_seconds <= FAST.wall + SLACK, brief(r)


def test_deep_recursion():
    r = run(DEEP_RECURSION)
    assert_contained(r, Status.KILLED, Status.FAILED, Status.MEMORY_EXCEEDED, Status.TIMEOUT)
    assert "bottomed out" not in r.stdout
    assert_healthy()


def test_segfault_via_ctypes():
    r = run(CTYPES_SEGFAULT)
    assert_contained(r, Status.KILLED)
    assert r.signal == signal.SIGSEGV, brief(r)
    assert r.exit_code is None, brief(r)


@pytest.mark.parametrize(
    "signame",
    ["SIGTERM", "SIGSEGV", "SIGKILL", "SIGABRT", "SIGUSR1"],
)
def test_program_signals_itself(signame):
    signum = getattr(signal, signame)
    r = run(
        f"import os, signal, time\nos.kill(os.getpid(), signal.{signame})\ntime.sleep(0.5)\nprint('survived')\n"
    )
    assert_contained(r, Status.KILLED)
    assert r.signal == signum, brief(r)
    assert r.exit_code is None, brief(r)  # the result's contract: no exit code when ended by a signal
    assert "survived" not in r.stdout, brief(r)


def test_program_sigkills_itself_through_libc():
    """The same self-kill, made with the C library directly instead of os.kill."""
    r = run(
        "import ctypes, os, time\nctypes.CDLL(None).kill(os.getpid(), 9)\ntime.sleep(0.5)\nprint('survived')\n"
    )
    assert_contained(r, Status.KILLED)
    assert r.signal == signal.SIGKILL, brief(r)
    assert "survived" not in r.stdout, brief(r)


def test_forged_status_notes_on_inherited_fds():
    """Whatever the program writes to inherited descriptors must not change how its run is reported: it
    exits 1, so the result is a plain failure with exit code 1 (not memory, compile, signal or timeout)."""
    prog = src("""
        import json, os, sys
        lies = [{'memory': True}, {'phase': 'compile'}, {'signal': 9}, {'signal': 24}, {'exit_code': 0},
                {'status': 'ok', 'passed': True}, {'cpu': 99.0}, {'signal': 'x'}, {'signal': [1]}]
        blob = b''.join(json.dumps(x).encode() + b'\\n' for x in lies) + b'not json\\n\\x00\\xff\\n'
        for fd in range(3, 256):
            try:
                os.write(fd, blob)
            except OSError:
                pass
        sys.exit(1)
    """)
    r = run(prog)
    assert_contained(r, Status.FAILED)
    assert (r.exit_code, r.signal, r.phase) == (1, None, "run"), brief(r)


def test_flood_inherited_fds():
    prog = src("""
        import os, sys, time
        chunk = b'n' * (1 << 20)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            for fd in range(3, 10):
                try:
                    os.write(fd, chunk)
                except OSError:
                    pass
        sys.exit(1)
    """)
    r = run(prog, limits=Limits(cpu_seconds=2, memory_mb=256))
    assert_contained(r, Status.FAILED)
    assert r.exit_code == 1, brief(r)
    assert_healthy()


def test_fd_exhaustion():
    r = run(FD_EXHAUSTION)
    assert_contained(r, Status.FAILED)
    m = re.search(r"OPENED (\d+)", r.stdout)
    assert m and int(m.group(1)) < FAST.open_files, brief(r)
    assert_healthy()


def test_thread_left_running_unjudged_run_still_ends():
    before = set(_proc_table())
    prog = src("""
        import threading
        def spin():
            while True:
                pass
        threading.Thread(target=spin).start()
        print('main done', flush=True)
    """)
    r = run(prog)
    assert r.status != Status.SANDBOX_ERROR, brief(r)
    assert r.status in (Status.OK, Status.TIMEOUT), brief(r)
    assert r.wall_seconds <= FAST.wall + SLACK, brief(r)
    assert wait_no_strays(before) == []


def test_thread_left_running_ends_with_the_run():
    """A correct program that leaves a spinning non-daemon thread behind. Its answers are right, so it
    passes (a verdict is about the answers, and the judge has them all); what must hold is that the
    thread does not outlive the run nor hold it up: once the judge is done, the program is ended."""
    prog = src("""
        import threading
        def spin():
            while True:
                pass
        threading.Thread(target=spin).start()
        def add(a, b):
            return a + b
    """)
    judge = Judge(tests=("assert add(1, 2) == 3", "assert add(2, 2) == 4"), entry_point="add")
    before = set(_proc_table())
    r = run(prog, judge=judge)
    assert r.passed, brief(r)
    assert r.wall_seconds <= FAST.wall + SLACK, brief(r)
    assert wait_no_strays(before) == []


# -- C programs -------------------------------------------------------------------------------------------------
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


@needs_gcc
def test_c_fork_bomb():
    before = set(_proc_table())
    r = run(C_FORK_BOMB, language="c")
    assert r.phase == "run", brief(r)
    assert_contained(r, Status.TIMEOUT)
    assert r.wall_seconds <= FAST.wall + SLACK, brief(r)
    assert wait_no_strays(before) == []
    assert_healthy()


@needs_gcc
def test_c_null_dereference():
    r = run("int main(void) { volatile int *p = 0; return *p; }\n", language="c")
    assert r.phase == "run", brief(r)
    assert_contained(r, Status.KILLED)
    assert r.signal == signal.SIGSEGV, brief(r)


C_SELF_SIGNALS = {
    "raise_sigterm": ("#include <signal.h>\nint main(void) { raise(SIGTERM); return 0; }\n", signal.SIGTERM),
    "kill_self_sigkill": (
        "#include <signal.h>\n#include <unistd.h>\nint main(void) { kill(getpid(), SIGKILL); return 0; }\n",
        signal.SIGKILL,
    ),
    "abort": ("#include <stdlib.h>\nint main(void) { abort(); return 0; }\n", signal.SIGABRT),
}


@needs_gcc
@pytest.mark.parametrize("case", list(C_SELF_SIGNALS), ids=list(C_SELF_SIGNALS))
def test_c_program_signals_itself(case):
    program, signum = C_SELF_SIGNALS[case]
    r = run(program, language="c")
    assert r.phase == "run", brief(r)
    assert_contained(r, Status.KILLED)
    assert r.signal == signum, brief(r)


# -- plain I/O still works ---------------------------------------------------------------------------------------
def test_stdin_is_delivered():
    r = run("import sys\nprint(sys.stdin.read().upper(), end='')\n", stdin="hello\nsandbox\n")
    assert r.passed, brief(r)
    assert r.stdout == "HELLO\nSANDBOX\n", brief(r)


def test_large_unread_stdin_does_not_deadlock():
    r = run("print('ignored my input')\n", stdin="z" * (4 << 20))
    assert r.passed, brief(r)
    assert r.stdout == "ignored my input\n"
    assert r.wall_seconds < 2.0, brief(r)


def test_files_are_visible_in_cwd():
    prog = src("""
        import os
        print(sorted(n for n in os.listdir('.') if n != 'main.py'))
        print(open('data.txt').read())
        print(open('blob.bin', 'rb').read().hex())
    """)
    r = run(prog, files={"data.txt": "some text", "blob.bin": b"\x00\xffbin"})
    assert r.passed, brief(r)
    assert r.stdout.splitlines() == ["['blob.bin', 'data.txt']", "some text", "00ff62696e"], brief(r)


def test_invalid_utf8_output_is_not_a_sandbox_error():
    r = run("import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe\\x00 done\\n')\n")
    assert r.passed, brief(r)
    assert r.stdout.startswith("ok ") and r.stdout.endswith(" done\n"), brief(r)


# -- everything at once, then the workers must still be right -------------------------------------------------------
def test_all_attacks_then_workers_still_correct():
    limits = Limits(cpu_seconds=1, wall_seconds=2, memory_mb=256, processes=16, open_files=32, disk_mb=16,
                    file_size_mb=4, output_bytes=1 << 16)  # fmt: skip
    programs: list[str | Program] = list(PY_ATTACKS.values())
    names = list(PY_ATTACKS)
    if shutil.which("gcc"):
        programs.append(Program(C_FORK_BOMB, language="c"))
        names.append("c_fork_bomb")
    results = execute_many(programs, workers=2, limits=limits, progress=False)
    assert len(results) == len(programs)
    problems = [f"{name}: {brief(r)}" for name, r in zip(names, results, strict=True)
                if r.passed or r.status == Status.SANDBOX_ERROR]  # fmt: skip

    good, bad = "assert sum(range(10)) == 45\nprint('good')\n", "assert sum(range(10)) == 46\n"
    verdicts = execute_many([good, bad] * 4, workers=2, limits=limits, progress=False)
    assert [r.passed for r in verdicts] == [True, False] * 4, [brief(r) for r in verdicts]
    assert all(r.stdout == "good\n" for r in verdicts[::2])
    judge = Judge(tests=("assert add(1, 2) == 3", "assert add(2, 2) == 4"), entry_point="add")
    judged = execute_many(
        [Program("def add(a, b):\n    return a + b\n", judge=judge), Program("def add(a, b):\n    return a * b\n", judge=judge)] * 2,
        workers=2, limits=limits, progress=False,
    )  # fmt: skip
    assert [r.passed for r in judged] == [True, False] * 2, [brief(r) for r in judged]

    # a long batch must not leak fds or leave zombies in the calling process
    execute_many(["print(0)"] * 4, workers=2, limits=limits, progress=False)  # warm
    fds_before = _open_fd_count()
    batch = execute_many([f"print({i} * 3)" for i in range(300)], workers=2, limits=limits, progress=False)
    assert all(r.passed and r.stdout == f"{i * 3}\n" for i, r in enumerate(batch)), [
        brief(r) for r in batch if not r.passed
    ][:3]
    time.sleep(0.5)
    assert _open_fd_count() <= fds_before + 8, (fds_before, _open_fd_count())
    assert _zombie_children() == []
    assert problems == [], "attacks that passed or broke the sandbox:\n" + "\n".join(problems)
