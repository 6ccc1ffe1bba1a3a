"""Red-team round 35: the system-call filter, the worker's cgroups and namespaces, attacked by a program.

One attack per test; each program exits 0 only when its attack got through. The holes this round closed:
a vsock socket (no network namespace bounds it: it reaches a virtual machine's host, and its ports are
the whole machine's), the host's uevents read through netlink, the mount table read through statmount and
listmount (what /proc, absent inside, would show), the machine's whole Linux AIO budget held by one run,
and swap, which let a run's pages outgrow its memory limit where the host swaps, and a host mount under a
bound system directory, which stayed writable (jail._read_only_below). Last, a few attacks the defences
already stop, kept so that they stay stopped.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import subprocess
import sys

import pytest
from crossrun_kit import _worker_cgroups
from redteam_kit import ONE_UID, assert_contained, assert_healthy, brief, needs_namespaces, run, src

from codefoundry.sandbox import Status, cgroup, seccomp

MACHINE = os.uname().machine
LISTMOUNT = 458  # x86_64 and aarch64 alike
pytestmark = pytest.mark.skipif(MACHINE not in seccomp.AUDIT_ARCH, reason=f"no filter for {MACHINE}")


def _filtered(prog: str):
    r = run(src(prog))
    assert r.extra.get("syscall_filter") is True, brief(r)
    return r


def test_socket_call_numbers_match_the_c_headers(tmp_path):
    if MACHINE != "x86_64" or not shutil.which("gcc"):
        pytest.skip("checked against x86_64's <sys/syscall.h> only")
    names = [*seccomp.SOCKET_CALLS, "statmount", "listmount"]
    lines = "".join(f'#ifdef SYS_{n}\nprintf("{n} %d\\n", SYS_{n});\n#endif\n' for n in names)
    (tmp_path / "nr.c").write_text(
        f"#include <stdio.h>\n#include <sys/syscall.h>\nint main(void) {{\n{lines}}}\n"
    )
    subprocess.run(["gcc", "-o", tmp_path / "nr", tmp_path / "nr.c"], check=True)
    out = subprocess.run([tmp_path / "nr"], capture_output=True, text=True, check=True).stdout
    found = {name: int(nr) for name, nr in (line.split() for line in out.splitlines())}
    calls = {**seccomp.SOCKET_CALLS, **seccomp.DENIED}
    assert "socket" in found and found == {n: calls[n][0] for n in found}


# -- holes closed --------------------------------------------------------------------------------------------
def test_vsock_socket_is_refused():
    """A vsock socket is bound in the whole machine's port space and connects to the VM's host (CID 2),
    past the worker's network namespace. Bound to any port here (nothing on the host is contacted)."""
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except (OSError, AttributeError):
        pytest.skip("this host has no vsock: the attack has nothing to reach")
    r = _filtered("""
        import socket, sys
        try:
            s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            s.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))
            s.listen()
        except OSError as e:
            print('refused', e.errno)
            sys.exit(1)
        print('bound', s.getsockname())
    """)
    assert_contained(r, Status.FAILED)
    assert r.stdout == f"refused {errno.EAFNOSUPPORT}\n", brief(r)


def test_host_uevents_cannot_be_subscribed_to():
    """The kernel's uevents (devices added and removed, modules loaded) go to every network namespace the
    host's user namespace owns, the worker's too: a program subscribed to them learnt the host's device
    events, and, as any run's socket(AF_X) can load a module, what another worker's program did."""
    r = _filtered("""
        import socket, sys
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)  # NETLINK_KOBJECT_UEVENT
            s.bind((0, 1))  # the kernel's multicast group
        except OSError as e:
            print('refused', e.errno)
            sys.exit(1)
        print('subscribed')
    """)
    assert_contained(r, Status.FAILED)
    assert r.stdout == f"refused {errno.EPROTONOSUPPORT}\n", brief(r)


def test_mount_table_is_not_listed():
    """listmount and statmount showed every mount of the worker's namespace (the host's block device,
    its options, the binds' host paths): what /proc/self/mountinfo would, and there is no /proc inside."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(LISTMOUNT, 0, 0, 0, 0) == -1 and ctypes.get_errno() == errno.ENOSYS:
        pytest.skip("this kernel has no listmount (before Linux 6.8)")
    r = _filtered(f"""
        import ctypes, struct, sys
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        req = ctypes.create_string_buffer(struct.pack('<IIQQ', 24, 0, 2 ** 64 - 1, 0))  # LSMT_ROOT
        ids = (ctypes.c_uint64 * 64)()
        n = libc.syscall({LISTMOUNT}, req, ids, ctypes.c_long(64), ctypes.c_long(0))
        print('mounts', n, ctypes.get_errno())
        sys.exit(0 if n > 0 else 1)
    """)
    assert_contained(r, Status.FAILED)
    assert r.stdout == f"mounts -1 {errno.EPERM}\n", brief(r)


def test_linux_aio_budget_of_the_machine_cannot_be_held():
    """The events io_setup reserves come from one budget for the whole machine (fs.aio-max-nr), bound by
    no namespace or cgroup: a run took all of it, and while it ran every io_setup of the host and of the
    other workers failed with EAGAIN."""
    with open("/proc/sys/fs/aio-max-nr") as f:
        budget = int(f.read())
    r = _filtered(f"""
        import ctypes, sys
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        nr = {{'x86_64': 206, 'aarch64': 0}}[__import__('os').uname().machine]
        held, contexts, err = 0, [], 0
        while held < {budget}:
            ctx = ctypes.c_ulong(0)
            if libc.syscall(nr, ctypes.c_long(4096), ctypes.byref(ctx)) != 0:
                err = ctypes.get_errno()
                break
            contexts.append(ctx)
            held += 4096
        print('aio', held, err)
        sys.exit(0 if held else 1)
    """)
    assert_contained(r, Status.FAILED)
    assert r.stdout == f"aio 0 {errno.ENOSYS}\n", brief(r)


def test_a_runs_memory_cannot_spill_into_swap(one_worker):
    """Past its memory limit a run's pages (memfd, SysV, tmpfs ones too) were swapped out rather than the
    run ended: where the host swaps, a run held as much again as the swap would take. The worker's memory
    cgroup must leave it no swap: v1's memory-and-swap limit equal to the memory limit, v2's swap at 0."""
    r = run("print(1)")
    needs_namespaces(r)
    if not r.extra.get("memory_cgroup"):
        pytest.skip("no memory cgroup for this worker")
    checked = 0
    for path in _worker_cgroups():
        for version, limit_file in cgroup.LIMIT_FILES.items():
            swap_file = os.path.join(path, {1: "memory.memsw.limit_in_bytes", 2: "memory.swap.max"}[version])
            if os.path.exists(os.path.join(path, limit_file)) and os.path.exists(swap_file):
                with open(os.path.join(path, limit_file)) as f, open(swap_file) as g:
                    limit, swap = f.read().strip(), g.read().strip()
                assert swap == (limit if version == 1 else "0"), (path, limit, swap)
                checked += 1
    if not checked:
        pytest.skip("the kernel keeps no swap account here")
    assert_healthy()


# -- found, fixed elsewhere ---------------------------------------------------------------------------------
_PLANT = """
import os, sys
try:
    with open('/opt/vol/planted', 'w') as f:
        f.write('from the sandbox')
    print('WROTE', os.listdir('/opt/vol'))
except OSError as e:
    print('refused', e.errno)
    sys.exit(1)
"""


def test_a_host_mount_under_a_bound_directory_is_read_only():
    """The system directories are bound recursively, but only the top mount of each bind was remounted
    read-only, nosuid, nodev: a host mount under one (a volume under /opt, Docker's /etc/hosts) kept its
    own flags, and a program wrote to the host's filesystem through it. Played in a mount namespace of the
    test's own: a tmpfs on /opt, and under it a world-writable one, as a shared volume is."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to lay out mounts of its own")
    if sys.prefix.startswith("/opt/") or sys.base_prefix.startswith("/opt/"):
        pytest.skip("this Python lives in /opt, which the test covers")
    script = (
        f"from codefoundry.sandbox import execute\nr = execute({_PLANT!r})\nprint(r.status.value, r.stdout)"
    )
    layout = (
        "mount -t tmpfs -o size=1m tmpfs /opt && mkdir /opt/vol"
        " && mount -t tmpfs -o size=1m,mode=1777 tmpfs /opt/vol"
    )
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{layout} && exec "$0" -c "$1"',
         sys.executable, script],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("failed refused"), out.stdout + out.stderr[-2000:]


# -- contained, kept so --------------------------------------------------------------------------------------
def test_the_families_programs_use_still_work():
    """The filter's socket allow-list leaves what runtimes need: Unix socket pairs (asyncio,
    multiprocessing), IPv4/IPv6 sockets, netlink (glibc's interface and address look-ups)."""
    r = _filtered("""
        import asyncio, socket
        a, b = socket.socketpair()
        a.sendall(b'x')
        got = [b.recv(1), socket.if_nameindex()[0][1]]
        for family in (socket.AF_INET, socket.AF_INET6):
            socket.socket(family, socket.SOCK_DGRAM).close()
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE).close()
        asyncio.run(asyncio.sleep(0))
        print(got)
    """)
    assert r.passed and r.stdout == "[b'x', 'lo']\n", brief(r)


def test_a_namespace_fd_of_init_is_refused():
    """pidfd_open(1) names the run's init, a root process; asking the pidfd for init's namespaces
    (PIDFD_GET_*_NAMESPACE, Linux 6.11) needs the right to trace it, which the program's uid lacks."""
    r = _filtered("""
        import ctypes, os, sys
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.syscall(434, 1, 0)  # pidfd_open
        if fd < 0:
            sys.exit(1)
        got = [n for n in range(1, 11) if libc.ioctl(fd, (0xFF << 8) | n, 0) >= 0]
        print('namespaces', got)
        sys.exit(0 if got else 1)
    """)
    needs_namespaces(r, root_only=ONE_UID)
    assert_contained(r, Status.FAILED)


def test_a_crash_leaves_no_core_file():
    """A core file is the crashed process's whole memory written to its directory (or, where the pattern
    is a pipe, handed to a helper on the host): the hard limit of 1 byte allows none, whatever the program
    asks (a core needs a whole page; 1 rather than 0 because a piping pattern honours only 1)."""
    with open("/proc/sys/kernel/core_pattern") as f:
        pattern = f.read().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"cores go to {pattern!r} here, outside the run's directory")
    r = run(
        src("""
        import os, resource, sys
        hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
        except (ValueError, OSError):
            pass
        child = os.fork()
        if child == 0:
            os.abort()
        os.waitpid(child, 0)
        cores = [name for name in os.listdir('.') if name.startswith('core')]
        print('cores', hard, cores)
        sys.exit(0 if cores else 1)
    """)
    )
    needs_namespaces(r)
    assert_contained(r, Status.FAILED)
    assert r.stdout == "cores 1 []\n", brief(r)
