"""Helpers and attack programs shared by the red-team suites (test_redteam_*.py).

Every attack program is written so that it exits 0 only when the attack got through; the tests check that
the run is not scored as passing, that the status is the one the attack should produce, that the sandbox
did not fail (a program must never be able to cause `sandbox_error`), and, where it matters, that the
host is untouched afterwards and that the next run is served normally. Small limits keep the suites fast:
a CPU limit of 1 s gives a wall-clock backstop of 3 s.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
import time

import pytest

from codefoundry.sandbox import (
    ExecutionResult,
    Isolation,
    Limits,
    Status,
    execute,
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
    """Everything worth seeing when an assertion about a run fails."""
    judged = (
        f"tests={[(t.passed, t.error[:120]) for t in r.tests]} tests_completed={r.tests_completed} "
        if r.tests
        else ""
    )
    return (
        f"status={r.status!s} passed={r.passed} exit_code={r.exit_code} signal={r.signal} {judged}"
        f"isolation={r.isolation!s} phase={r.phase} cpu={r.cpu_seconds} wall={r.wall_seconds} "
        f"mem={r.peak_memory_mb} truncated={r.truncated} message={r.message!r}\n--- stdout (tail) ---\n"
        f"{r.stdout[-1500:]}\n--- stderr (tail) ---\n{r.stderr[-1500:]}"
    )


def run(program: str, **kw) -> ExecutionResult:
    kw.setdefault("limits", FAST)
    return execute(program, **kw)


def assert_passes(r: ExecutionResult) -> None:
    assert r.passed, brief(r)


def assert_fails(r: ExecutionResult, error: str = "") -> None:
    """A judged run failed its tests (not a sandbox error), with `error` in some test's error if given."""
    assert r.status is Status.FAILED and not r.passed, brief(r)
    if error:
        assert any(error in (t.error or "") for t in r.tests), (error, brief(r))


# A judged program's own frame writer: `send_raw(body)` puts a frame of its choosing on the channel to the
# judge (fd 4), past everything the program's side of rpc.py would check.
SEND_RAW = src("""
    import os, sys
    def send_raw(body):
        os.write(4, len(body).to_bytes(4, 'big') + body)
""")


def sending(frame: bytes, prelude: str = "") -> str:
    """A judged program whose `f()` answers the judge with `frame`, then ends at once."""
    return SEND_RAW + prelude + f"def f():\n    send_raw({frame!r})\n    os._exit(0)\n"


# Test code for a forged frame: `f()` must raise (the channel refuses the frame), never return a value.
MUST_RAISE = "try:\n    f()\nexcept Exception:\n    pass\nelse:\n    raise AssertionError"


def assert_contained(r: ExecutionResult, *statuses: Status) -> None:
    """The attack is not scored as a pass, did not break the sandbox, and ended as expected."""
    assert not r.passed, brief(r)
    assert r.status != Status.SANDBOX_ERROR, brief(r)
    if statuses:
        assert r.status in statuses, brief(r)


# What the user_namespace level lacks by design (userns.py), as `needs_namespaces(root_only=...)` names it.
ONE_UID = "every process of the worker runs under the caller's uid"
NO_MEMORY_CGROUP = "no memory cgroup: memfd and SysV pages are outside RLIMIT_AS"


def needs_namespaces(r: ExecutionResult, *, root_only: str = "") -> None:
    """Skip where the run's isolation level lacks the defence under test: the `process` level lacks every
    namespace defence; the `user_namespace` level (an unprivileged caller) lacks those that `root_only`
    names, and has the rest."""
    if r.isolation == Isolation.PROCESS:
        pytest.skip(
            "the sandbox reports Isolation.PROCESS (no namespace privileges): this defence is "
            "namespace-level only"
        )
    if r.isolation == Isolation.USER_NAMESPACE and root_only:
        pytest.skip(f"the user_namespace level (not root): {root_only}")
    assert r.isolation in (Isolation.NAMESPACES, Isolation.USER_NAMESPACE), brief(r)


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
    # A run's idle init (`sh -c 'read _'`, started by its worker's zygote; it never runs program code) is the
    # worker's own. After a run that left something behind, the next run starts a fresh one: as root it
    # runs as root, but at the user_namespace level under the caller's uid, like everything else there.
    parent_cmd = {pid: table.get(ppid, (0, 0, "", b""))[3] for pid, (_, ppid, _, _) in table.items()}
    inits = {
        pid
        for pid, (*_, cmd) in table.items()
        if cmd.endswith(b"-c\x00read _\x00") and b"zygote.py" in parent_cmd[pid]
    }
    found = []
    for pid, (uid, ppid, state, cmd) in table.items():
        if pid in before or pid == os.getpid() or pid in judge_servers or pid in inits:
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

# Three processes, each spinning for 0.6 CPU seconds: each stays under its own RLIMIT_CPU of 1 s, the run
# as a whole uses 1.8 s.
CPU_SPREAD = src("""
    import os, time
    for _ in range(3):
        if os.fork() == 0:
            start = time.process_time()
            while time.process_time() - start < 0.6:
                pass
            os._exit(0)
    for _ in range(3):
        os.wait()
""")

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


def reap_and_remove(procs, paths) -> None:
    """A test's cleanup: each process still running killed and reaped, each (cgroup) directory removed
    where it can be."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for path in paths:
        try:
            os.rmdir(path)
        except OSError:
            pass


def readable_package_copy(prefix: str):
    """For a module fixture to `yield from`: a copy of the package that uid 65534 can read, in a directory
    it can reach, removed afterwards."""
    import shutil
    import tempfile
    from pathlib import Path

    import codefoundry

    root = tempfile.mkdtemp(prefix=prefix)
    try:
        shutil.copytree(Path(codefoundry.__file__).parent, Path(root) / "codefoundry")
        for path in [root, *(str(p) for p in Path(root).rglob("*"))]:
            os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
