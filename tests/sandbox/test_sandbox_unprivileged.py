"""The sandbox run by a user who is not root: the `user_namespace` level (userns.py).

The suite runs as root, so these tests start a fresh interpreter as uid 65534 (`setpriv`), with a copy of
the package readable by that uid and the system's Python (root's own interpreter may live where 65534
cannot read). Where the kernel lends unprivileged user namespaces, the worker must reach the
`user_namespace` level: no address reachable, not even a server listening on 127.0.0.1, no SysV object
left on the host, no capability in the program, none of the host's files or processes in sight, no way to
trace a process even where one can be named, and a fork bomb held to the run's limit. The network, IPC
and tracing checks are run at the plain `process` level too, where the same programs do reach the server,
do leave their object and do trace a process of their uid, so the checks can tell the two apart. Last,
the whole sandbox suite (every red-team attack and verdict-forging trick) is run by uid 65534 in its own
pytest, so that each attack meets the `user_namespace` level too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from redteam_kit import CPU_SPREAD, NO_MEMORY_CGROUP, ONE_UID, readable_package_copy

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"

# Run by the unprivileged interpreter: one program per check, the findings printed as one JSON line.
_SCRIPT = """
import json, sys
from codefoundry.sandbox import Judge, Limits, execute
port, SPREAD = int(sys.argv[1]), sys.argv[2]
net = execute(f"import socket\\ns = socket.socket()\\ns.settimeout(2)\\nprint(s.connect_ex(('127.0.0.1', {port})))")
shm = execute(
    "import ctypes\\nlibc = ctypes.CDLL(None, use_errno=True)\\n"
    "print(libc.shmget(0, 4096, 0o1600))"  # IPC_PRIVATE, IPC_CREAT | 0600
)
caps = execute(
    "import ctypes\\nlibc = ctypes.CDLL(None)\\nhead = (ctypes.c_uint32 * 2)(0x20080522, 0)\\n"
    "data = (ctypes.c_uint32 * 6)()\\nlibc.capget(head, data)\\nprint(*data)"
)
# PTRACE_ATTACH on its own child (same uid, same PID namespace): allowed by the kernel, denied by seccomp.
trace = execute(
    "import ctypes, os, signal, time\\nlibc = ctypes.CDLL(None, use_errno=True)\\npid = os.fork()\\n"
    "if pid == 0:\\n    time.sleep(5)\\n    os._exit(0)\\n"
    "print(libc.ptrace(16, pid, 0, 0), ctypes.get_errno())\\nos.kill(pid, signal.SIGKILL)"
)
seen = execute("import os\\nprint(sorted(os.listdir('/')))")
bomb = execute("import os\\nwhile True:\\n    os.fork()", limits=Limits(processes=8, cpu_seconds=2))
after = execute("print(6 * 7)")
spread = execute(SPREAD, limits=Limits(cpu_seconds=1, wall_seconds=10))
judge = Judge(tests=("assert add(1, 2) == 3",), entry_point="add")
good = execute("def add(a, b):\\n    return a + b", judge=judge)
forged = execute("import os\\nos._exit(0)", judge=judge)
print(json.dumps({
    "isolation": net.isolation.value, "connect": net.stdout.strip(), "shmid": shm.stdout.strip(),
    "caps": caps.stdout.split(), "good": good.passed, "forged": forged.passed, "trace": trace.stdout.split(),
    "root": seen.stdout, "bomb": bomb.status.value, "after": after.stdout.strip(),
    "cgroup": net.extra.get("memory_cgroup"), "filter": net.extra.get("syscall_filter"),
    "run_cpu": net.extra.get("run_cpu_limit"),
    "spread": [spread.status.value, spread.message, spread.cpu_seconds],
}))
"""


def _can_switch_user() -> str | None:
    if os.geteuid() != 0:
        return "needs root to start a process as another uid"
    if shutil.which("setpriv") is None or not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"needs setpriv and {SYSTEM_PYTHON}"
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                             capture_output=True, text=True)  # fmt: skip
    if version.stdout.strip() != "True":
        return f"{SYSTEM_PYTHON} is older than 3.11"
    return None


pytestmark = pytest.mark.skipif(_can_switch_user() is not None, reason=str(_can_switch_user()))


def _as_nobody(args: list[str], env: dict[str, str] | None = None, *, cgroups: tuple[Path, ...] = (),
               **kw) -> subprocess.CompletedProcess:  # fmt: skip
    """`args` run as uid 65534 with only PATH and `env` in its environment; inside `cgroups` if given."""
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "env", "-i",
           "PATH=/usr/bin:/bin", *(f"{k}={v}" for k, v in (env or {}).items()), *args]  # fmt: skip
    if cgroups:  # joined by a shell that then becomes the command
        procs = " ".join(str(c / "cgroup.procs") for c in cgroups)
        cmd = ["sh", "-c", 'for f in $0; do echo $$ > "$f" || exit 1; done; exec "$@"', procs, *cmd]
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, capture_output=True, text=True, cwd="/", **kw)


@pytest.fixture(scope="module")
def package():
    """A copy of the package that uid 65534 can read, in a directory it can reach."""
    yield from readable_package_copy("cf-unprivileged-")


def _nobody_segments() -> set[str]:
    """Ids of the host's SysV shared memory segments owned by uid 65534."""
    with open("/proc/sysvipc/shm") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return {row[1] for row in rows if len(row) > 7 and row[7] == str(NOBODY)}


def _findings(package: str, *, level: str | None) -> tuple[dict, str]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    env = {"PYTHONPATH": package} | ({"CODEFOUNDRY_SANDBOX_ISOLATION": level} if level else {})
    try:
        out = _as_nobody([SYSTEM_PYTHON, "-c", _SCRIPT, str(server.getsockname()[1]), CPU_SPREAD], env)
    finally:
        server.close()
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def _userns_lent() -> bool:
    probe = _as_nobody(["unshare", "--user", "--net", "--map-current-user", "true"])
    return probe.returncode == 0


def test_unprivileged_worker_cuts_network_and_ipc_and_holds_no_capability(package):
    before = _nobody_segments()
    found, stderr = _findings(package, level=None)
    left = _nobody_segments() - before
    if not _userns_lent():
        assert found["isolation"] == "process", found
        assert "no user namespace" in stderr
        pytest.skip("this kernel lends no unprivileged user namespace: the process level, said so")
    assert found["isolation"] == "user_namespace", (found, stderr)
    assert "weaker isolation" in stderr  # still weaker than root's level, and said once
    assert found["cgroup"] is False and "no memory cgroup" in stderr  # none delegated to 65534 here
    # The run's CPU time, with no cgroup to count it, counted by its PID namespace: one limit for all.
    assert found["run_cpu"] == "pid_namespace" and found["spread"][0] == "timeout", found
    assert "together" in found["spread"][1] and found["spread"][2] < 1.6, found
    assert found["connect"] == "101", found  # ENETUNREACH: no device is up in the worker's namespace
    assert int(found["shmid"]) >= 0, found  # made, in the worker's IPC namespace ...
    assert not left, left  # ... and gone with it
    assert found["caps"] == ["0"] * 6, found  # effective, permitted, inheritable: none
    assert found["trace"] == ["-1", "1"] and found["filter"] is True, found  # EPERM, from the seccomp filter
    assert "home" not in found["root"] and "root" not in found["root"] and "proc" not in found["root"], found
    assert found["bomb"] != "ok" and found["after"] == "42", found
    assert found["good"] is True and found["forged"] is False, found


def test_the_same_programs_at_process_level_reach_the_server_and_leave_the_segment(package):
    """The contrast that shows the checks above can fail: forced to the process level, the programs
    connect to 127.0.0.1 and leave their segment on the host (removed here)."""
    before = _nobody_segments()
    found, _ = _findings(package, level="process")
    left = _nobody_segments() - before
    for shmid in left:
        subprocess.run(["ipcrm", "-m", shmid], check=False)
    assert found["isolation"] == "process", found
    assert found["connect"] == "0", found
    assert found["trace"] == ["-1", "1"] and found["filter"] is True, found  # the filter is on at every level
    assert left, "the process level is expected to leave the segment on the host"
    assert found["good"] is True and found["forged"] is False, found
    # CPU time limited per process there: the spread runs to its end (and is then judged on what the
    # program and the children it waited for used), rather than being ended at the limit.
    assert found["run_cpu"] is None and found["spread"][2] >= 1.7 and "together" not in found["spread"][1]


def test_where_no_user_namespace_is_lent_the_level_is_process_and_says_why(package):
    """The kernel here lends user namespaces, so their refusal is played by the function that enters one
    (in a fresh interpreter, as uid 65534): the child that tries the set-up first fails inside the new
    namespaces, and the worker stays at the process level, never inside a namespace it could not finish
    setting up."""
    if not _userns_lent():
        pytest.skip("this kernel lends no unprivileged user namespace")
    code = (
        "import os\n"
        "from codefoundry.sandbox import userns\n"
        "def refuse(extra_ro):\n"
        "    raise OSError(1, 'mount /proc: Operation not permitted')\n"
        "userns._inside = refuse\n"
        "before = os.readlink('/proc/self/ns/user')\n"
        "level, why, _ = userns.setup_worker([])\n"
        "print(level, before == os.readlink('/proc/self/ns/user'), why)\n"
    )
    out = _as_nobody([SYSTEM_PYTHON, "-c", code], {"PYTHONPATH": package})
    assert out.stdout.startswith(
        "process True not root, and no user namespace could be set up here ([Errno 1] mount /proc"
    ), out.stdout + out.stderr


def _copy_module(name: str, dest: Path) -> None:
    """The package (or single-file module) `name` that this interpreter imports, copied into `dest`."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, name
    origin = Path(spec.origin)
    if origin.name == "__init__.py":
        shutil.copytree(origin.parent, dest / origin.parent.name)
    else:
        shutil.copy(origin, dest / origin.name)


def _nobody_processes() -> list[str]:
    """The command lines of the host's processes running as uid 65534."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == NOBODY:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    found.append(f"{pid}: {f.read().replace(bytes(1), b' ').decode(errors='replace')}")
        except OSError:
            pass  # gone meanwhile
    return found


@contextlib.contextmanager
def _delegated_cgroup(controller: str, version: int | None = None):
    """A cgroup of `controller` ("memory" or "cpuacct") handed to uid 65534 the way systemd's `Delegate=`
    hands one to a user (the directory and its files chowned), under this process's own, with a leaf inside
    for the caller's processes: yields that leaf and its version, or None where none can be made here."""
    from codefoundry.sandbox import cgroup

    bases = [b for b in cgroup.bases(controller) if version is None or b[0] == version]
    if not bases:
        yield None
        return
    version, base = bases[0]
    top = Path(base) / f"cf-delegated-{controller}-{os.getpid()}"
    try:
        if version == 2 and controller == "memory":
            (Path(base) / "cgroup.subtree_control").write_text("+memory")
        top.mkdir()
        (top / "caller").mkdir()
        if version == 2 and controller == "memory":
            (top / "cgroup.subtree_control").write_text("+memory")
        for path in [top, *top.iterdir(), *(top / "caller").iterdir()]:
            os.chown(path, NOBODY, NOBODY)
    except OSError:
        for path in (top / "caller", top):
            with contextlib.suppress(OSError):
                path.rmdir()
        yield None
        return
    try:
        yield top / "caller", version
    finally:
        deadline = time.monotonic() + 10  # the worker's processes leave it as the kernel tears them down
        for path in (top / "caller", top):
            while path.exists():
                try:
                    path.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)


def test_red_team_suites_hold_at_the_user_namespace_level():
    """The whole sandbox suite (every red-team attack, every verdict-forging trick, the cross-run and
    basic checks) run by uid 65534, so that its workers reach the user_namespace level: nothing may fail.
    A defence that level lacks is skipped by name (no memory cgroup; one uid for the whole worker), and
    afterwards no process of that uid and no file of its runs is left on the host."""
    if not _userns_lent():
        pytest.skip("this kernel lends no unprivileged user namespace")
    before = _nobody_processes()
    root = Path(tempfile.mkdtemp(prefix="cf-redteam-nobody-"))
    try:
        (root / "lib").mkdir()
        for name in ("codefoundry", "tqdm", "pytest", "_pytest", "pluggy", "iniconfig", "packaging", "py"):
            if name != "py" or importlib.util.find_spec(name) is not None:
                _copy_module(name, root / "lib")
        shutil.copytree(Path(__file__).parent, root / "tests" / "sandbox",
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        shutil.copy(Path(__file__).parents[2] / "pyproject.toml", root)  # the markers and warning filters
        (root / "home").mkdir()  # the caller's home, where a secret is planted
        for path in [root, *root.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chown(root / "home", NOBODY, NOBODY)
        env = {"PYTHONPATH": str(root / "lib"), "HOME": str(root / "home")}
        args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(root / "tests" / "sandbox"),
                "--ignore", str(root / "tests" / "sandbox" / Path(__file__).name)]  # fmt: skip
        # Delegated cgroups, so that the memory bombs meet a bound on the whole run, and the CPU spread
        # over processes a limit on the whole run (a v2 memory cgroup counts CPU time too).
        with contextlib.ExitStack() as stack:
            memory = stack.enter_context(_delegated_cgroup("memory"))
            cpu = (
                memory if memory and memory[1] == 2 else stack.enter_context(_delegated_cgroup("cpuacct", 1))
            )
            leaves = tuple(dict.fromkeys(d[0] for d in (memory, cpu) if d is not None))
            out = _as_nobody([SYSTEM_PYTHON, *args], env, cgroups=leaves, timeout=900)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = out.stdout[-6000:] + out.stderr[-2000:]
    assert out.returncode == 0, report
    counts = dict((kind, int(n)) for n, kind in re.findall(r"(\d+) (passed|skipped|failed|xfailed)", report))
    assert counts.get("passed", 0) >= 300 and not counts.get("failed"), report
    assert "Isolation.PROCESS" not in report, report  # no defence skipped for want of any namespace
    skipped_here = re.findall(r"the user_namespace level \(not root\): (.*)", report)
    lacks = {ONE_UID}
    if memory is None:
        lacks.add(NO_MEMORY_CGROUP)
    assert set(skipped_here) <= lacks, report
    deadline = time.monotonic() + 10  # a worker's namespace is torn down by the kernel after pytest exits
    while (left := [p for p in _nobody_processes() if p not in before]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, left
    runs = [p for p in Path(tempfile.gettempdir()).glob("cf-run-*") if p.stat().st_uid == NOBODY]
    assert not runs, runs
