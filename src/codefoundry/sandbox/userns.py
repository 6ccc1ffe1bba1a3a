"""The sandbox's level for a caller who is not root: "user_namespace".

Loaded by path into the zygote, after cgroup.py and jail.py (standard library only; Linux). Where the kernel lends
unprivileged user namespaces, the worker makes one that owns new mount, network, IPC, UTS and PID
namespaces, maps the caller's uid and gid to themselves, and from then on runs the root level's machinery
inside it, with the capabilities that namespace gives: the same read-only pivoted root, private /work and
/tmp tmpfs mounts wiped between runs, no network device, and each run's program in a PID namespace (and
IPC namespace) of its own whose end takes every process of the run with it.

The zygote is pid 1 of the worker's PID namespace: a namespace made from inside a user namespace can only
be entered back from one the user namespace owns, and the zygote enters and leaves its runs' ones. The
process worker.py started stays outside, only waiting for the zygote (whose end it passes on to the
caller), and the zygote dies with it. The worker's namespace has a /proc of its own, held by an fd only.

What differs from root's level, and why it still holds:
- One uid: programs, judge and parse helper all run as the caller, since no other uid is mapped. What
  keeps a program away from the rest is that it cannot name them (its PID namespace shows only its own
  processes and its init; the caller, the zygote, the judge and the parse helper are outside it) and
  cannot trace even what it can name: it, the judge and the parse helper hold no capability
  (`jail.drop_capabilities`; no uid 0 to exec back into) and run under a seccomp filter that denies
  ptrace, process_vm_readv/writev, pidfd_getfd and the rest of seccomp.py's list, so nothing it does
  reaches into init, which later runs share, or into another process. Where the filter cannot be set,
  this level is not used. The judge and the parse helper are also non-dumpable. The zygote and the
  template keep the namespace's capabilities (they enter the runs' namespaces) and only ever handle
  trusted data.
- The process limit counts every process of the uid in the worker's user namespace, so the worker's own
  (zygote, template, judge, parse helper, init, the waiting process) are added to a run's limit.
- A memory cgroup only where one is delegated to the caller: its own memory cgroup's directory (or, on
  cgroup v2, that one's parent) owned by the caller and writable, as systemd's `Delegate=` or an
  administrator's `chown` leaves it (cgroup.py). The worker's cgroup is made there before the user
  namespace is entered and used through fds, as at root's level. Elsewhere memory is bounded per
  process only (RLIMIT_AS), and memfd and SysV pages, which RLIMIT_AS does not count, are not bounded as
  a whole. A run's CPU time is counted as a whole by a delegated cgroup where there is one (any v2 one
  counts CPU time), else, as at root's level without one, by the run's PID namespace (cgroup.RunCpu).
- Kernel keyrings, the host's processes and its IPC objects stay out of reach as in root's level; the
  files the caller owns are out of reach because they are not in the new root, except the Python
  installation's, bound read-only.
"""

import importlib
import os
import signal
import sys

jail = sys.modules.get("codefoundry_jail") or importlib.import_module("codefoundry.sandbox.jail")
cgroup = sys.modules.get("codefoundry_cgroup") or importlib.import_module("codefoundry.sandbox.cgroup")

LEVEL = "user_namespace"
REASON = "not root: a user namespace of the worker's own (one uid, {})"
PROC_FD = -1  # the worker's PID namespace's /proc, once set up


def setup_worker(extra_ro: list[str]) -> tuple[str, str, "cgroup.Cgroups | None"]:
    """Root's level as root (`jail.setup_worker`); otherwise this level where a user namespace is lent,
    else the process level. A child tries the whole set-up first: a user namespace entered but not set up
    (its id map refused, a mount denied) could not be left again."""
    disabled = os.environ.get("CODEFOUNDRY_SANDBOX_ISOLATION") == "process"
    no_filter = jail.seccomp.probe()  # sets whether every level's processes get the filter
    unfiltered = f"no seccomp filter: {no_filter}" if no_filter else ""
    if os.geteuid() == 0 or jail.SYSCALL is None or disabled:
        level, why, groups = jail.setup_worker(extra_ro)
        return level, "; ".join(r for r in (why, unfiltered) if r), groups  # a reason: the caller warns
    uid, gid = os.getuid(), os.getgid()
    failure = unfiltered or _probe(uid, gid, extra_ro)
    if failure:
        return jail.process_level(f"not root, and no user namespace could be set up here ({failure})")
    groups = cgroup.create()  # delegated to the caller, if any
    _enter(uid, gid)
    zygote = os.fork()  # pid 1 of the worker's PID namespace
    if zygote:
        _wait_and_pass_on(zygote)
    jail.prctl(jail.PR_SET_PDEATHSIG, signal.SIGKILL)
    global PROC_FD
    PROC_FD = _inside(extra_ro)
    memory = groups.memory if groups else None
    return LEVEL, REASON.format("a delegated memory cgroup" if memory else "no memory cgroup"), groups


def _enter(uid: int, gid: int) -> None:
    jail.unshare(
        jail.CLONE_NEWUSER
        | jail.CLONE_NEWNS
        | jail.CLONE_NEWNET
        | jail.CLONE_NEWIPC
        | jail.CLONE_NEWUTS
        | jail.CLONE_NEWPID
    )
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1\n"),
        ("gid_map", f"{gid} {gid} 1\n"),
    ):
        jail._write_file(f"/proc/self/{name}", text)


def _inside(extra_ro: list[str]) -> int:
    """In the worker's first process in its PID namespace: a /proc of that namespace (kept as an fd), then
    the read-only root; returns the /proc fd."""
    jail.mount("none", "/", None, jail.MS_REC | jail.MS_PRIVATE)
    jail.mount("proc", "/proc", "proc", jail.MS_NOSUID | jail.MS_NODEV | jail.MS_NOEXEC)
    proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    jail.private_root(extra_ro)
    return proc_fd


def _probe(uid: int, gid: int, extra_ro: list[str]) -> str:
    """The whole set-up, in a child (and its child, pid 1 of the new PID namespace): "" when it worked,
    else what failed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            _enter(uid, gid)
            inner = os.fork()
            if inner == 0:
                try:
                    _inside(extra_ro)
                    os._exit(0)
                except BaseException as e:
                    os.write(write_end, f"{e}".encode()[:300])
                    os._exit(1)
            status = 0 if os.waitpid(inner, 0)[1] == 0 else 1
        except BaseException as e:
            os.write(write_end, f"{e}".encode()[:300])
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        said = f.read().decode(errors="replace")
    ok = os.waitpid(pid, 0)[1] == 0
    return "" if ok else (said or "the set-up failed")


def _wait_and_pass_on(zygote: int) -> None:
    """The process worker.py started: hold nothing (so the caller sees the zygote's pipes close when it
    ends), wait for the zygote, exit as it did. Killed, it takes the zygote along (its death signal)."""
    os.closerange(0, 1 << 16)
    _, status = os.waitpid(zygote, 0)  # retried by Python on EINTR
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 70)
