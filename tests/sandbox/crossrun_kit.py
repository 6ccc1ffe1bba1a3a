"""Helpers shared by the cross-run red-team suites (test_redteam_crossrun*.py): the workers and memory
cgroups of this process, a program fragment that forks with CLONE_PARENT, and the body of the
`one_worker` fixture (conftest.py)."""

from __future__ import annotations

import glob
import os
import signal
import time

from redteam_kit import _proc_table, src, wait_no_strays

from codefoundry.sandbox import cgroup, shutdown


def zygotes() -> list[int]:
    """This process's sandbox workers (zygotes are direct children of pytest)."""
    me = os.getpid()
    return [pid for pid, (_, ppid, _, cmd) in _proc_table().items() if ppid == me and b"zygote.py" in cmd]


def worker_children() -> dict[int, tuple[int, int, str, bytes]]:
    """The live children of this process's zygotes (template, judge, parse helper, the run namespace's
    init), as `_proc_table` gives them: pid -> (uid, ppid, state, cmdline)."""
    table, workers = _proc_table(), set(zygotes())
    return {pid: row for pid, row in table.items() if row[1] in workers and row[2] != "Z"}


def _worker_cgroups() -> set[str]:
    """The cgroups the sandbox's workers make (memory; CPU time), under this process's own."""
    found = set()
    for _, base in cgroup.bases("memory") + cgroup.bases("cpuacct"):
        found.update(glob.glob(os.path.join(base, "codefoundry-worker-*")))
    return found


def reversed_token(token: str) -> str:
    """Programs get secrets reversed, so that their own source (which the sandbox also holds) never
    contains what they look for."""
    return token[::-1]


# A fork whose child's parent is the program's parent (the zygote), not the program: clone(CLONE_PARENT).
CLONE_PARENT = src("""
    import ctypes, os
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.syscall.restype = ctypes.c_long
    _NR_CLONE = {'x86_64': 56, 'aarch64': 220}[os.uname().machine]

    def clone_parent():
        return _libc.syscall(_NR_CLONE, 0x00008000 | 17, 0, 0, 0, 0)  # CLONE_PARENT | SIGCHLD
""")


def one_worker_session():
    """One fresh worker for the test's consecutive runs; afterwards it is killed (not asked to stop: a break
    can leave it blocked, or holding a lock or a process), no unprivileged process may be left, and the
    cgroups of a worker killed before it could remove them are removed here."""
    shutdown()
    before, cgroups_before = set(_proc_table()), _worker_cgroups()
    yield
    for pid in zygotes():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutdown()  # reaps the killed zygotes
    strays = wait_no_strays(before)
    left = _worker_cgroups() - cgroups_before
    deadline = time.monotonic() + 3.0
    while left and time.monotonic() < deadline:
        for path in list(left):
            try:
                os.rmdir(path)
                left.discard(path)
            except FileNotFoundError:
                left.discard(path)
            except OSError:
                pass
        time.sleep(0.05)
    assert strays == [] and not left, f"left behind: {strays} {sorted(left)}"
