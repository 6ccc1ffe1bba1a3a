"""The system-call filter (sandbox/seccomp.py): its table against the C library's headers, what it denies
and allows in a process of our own, and, in the sandbox, one attack per test on the calls it closes."""

from __future__ import annotations

import ast
import ctypes
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from redteam_kit import assert_contained, assert_healthy, brief, run, src

from codefoundry.sandbox import Status, execute, seccomp

MACHINE = os.uname().machine
pytestmark = pytest.mark.skipif(MACHINE not in seccomp.AUDIT_ARCH, reason=f"no filter for {MACHINE}")
COLUMN = 0 if MACHINE == "x86_64" else 1
CALLS = {**seccomp.DENIED, **seccomp.ABSENT, **{name: nrs for name, (nrs, _) in seccomp.FLAGGED.items()}}


def test_numbers_match_the_c_headers(tmp_path):
    """x86_64's numbers from <sys/syscall.h> (compiled here), aarch64's from the generic table it uses."""
    checked = 0
    if MACHINE == "x86_64" and shutil.which("gcc"):
        lines = [f'#ifdef SYS_{n}\nprintf("{n} %d\\n", SYS_{n});\n#endif' for n in CALLS]
        (tmp_path / "nr.c").write_text("#include <stdio.h>\n#include <sys/syscall.h>\nint main(void) {\n"
                                       + "\n".join(lines) + "\nreturn 0;\n}\n")  # fmt: skip
        subprocess.run(["gcc", "-o", tmp_path / "nr", tmp_path / "nr.c"], check=True)
        out = subprocess.run([tmp_path / "nr"], capture_output=True, text=True, check=True).stdout
        found = {name: int(nr) for name, nr in (line.split() for line in out.splitlines())}
        assert "ptrace" in found and found == {n: CALLS[n][0] for n in found}  # older headers lack new calls
        checked += 1
    generic = "/usr/include/asm-generic/unistd.h"
    if os.path.exists(generic):
        with open(generic) as f:
            table = {m[1]: int(m[2]) for m in re.finditer(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", f.read())}
        known = [n for n in CALLS if n in table or CALLS[n][1] is None]
        assert "ptrace" in known and {n: table.get(n) for n in known} == {n: CALLS[n][1] for n in known}
        checked += 1
    if not checked:
        pytest.skip("neither gcc with <sys/syscall.h> nor asm-generic/unistd.h here")


def _in_filtered_child(body) -> tuple[int, str]:
    """Run `body()` (returning text) in a forked child under the filter, as uid 65534 when we are root, so
    that a call the filter failed to stop could change nothing; (exit status, its text)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.setsid()  # no controlling terminal
            if os.geteuid() == 0:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
            seccomp.install()
            os.write(write_end, body().encode())
            code = 0
        except BaseException as e:
            os.write(write_end, f"{type(e).__name__}: {e}".encode())
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        text = f.read()
    return os.waitpid(pid, 0)[1], text


def test_each_listed_call_fails_with_its_errno_and_the_rest_work():
    libc = ctypes.CDLL(None, use_errno=True)

    def body() -> str:
        got = {}
        for name, nrs in {**seccomp.DENIED, **seccomp.ABSENT}.items():
            if nrs[COLUMN] is not None:
                ctypes.set_errno(0)
                got[name] = (libc.syscall(nrs[COLUMN], 0, 0, 0, 0, 0, 0), ctypes.get_errno())
        for name, flags in (
            ("clone", seccomp.CLONE_NEWUSER | signal.SIGCHLD),
            ("unshare", seccomp.CLONE_NEWUSER),
            ("unshare", 0x20000000),
            ("unshare", seccomp.CLONE_NEWTIME),
            ("unshare", 0),
        ):  # NEWUSER twice, NEWPID, NEWTIME, nothing
            ctypes.set_errno(0)
            got[f"{name}({flags:#x})"] = (
                libc.syscall(CALLS[name][COLUMN], flags, 0, 0, 0, 0),
                ctypes.get_errno(),
            )
        child = os.fork()  # clone without namespace flags
        if child == 0:
            os._exit(7)
        got["fork"] = (os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), 0)
        spawned = subprocess.run(["/bin/sh", "-c", "echo $((6 * 7))"], capture_output=True, text=True)
        got["spawn"] = (int(spawned.stdout), 0)  # posix_spawn: clone3 (ENOSYS), then clone
        return repr(got)

    status, text = _in_filtered_child(body)
    assert status == 0, text
    got = ast.literal_eval(text)
    for name, nrs in seccomp.DENIED.items():
        if nrs[COLUMN] is not None:
            assert got[name] == (-1, errno.EPERM), name
    for name in seccomp.ABSENT:
        assert got[name] == (-1, errno.ENOSYS), name
    assert (
        got["clone(0x10000011)"]
        == got["unshare(0x10000000)"]
        == got["unshare(0x20000000)"]
        == got["unshare(0x80)"]
        == (-1, errno.EPERM)
    )
    assert got["unshare(0x0)"] == (0, 0)  # no namespace: allowed
    assert got["fork"] == (7, 0) and got["spawn"] == (42, 0)


def test_probe_says_the_filter_works_here():
    assert seccomp.probe() == "" and seccomp.ENABLED


# -- in the sandbox: one attack per test, each exits 0 only if it got through ----------------------------------
_SYSCALL = f"""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    NR = {{name: nrs[{COLUMN}] for name, nrs in {CALLS!r}.items()}}
    def call(name, *args):
        ctypes.set_errno(0)
        ret = libc.syscall(NR[name], *args)
        print(name, ret, ctypes.get_errno())
        return ret
"""


def _attack(body: str):
    r = run(src(_SYSCALL) + textwrap.dedent(body))
    assert r.extra.get("syscall_filter") is True, brief(r)
    return r


def test_own_user_namespace_to_become_root():
    r = _attack("""
        if call("unshare", 0x10000000 | 0x00020000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
            sys.exit(1)
        uid = os.getuid()
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        sys.exit(0 if os.getuid() == 0 else 1)
    """)
    assert_contained(r, Status.FAILED)
    assert "unshare -1 1\n" in r.stdout, brief(r)  # EPERM


def test_clone_into_new_namespaces():
    r = _attack("""
        pid = call("clone", 0x10000000 | 0x20000000 | 0x40000000 | 17, 0, 0, 0, 0)  # USER|PID|NET, SIGCHLD
        if pid == 0:
            os._exit(0)
        sys.exit(1 if pid < 0 else 0)
    """)
    assert_contained(r, Status.FAILED)
    assert "clone -1 1\n" in r.stdout, brief(r)


@pytest.mark.parametrize("name, args, err", [
    ("bpf", (0, 0, 0), errno.EPERM),  # BPF_MAP_CREATE
    ("perf_event_open", (0, 0, -1, -1, 0), errno.EPERM),
    ("userfaultfd", (0,), errno.EPERM),
    ("io_uring_setup", (8, 0), errno.ENOSYS),
    ("add_key", (b"user", b"cf", b"secret", 6, -3), errno.EPERM),  # into the session keyring
    ("syslog", (10, 0, 0), errno.EPERM),  # the kernel log's size; reading it follows
    ("ptrace", (0, 0, 0, 0), errno.EPERM),  # PTRACE_TRACEME
])  # fmt: skip
def test_kernel_interface(name, args, err):
    r = _attack(f"""
        ret = call({name!r}, *{args!r})
        sys.exit(0 if ret >= 0 else 1)
    """)
    assert_contained(r, Status.FAILED)
    assert f"{name} -1 {err}\n" in r.stdout, brief(r)


@pytest.mark.skipif(MACHINE != "x86_64", reason="int 0x80 is x86's")
def test_foreign_abi_call_kills():
    """i386's getpid (20) through int 0x80: the filter's numbers are x86_64's, so the process is killed."""
    r = _attack("""
        import mmap
        code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])  # mov eax, 20; int 0x80; ret
        page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(code)
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        print("pid", ctypes.CFUNCTYPE(ctypes.c_int)(address)(), flush=True)
        sys.exit(0)
    """)
    assert_contained(r, Status.KILLED)
    assert r.signal == signal.SIGSYS and "pid" not in r.stdout, brief(r)


def test_threads_processes_and_other_languages_still_run():
    r = run(
        src("""
        import subprocess, threading
        box = []
        t = threading.Thread(target=box.append, args=(1,))
        t.start(); t.join()
        out = subprocess.run(["/bin/sh", "-c", "echo spawned"], capture_output=True, text=True).stdout
        print(box, out.strip())
    """)
    )
    assert r.passed and r.stdout == "[1] spawned\n", brief(r)
    js = execute("require('fs').readFile('/etc/hostname', () => console.log('read'))", language="javascript")
    assert js.passed and js.stdout == "read\n", brief(js)
    assert_healthy()


def test_without_the_filter_results_say_so_and_runs_still_work(tmp_path):
    """Where the kernel refuses the filter (played by a copy of the package whose filter knows no
    architecture), the pool warns once, every result says `syscall_filter: False`, the uid's keyrings
    are cleared instead, and runs are served as before."""
    package = Path(seccomp.__file__).parents[1]
    shutil.copytree(package, tmp_path / "codefoundry", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "codefoundry" / "sandbox" / "seccomp.py", "a") as f:
        f.write("\nAUDIT_ARCH = {}  # the test's: no filter for any machine\n")
    head = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
    nr = {name: CALLS[name][COLUMN] for name in ("kcmp", "add_key", "keyctl")}
    programs = [  # kcmp with pids 0 (ESRCH where it reaches the kernel); a key added, then looked for
        head + f"print(libc.syscall({nr['kcmp']}, 0, 0, 0, 0, 0), ctypes.get_errno())",
        head + f"print(libc.syscall({nr['add_key']}, b'user', b'cf-s29', b'x', 1, ctypes.c_long(-4)) > 0)",
        head + f"print(libc.syscall({nr['keyctl']}, 10, ctypes.c_long(-4), b'user', b'cf-s29', 0) > 0)",
    ]  # KEY_SPEC_USER_KEYRING -4, KEYCTL_SEARCH 10
    script = textwrap.dedent(f"""
        import json
        from codefoundry.sandbox import execute_many
        rs = execute_many({programs!r}, workers=1, progress=False)
        print(json.dumps([{{"isolation": r.isolation.value, "extra": r.extra, "status": r.status.value,
                           "stdout": r.stdout}} for r in rs]))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no seccomp filter: none for" in out.stderr, out.stderr[-2000:]  # the one warning says why
    kcmp, add, search = json.loads(out.stdout.splitlines()[-1])
    for found in (kcmp, add, search):
        assert found["extra"]["syscall_filter"] is False and found["status"] == "ok", found
    assert kcmp["stdout"] == f"-1 {errno.ESRCH}\n", kcmp  # kcmp reached the kernel: no such process
    if kcmp["isolation"] != "process":  # the keyrings are the uid's: cleared before each run
        assert add["stdout"] == "True\n" and search["stdout"] == "False\n", (add, search)
    found = kcmp
    if os.geteuid() == 0:
        assert found["isolation"] == "namespaces", found
    else:  # the user_namespace level is never used without the filter
        assert found["isolation"] == "process", found
