"""Red-team suite for the execution sandbox: one attack per test, each must be contained.

Every attack program is written so that it exits 0 only when the attack got through; the tests check that
the run is not scored as passing, that the status is the one the attack should produce, that the sandbox
did not fail (a program must never be able to cause `sandbox_error`), and, where it matters, that the
host is untouched afterwards and that the next run is served normally.

Small limits keep the whole file fast: a CPU limit of 1 s gives a wall-clock backstop of 3 s.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time

import pytest

from codefoundry.sandbox import (
    ExecutionResult,
    Isolation,
    Judge,
    Limits,
    Program,
    Status,
    execute,
    execute_many,
    shutdown,
)

FAST = Limits(
    cpu_seconds=1,
    memory_mb=256,
    processes=16,
    open_files=32,
    disk_mb=16,
    file_size_mb=4,
    output_bytes=1 << 16,
)
SLACK = 1.5  # seconds of scheduling slack allowed past a limit on a busy 2-core machine


# -- helpers -------------------------------------------------------------------------------------------------
def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def brief(r: ExecutionResult) -> str:
    return (
        f"status={r.status!s} exit_code={r.exit_code} signal={r.signal} isolation={r.isolation!s} "
        f"phase={r.phase} cpu={r.cpu_seconds} wall={r.wall_seconds} mem={r.peak_memory_mb} "
        f"truncated={r.truncated} message={r.message!r}\n--- stdout (tail) ---\n{r.stdout[-1500:]}"
        f"\n--- stderr (tail) ---\n{r.stderr[-1500:]}"
    )


def run(program: str, **kw) -> ExecutionResult:
    kw.setdefault("limits", FAST)
    return execute(program, **kw)


def assert_contained(r: ExecutionResult, *statuses: Status) -> None:
    """The attack is not scored as a pass, did not break the sandbox, and ended as expected."""
    assert not r.passed, brief(r)
    assert r.status != Status.SANDBOX_ERROR, brief(r)
    if statuses:
        assert r.status in statuses, brief(r)


def needs_namespaces(r: ExecutionResult) -> None:
    if r.isolation == Isolation.PROCESS:
        pytest.skip(
            "the sandbox reports Isolation.PROCESS (no namespace privileges): this defence is "
            "namespace-level only"
        )
    assert r.isolation == Isolation.NAMESPACES, brief(r)


def assert_healthy() -> None:
    """The sandbox still serves a normal run correctly."""
    r = execute("print(6 * 7)", limits=FAST)
    assert r.passed and r.stdout == "42\n", brief(r)
    r = execute("raise SystemExit(3)", limits=FAST)
    assert r.status == Status.FAILED and r.exit_code == 3, brief(r)


def _proc_table() -> dict[int, tuple[int, int, str, bytes]]:
    """pid -> (real uid, ppid, state, cmdline) for every process visible on the host."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                status = f.read()
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        m = re.search(r"^Uid:\s+(\d+)", status, re.M)
        rest = stat[stat.rindex(")") + 2 :].split()
        table[int(name)] = (int(m.group(1)) if m else 0, int(rest[1]), rest[0], cmd)
    return table


def _descendants(table: dict, root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def stray_processes(before: set[int], marker: bytes | None = None) -> list[str]:
    """Unprivileged processes started since `before` that are ours (descendants of pytest) or escaped to the
    host's init, plus any process whose command line carries `marker`."""
    table = _proc_table()
    mine = _descendants(table, os.getpid())
    zygotes = {pid for pid, (uid, ppid, _, cmd) in table.items() if b"zygote.py" in cmd and uid == 0
               and b"zygote.py" not in table.get(ppid, (0, 0, "", b""))[3]}  # fmt: skip
    judge_servers = {pid for pid, (uid, ppid, _, cmd) in table.items() if ppid in zygotes and uid != 0}
    found = []
    for pid, (uid, ppid, state, cmd) in table.items():
        if pid in before or pid == os.getpid() or pid in judge_servers:  # a worker's long-lived judge
            continue
        by_uid = uid != 0 and state != "Z" and (pid in mine or ppid == 1)
        by_marker = marker is not None and marker in cmd
        if by_uid or by_marker:
            found.append(f"pid={pid} uid={uid} ppid={ppid} state={state} cmd={cmd[:120]!r}")
    return found


def wait_no_strays(before: set[int], marker: bytes | None = None, settle: float = 3.0) -> list[str]:
    deadline = time.monotonic() + settle
    while True:
        left = stray_processes(before, marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _kill_marked(marker: bytes) -> None:
    """Clean-up for a failed containment test: end processes this test's program left behind."""
    for pid, (_, _, _, cmd) in _proc_table().items():
        if marker in cmd:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def host_ipv4_addresses() -> list[str]:
    addrs = {"127.0.0.1"}
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, timeout=5).stdout
        addrs.update(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out))
    except (OSError, subprocess.SubprocessError):
        pass
    return sorted(addrs)


def _open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _zombie_children() -> list[int]:
    me = os.getpid()
    return [pid for pid, (_, ppid, state, _) in _proc_table().items() if ppid == me and state == "Z"]


# -- the attack programs (also replayed together by test_all_attacks_then_workers_still_correct) ----------
FORK_BOMB = src("""
    import os
    while True:
        try:
            os.fork()
        except OSError:
            pass
""")

MEMORY_BOMB = src("""
    hoard = []
    while True:
        hoard.append(bytearray(16 << 20))
""")

CPU_SPIN = "while True:\n    pass\n"

CPU_SPIN_IGNORING_SIGNALS = src("""
    import signal
    for s in (signal.SIGXCPU, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(s, signal.SIG_IGN)
    while True:
        pass
""")

SLEEPER = "import time\ntime.sleep(120)\nprint('woke up')\n"

SELF_STOP = "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)\nprint('resumed')\n"

BIG_FILE = src("""
    import os
    written = 0
    try:
        with open('big.bin', 'wb', buffering=0) as f:
            while written < (256 << 20):
                written += f.write(b'x' * (1 << 20))
    finally:
        size = os.path.getsize('big.bin') if os.path.exists('big.bin') else 0
        print('WRITTEN', written, 'SIZE', size, flush=True)
""")

DISK_FILL = src("""
    total = 0
    try:
        for i in range(10_000):
            with open(f'fill{i}.bin', 'wb') as f:
                f.write(b'y' * (1 << 20))
            total += 1 << 20
    finally:
        print('TOTAL', total, flush=True)
""")

STDOUT_FLOOD = "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)\n"
STDERR_FLOOD = "import sys\nwhile True:\n    sys.stderr.write('e' * 4096)\n"

DEEP_RECURSION = src("""
    import sys
    sys.setrecursionlimit(10 ** 6)
    def down(n):
        return down(n + 1) + 1
    down(0)
    print('bottomed out')
""")

CTYPES_SEGFAULT = "import ctypes\nctypes.string_at(0)\nprint('read address 0')\n"

FD_EXHAUSTION = src("""
    import os
    fds = []
    try:
        while True:
            fds.append(os.open('/dev/null', os.O_RDONLY))
    finally:
        print('OPENED', len(fds), flush=True)
""")

KILL_MINUS_ONE = "import os\nos.kill(-1, 9)\nprint('kill(-1) hit something')\n"

C_FORK_BOMB = src("""
    #include <unistd.h>
    int main(void) {
        for (;;)
            fork();
        return 0;
    }
""")

PY_ATTACKS: dict[str, str] = {
    "fork_bomb": FORK_BOMB,
    "memory_bomb": MEMORY_BOMB,
    "cpu_spin": CPU_SPIN,
    "cpu_spin_ignoring_signals": CPU_SPIN_IGNORING_SIGNALS,
    "sleeper": SLEEPER,
    "self_stop": SELF_STOP,
    "big_file": BIG_FILE,
    "disk_fill": DISK_FILL,
    "stdout_flood": STDOUT_FLOOD,
    "stderr_flood": STDERR_FLOOD,
    "deep_recursion": DEEP_RECURSION,
    "ctypes_segfault": CTYPES_SEGFAULT,
    "fd_exhaustion": FD_EXHAUSTION,
    "kill_minus_one": KILL_MINUS_ONE,
    "read_shadow": "print(open('/etc/shadow').read())\n",
    "self_sigkill": "import os\nos.kill(os.getpid(), 9)\nprint('survived')\n",
    "connect_out": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1).close()\n",
}


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
    assert_contained(r)


def test_sysv_shared_memory_is_bounded_by_the_memory_limit():
    prog = SYSV_SHM.replace("SIZE_MB", "32").replace("COUNT_", str(HOARD_TARGET_MB // 32))
    prog = prog.replace("LIMIT_MB", str(2 * HOARD_LIMITS.memory_mb))
    try:
        r = run(prog, limits=HOARD_LIMITS)
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


# -- secrets on the host ----------------------------------------------------------------------------------------
def test_read_etc_shadow():
    with open("/etc/shadow") as f:
        host_lines = [ln for ln in f.read().splitlines() if ln.strip()]
    r = run("print(open('/etc/shadow').read())\n")
    needs_namespaces(r)
    assert_contained(r, Status.FAILED)
    for line in host_lines:
        assert line not in r.stdout, brief(r)


def test_read_parent_environment(monkeypatch):
    secret = "cfrt-env-" + secrets.token_hex(16)
    monkeypatch.setenv("CF_REDTEAM_SECRET", secret)
    shutdown()  # fresh workers, started with the secret in pytest's environment
    try:
        prog = src("""
            import os, sys
            key = 'CF_REDTEAM' + '_SECRET='
            blobs = {'os.environ': '\\n'.join(f'{k}={v}' for k, v in os.environ.items())}
            paths = ['/proc/self/environ', '/proc/1/environ', f'/proc/{os.getppid()}/environ']
            try:
                paths += [f'/proc/{p}/environ' for p in os.listdir('/proc') if p.isdigit()]
            except OSError:
                pass
            for p in paths:
                try:
                    with open(p, 'rb') as f:
                        blobs[p] = f.read().replace(b'\\0', b'\\n').decode('utf-8', 'replace')
                except OSError as e:
                    blobs[p] = 'ERR ' + type(e).__name__
            for p, b in blobs.items():
                print('==', p)
                print(b)
            sys.exit(0 if any(key in b for b in blobs.values()) else 1)
        """)
        r = run(prog)
        assert secret not in r.stdout + r.stderr, brief(r)
        needs_namespaces(r)
        assert_contained(r, Status.FAILED)
    finally:
        monkeypatch.delenv("CF_REDTEAM_SECRET")
        shutdown()  # do not leave workers holding the secret


def test_read_files_under_root_and_home():
    token = "CFRT-" + secrets.token_hex(16)
    tag = secrets.token_hex(6)
    made_dirs, made_files = [], []
    targets = [f"/root/.cf_redteam_{tag}", f"/root/.pyenv/.cf_redteam_{tag}"]
    home_dir = f"/home/cf_redteam_{tag}"
    try:
        for path in targets:
            if os.path.isdir(os.path.dirname(path)):
                with open(path, "w") as f:
                    f.write(token)
                os.chmod(path, 0o644)  # world-readable on purpose: only the mount table may hide it
                made_files.append(path)
        if os.path.isdir("/home"):
            os.mkdir(home_dir, 0o755)
            made_dirs.append(home_dir)
            with open(f"{home_dir}/secret.txt", "w") as f:
                f.write(token)
            os.chmod(f"{home_dir}/secret.txt", 0o644)
            made_files.append(f"{home_dir}/secret.txt")
        prog = src("""
            import os, sys
            prefix = os.path.realpath(sys.prefix)
            found, budget = [], [400]
            def visit(d, depth):
                if depth > 3 or os.path.realpath(d) == prefix or budget[0] <= 0:
                    return
                try:
                    entries = sorted(os.listdir(d))[:200]
                except OSError as e:
                    print('LIST', d, type(e).__name__)
                    return
                print('LIST', d, entries)
                for e in entries:
                    p = os.path.join(d, e)
                    if os.path.islink(p):
                        continue
                    if os.path.isdir(p):
                        visit(p, depth + 1)
                    elif os.path.isfile(p) and budget[0] > 0:
                        budget[0] -= 1
                        try:
                            with open(p, 'rb') as f:
                                data = f.read(4096)
                        except OSError as ex:
                            print('READ', p, type(ex).__name__)
                            continue
                        print('READ', p, data[:120])
                        if b'CF' + b'RT-' in data:
                            found.append(p)
            for d in ('/root', '/home'):
                visit(d, 0)
            sys.exit(0 if found else 1)
        """)
        r = run(prog, limits=Limits(cpu_seconds=2, memory_mb=256))
        out = r.stdout + r.stderr
        assert token not in out, brief(r)
        assert f"cf_redteam_{tag}" not in out, brief(r)
        needs_namespaces(r)
        assert_contained(r, Status.FAILED)
    finally:
        for path in made_files:
            os.unlink(path)
        for d in made_dirs:
            os.rmdir(d)


def test_proc_snooping():
    with open("/proc/1/cmdline", "rb") as f:
        host_init = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    prog = src("""
        import os, sys
        try:
            pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
        except OSError as e:
            pids = []
            print('NO PROC', type(e).__name__)
        print('PIDS', pids)
        text = []
        for p in pids:
            try:
                with open(f'/proc/{p}/cmdline', 'rb') as f:
                    cmd = f.read().replace(b'\\0', b' ').decode('utf-8', 'replace')
            except OSError as e:
                cmd = 'ERR ' + type(e).__name__
            print('CMD', p, cmd)
            text.append(cmd)
        host = ['py' + 'test', 'process' + '_api', 'fire' + 'cracker', 'binary' + '_backend']
        leak = len(pids) > 8 or any(h in t for h in host for t in text)
        sys.exit(0 if leak else 1)
    """)
    r = run(prog)
    needs_namespaces(r)
    assert_contained(r, Status.FAILED)
    m = re.search(r"PIDS \[([\d, ]*)\]", r.stdout)
    assert m, brief(r)
    pids = [int(x) for x in m.group(1).replace(",", " ").split()]
    assert os.getpid() not in pids, brief(r)
    assert len(pids) <= 8, brief(r)
    assert "pytest" not in r.stdout, brief(r)
    cmd1 = re.search(r"^CMD 1 (.*)$", r.stdout, re.M)
    if cmd1 and host_init:
        assert cmd1.group(1).strip() != host_init, brief(r)


def test_privileges_dropped():
    prog = src("""
        import ctypes, os, sys
        libc = ctypes.CDLL(None, use_errno=True)
        bad = []
        if 0 in (os.getuid(), os.geteuid(), os.getgid(), os.getegid()):
            bad.append('root ids')
        if 0 in os.getgroups():
            bad.append('root group')
        if libc.prctl(39, 0, 0, 0, 0) != 1:  # PR_GET_NO_NEW_PRIVS
            bad.append('no_new_privs off')
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()
        if libc.capget(header, data) != 0:
            bad.append('capget failed')
        caps = list(data)
        print('CAPS effective/permitted/inheritable', caps)
        if any(caps):
            bad.append('capabilities')
        for attempt in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.setgroups([0])):
            try:
                attempt()
                bad.append('set id to 0')
            except OSError:
                pass
        print('BAD', bad)
        sys.exit(0 if bad else 1)
    """)
    r = run(prog)
    needs_namespaces(r)
    assert_contained(r, Status.FAILED)
    assert "BAD []" in r.stdout, brief(r)


# -- writing outside the work dir ---------------------------------------------------------------------------------
def test_write_outside_work_dir():
    mark = "cf_rt_" + secrets.token_hex(8)
    prefix = sys.prefix
    purelib = sysconfig.get_paths()["purelib"]
    protected = [
        f"/usr/{mark}", f"/usr/bin/{mark}", f"/etc/{mark}", f"/bin/{mark}", f"/opt/{mark}",
        f"{prefix}/{mark}", f"{prefix}/bin/{mark}", f"{purelib}/{mark}.pth", f"{purelib}/sitecustomize_{mark}.py",
    ]  # fmt: skip
    elsewhere = [
        f"/tmp/{mark}", f"/var/tmp/{mark}", f"/dev/shm/{mark}", f"/{mark}", f"/root/{mark}", f"/home/{mark}",
        f"/run/{mark}", f"/mnt/{mark}", f"/var/{mark}", f"/srv/{mark}", f"/dev/{mark}",
    ]  # fmt: skip
    prog = src(f"""
        import os, sys
        PROTECTED = {protected!r}
        targets = PROTECTED + {elsewhere!r}
        targets += [os.path.join(os.path.dirname(os.getcwd()), {mark!r}), os.path.join('..', {mark!r} + '_up')]
        wrote = []
        for p in targets:
            try:
                with open(p, 'w') as f:
                    f.write('pwned')
                wrote.append(p)
                print('WROTE', p)
            except OSError as e:
                print('DENIED', p, type(e).__name__)
            try:
                os.mkdir(p + '.d')
                wrote.append(p + '.d')
                print('WROTE', p + '.d')
            except OSError:
                pass
        sys.exit(0 if any(p in PROTECTED or p[:-2] in PROTECTED for p in wrote) else 1)
    """)
    r = run(prog)
    leaked = []
    for p in protected + elsewhere:
        for q in (p, p + ".d"):
            if os.path.lexists(q):
                leaked.append(q)
                if os.path.isdir(q):
                    os.rmdir(q)
                else:
                    os.unlink(q)
    for root in ("/tmp", "/var/tmp", "/dev/shm", "/run", "/"):  # wherever the work dir's parent may be
        if os.path.isdir(root):
            leaked += [os.path.join(root, n) for n in os.listdir(root) if n.startswith(mark)]
    assert leaked == [], f"the program created files on the host: {leaked}\n{brief(r)}"
    needs_namespaces(r)
    for p in protected:
        assert f"WROTE {p}\n" not in r.stdout, brief(r)
    assert_contained(r, Status.FAILED)


def test_remount_read_only_binds_from_a_user_namespace():
    """unshare -Urm gives the program 'root' over its own mount namespace: the read-only binds must stay
    read-only there (they are locked), and nothing may reach the host."""
    mark = "cf_rt_userns_" + secrets.token_hex(6)
    prog = src(f"""
        import subprocess, sys
        ok = False
        for d in ('/usr', '/etc', sys.prefix):
            script = f'mount -o remount,rw,bind {{d}} 2>&1; mount -o remount,rw {{d}} 2>&1; touch {{d}}/{mark} && echo TOUCHED {{d}}'
            try:
                p = subprocess.run(['unshare', '-Urm', 'sh', '-c', script], capture_output=True, text=True, timeout=3)
                print(d, p.returncode, p.stdout, p.stderr)
                ok = ok or 'TOUCHED' in p.stdout
            except (OSError, subprocess.SubprocessError) as e:
                print(d, 'ERR', e)
        sys.exit(0 if ok else 1)
    """)
    r = run(prog, limits=Limits(cpu_seconds=2, memory_mb=256, processes=16))
    leaked = [p for p in (f"/usr/{mark}", f"/etc/{mark}", f"{sys.prefix}/{mark}") if os.path.exists(p)]
    for p in leaked:
        os.unlink(p)
    assert leaked == [], brief(r)
    needs_namespaces(r)
    assert "TOUCHED" not in r.stdout, brief(r)
    assert_contained(r, Status.FAILED)


def test_work_dir_symlinks_do_not_hurt_the_host():
    """Symlinks left in the work dir and /tmp must not lead the sandbox's clean-up to a host file."""
    canary = f"/tmp/cf_rt_canary_{secrets.token_hex(6)}"
    with open(canary, "w") as f:
        f.write("canary")
    os.chmod(canary, 0o600)
    st = os.stat(canary)
    try:
        prog = src(f"""
            import os, sys
            for d in ('.', '/tmp', os.environ.get('TMPDIR', '/tmp')):
                for i, target in enumerate(({canary!r}, '/tmp', '/etc/passwd', '/')):
                    try:
                        os.symlink(target, os.path.join(d, f'link{{i}}'))
                    except OSError:
                        pass
            sys.exit(1)
        """)
        r = run(prog)
        assert_contained(r, Status.FAILED)
        st2 = os.stat(canary)
        with open(canary) as f:
            assert f.read() == "canary"
        assert (st2.st_uid, st2.st_gid, st2.st_mode) == (st.st_uid, st.st_gid, st.st_mode)
        assert os.path.isdir("/tmp") and os.path.isfile("/etc/passwd")
    finally:
        os.unlink(canary)


def test_files_with_escaping_names_stay_in_the_work_dir():
    tag = secrets.token_hex(6)
    names = {f"/tmp/cf_rt_abs_{tag}": "x", f"../../../../tmp/cf_rt_rel_{tag}": "y"}
    for name, content in names.items():
        try:
            r = execute("print('ran')", files={name: content}, limits=FAST)
        except ValueError:
            r = None  # refused up front: fine
        if r is not None:
            assert r.status in (Status.OK, Status.FAILED, Status.SANDBOX_ERROR), brief(r)
    for path in (f"/tmp/cf_rt_abs_{tag}", f"/tmp/cf_rt_rel_{tag}"):
        assert not os.path.exists(path), path
    assert_healthy()


def test_work_dir_does_not_persist_between_runs():
    shutdown()  # one fresh worker, so that both runs below land on the same one
    mark = "cf_rt_persist_" + secrets.token_hex(6)
    writer = src(f"""
        import os
        dirs = [os.getcwd(), '/tmp', '/var/tmp', '/dev/shm', '/', '/run', '/dev', '/mnt',
                os.path.expanduser('~'), os.environ.get('TMPDIR', '/tmp'), os.path.dirname(os.getcwd())]
        for d in dirs:
            try:
                with open(os.path.join(d, {mark!r}), 'w') as f:
                    f.write('left behind')
                print('WROTE', d)
            except OSError as e:
                print('DENIED', d, type(e).__name__)
    """)
    reader = src(f"""
        import os, sys
        dirs = [os.getcwd(), '/tmp', '/var/tmp', '/dev/shm', '/', '/run', '/dev', '/mnt',
                os.path.expanduser('~'), os.environ.get('TMPDIR', '/tmp'), os.path.dirname(os.getcwd())]
        found = [d for d in dirs if os.path.exists(os.path.join(d, {mark!r}))]
        print('FOUND', found, 'CWD', sorted(os.listdir('.')))
        sys.exit(0 if found else 1)
    """)
    w = run(writer)
    assert w.passed, brief(w)
    assert "WROTE" in w.stdout, brief(w)
    r = run(reader)
    assert "FOUND []" in r.stdout, brief(r)
    assert_contained(r, Status.FAILED)


# -- network ------------------------------------------------------------------------------------------------------
def test_connect_to_host_listener():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    hosts = host_ipv4_addresses() + ["localhost", "::1"]
    try:
        prog = src(f"""
            import socket, sys, time
            ok = []
            for host in {hosts!r}:
                t = time.monotonic()
                try:
                    s = socket.create_connection((host, {port}), timeout=2)
                    s.sendall(b'hello from the sandbox')
                    s.close()
                    ok.append(host)
                    print('CONNECTED', host)
                except OSError as e:
                    print('REFUSED', host, type(e).__name__, e, round(time.monotonic() - t, 3))
            sys.exit(0 if ok else 1)
        """)
        r = run(prog, limits=Limits(cpu_seconds=2, memory_mb=256))
        readable, _, _ = select.select([listener], [], [], 0)
        assert readable == [], f"the test's listener received a connection\n{brief(r)}"
        needs_namespaces(r)
        assert "CONNECTED" not in r.stdout, brief(r)
        assert_contained(r, Status.FAILED)
    finally:
        listener.close()


def test_connect_to_external_address_fails_fast():
    prog = src("""
        import socket, sys, time
        ok = []
        def attempt(name, fn):
            t = time.monotonic()
            try:
                fn()
                ok.append(name)
                print('REACHED', name)
            except OSError as e:
                print('BLOCKED', name, type(e).__name__, round(time.monotonic() - t, 3))
        def tcp():
            socket.create_connection(('1.1.1.1', 53), timeout=3).close()
        def udp():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\x01', ('8.8.8.8', 53))
                s.recvfrom(512)
        def dns():
            socket.getaddrinfo('example.com', 80)
        for name, fn in (('tcp 1.1.1.1:53', tcp), ('udp 8.8.8.8:53', udp), ('dns example.com', dns)):
            attempt(name, fn)
        sys.exit(0 if ok else 1)
    """)
    r = run(prog, limits=Limits(cpu_seconds=2, memory_mb=256))
    needs_namespaces(r)
    assert "REACHED" not in r.stdout, brief(r)
    assert_contained(r, Status.FAILED)
    assert r.wall_seconds < 2.0, f"network attempts did not fail fast\n{brief(r)}"


def test_connect_to_host_abstract_unix_socket():
    name = "\0cf_redteam_" + secrets.token_hex(8)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen(4)
    try:
        prog = src(f"""
            import socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect({name!r})
            print('CONNECTED')
        """)
        r = run(prog)
        readable, _, _ = select.select([listener], [], [], 0)
        assert readable == [], brief(r)
        needs_namespaces(r)
        assert_contained(r, Status.FAILED)
    finally:
        listener.close()


def test_connect_to_host_unix_socket_file():
    path = f"/tmp/cf_rt_{secrets.token_hex(6)}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.listen(4)
    try:
        r = run(
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.settimeout(2)\ns.connect({path!r})\nprint('CONNECTED')\n"
        )
        readable, _, _ = select.select([listener], [], [], 0)
        assert readable == [], brief(r)
        needs_namespaces(r)
        assert_contained(r, Status.FAILED)
    finally:
        listener.close()
        os.unlink(path)


# -- attacking the sandbox's own processes ------------------------------------------------------------------------
KILL_ATTACKS = {
    "parent": "os.kill(os.getppid(), 9)",
    "pid1": "os.kill(1, 9)",
    "minus_one": "os.kill(-1, 9)",
    "every_pid": (
        "try:\n"
        "    pids = {int(p) for p in os.listdir('/proc') if p.isdigit()}\n"
        "except OSError:\n"
        "    pids = set()\n"
        "for p in sorted(pids | set(range(1, 4096))):\n"
        "    if p != os.getpid():\n"
        "        try:\n"
        "            os.kill(p, 9)\n"
        "        except OSError:\n"
        "            pass"
    ),
    "killpg_own_group": "os.killpg(os.getpgrp(), 9)",
    "killpg_zero": "os.killpg(0, 9)",
    "setsid_then_kill_minus_one": "os.setsid()\nos.kill(-1, 9)",
}


def _sandbox_side_processes() -> set[int]:
    """The live processes that pytest started (the sandbox's workers and their helpers)."""
    table = _proc_table()
    return {p for p in _descendants(table, os.getpid()) if table[p][2] != "Z"}


@pytest.mark.parametrize("attack", list(KILL_ATTACKS), ids=list(KILL_ATTACKS))
def test_kill_the_supervisor(attack):
    """The program tries to kill whatever supervises it. Whatever the kill call returns, the run must still be
    supervised to its end (its real exit status reported, or its own death by SIGKILL when it hit its own
    process group), no sandbox process may die, and the next run must be served normally."""
    assert_healthy()  # a warm worker exists now
    before = _sandbox_side_processes()
    body = textwrap.indent(KILL_ATTACKS[attack], "    ")
    prog = f"import os, sys, time\ntry:\n{body}\nexcept OSError as e:\n    print('denied', e)\n"
    prog += "time.sleep(0.3)\nprint('still here', flush=True)\nsys.exit(1)\n"
    r = run(prog)
    needs_namespaces(r)
    assert_contained(r, Status.FAILED, Status.KILLED)
    if r.status == Status.FAILED:
        assert r.exit_code == 1 and "still here" in r.stdout, brief(r)
    else:
        assert r.signal == signal.SIGKILL, brief(r)
    time.sleep(0.2)
    dead = sorted(p for p in before if not os.path.exists(f"/proc/{p}"))
    assert dead == [], f"sandbox processes died: {dead}\n{brief(r)}"
    assert_healthy()


def test_setsid_double_fork_daemon_dies_with_the_run():
    mark = "cf-redteam-daemon-" + secrets.token_hex(8)
    prog = src(f"""
        import os, sys, time
        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                code = 'import time; time.sleep(30); print("late daemon output", flush=True)'
                os.execv(sys.executable, [sys.executable, '-c', code, {mark!r}])
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.3)
        print('parent done', flush=True)
        sys.exit(1)
    """)
    before = set(_proc_table())
    limits = Limits(cpu_seconds=2, memory_mb=256)
    try:
        r = run(prog, limits=limits)
        needs_namespaces(r)
        assert_contained(r, Status.FAILED)
        assert r.exit_code == 1, brief(r)
        assert "parent done" in r.stdout, brief(r)
        assert "late daemon output" not in r.stdout, brief(r)
        assert r.wall_seconds < limits.wall - 1.0, f"the run waited for the daemon\n{brief(r)}"
        assert wait_no_strays(before, mark.encode()) == []
    finally:
        _kill_marked(mark.encode())


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
