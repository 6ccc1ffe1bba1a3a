"""The run namespaces (`codefoundry.sandbox.runspace`) on their own, with init spawned through the shell and,
as where there is no shell, cloned: a program born in them leaves an IPC object or a child behind, and the
namespace is no longer empty; discarded, the next one is fresh and empty again. Each case runs in a
throwaway interpreter (it changes its own namespaces), as root."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="namespaces need Linux and root"
)

SCRIPT = textwrap.dedent("""
    import ctypes, os, sys, time
    from codefoundry.sandbox import jail, runspace

    shell = sys.argv[1]
    libc = ctypes.CDLL(None, use_errno=True)
    jail.unshare(jail.CLONE_NEWIPC)  # this interpreter's own IPC namespace, as the worker has
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    own_pidfd = os.pidfd_open(os.getpid())
    own_ipc = runspace.own_ipc_namespace(proc)
    space = runspace.RunNamespace(shell, proc, own_pidfd, own_ipc)

    def program(body):
        space.enter()  # our next child is born in the run's PID namespace
        pid = os.fork()
        if pid == 0:
            jail.setns(space.pidfd, jail.CLONE_NEWIPC)  # as the template does before its clone
            body()
            os._exit(0)
        jail.setns(own_pidfd, jail.CLONE_NEWPID)
        os.waitpid(pid, 0)

    def shm():
        assert libc.shmget(0x43480001, 4096, 0o1600) >= 0

    def queue():
        rt = ctypes.CDLL("librt.so.1", use_errno=True)
        assert rt.mq_open(b"/cfrt_q", os.O_CREAT | os.O_RDWR, 0o600, None) >= 0

    def daemon():
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)

    results = {}
    program(lambda: None)
    results["shares"] = space.shares_ipc
    results["nothing"] = space.empty()
    for name, body in (("shm", shm), ("queue", queue), ("daemon", daemon)):
        program(body)
        results[name] = space.empty()
        results[name + "_here"] = runspace.sysv_objects()  # never in the caller's namespace
        space.discard(lambda: None)
        program(lambda: None)
        results[name + "_fresh"] = space.empty()
    space.discard(lambda: None)
    print(results)
""")


@pytest.mark.parametrize("shell", ["/bin/sh", ""], ids=["shell-init", "cloned-init"])
def test_run_namespace_is_empty_only_without_leftovers(shell):
    done = subprocess.run([sys.executable, "-c", SCRIPT, shell], capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "unshare" in done.stderr and "Operation not permitted" in done.stderr:
        pytest.skip("namespaces are not permitted here")
    assert done.returncode == 0, done.stderr[-2000:]
    results = ast.literal_eval(done.stdout.strip())
    assert results == {
        "shares": True, "nothing": True,
        "shm": False, "shm_here": 0, "shm_fresh": True,
        "queue": False, "queue_here": 0, "queue_fresh": True,
        "daemon": False, "daemon_here": 0, "daemon_fresh": True,
    }  # fmt: skip
