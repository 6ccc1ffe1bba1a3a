"""System-level building blocks of the sandbox worker: namespaces, mounts, clone, privileges, limits.

Loaded by path into the zygote (standard library only). Linux only; every call raises OSError with the
failing operation's name.
"""

import ctypes
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
_SYSCALLS = {"x86_64": {"clone": 56, "pivot_root": 155}, "aarch64": {"clone": 220, "pivot_root": 41}}
SYSCALL = _SYSCALLS.get(os.uname().machine)
RO_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
DEVICES = ("null", "zero", "full", "random", "urandom")
NEWROOT = "/tmp/.cf-root"
RUN_DIRS = ("/work", "/tmp")  # per-worker tmpfs mounts, replaced by fresh ones after any run that wrote there

_libc = ctypes.CDLL(None, use_errno=True)
_libc_gil = ctypes.PyDLL(None, use_errno=True)  # calls that keep the GIL held, as os.fork does


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s: str | None) -> bytes | None:
    return s.encode() if s is not None else None


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(src: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(src), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), f"mount {target}")


def umount(target: str) -> None:
    _check(_libc.umount2(_b(target), MNT_DETACH), f"umount {target}")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), "prctl")


def clone_new_pid_namespace() -> int:
    """fork() into a new PID namespace: the child is its pid 1. One clone system call, with CPython's own
    before/after-fork handling around it, so the zygote need not fork a helper to call unshare."""
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = _libc_gil.syscall(ctypes.c_long(SYSCALL["clone"]), ctypes.c_ulong(CLONE_NEWPID | signal.SIGCHLD),
                            ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))  # fmt: skip
    err = ctypes.get_errno()
    if pid == 0:
        api.PyOS_AfterFork_Child()
    else:
        api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


def setup_worker(extra_ro: list[str]) -> tuple[str, str]:
    """Enter the worker's own network, mount, IPC and UTS namespaces and pivot into a read-only root.
    Returns the isolation level reached and, when it is the weaker one, why."""
    if os.environ.get("CODEFOUNDRY_SANDBOX_ISOLATION") == "process":
        return "process", "namespaces disabled by CODEFOUNDRY_SANDBOX_ISOLATION=process"
    if os.geteuid() != 0 or SYSCALL is None:
        return "process", "not root (or an unknown architecture): cannot create namespaces"
    try:
        unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
    except OSError as e:
        return "process", f"namespaces unavailable ({e})"
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=755")
    os.mkdir(NEWROOT, 0o755)
    mount("tmpfs", NEWROOT, "tmpfs", MS_NOSUID | MS_NODEV, "size=2m,mode=755")
    paths = [*RO_DIRS, sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))]
    for path in paths + list(extra_ro):
        _expose(path)
    os.makedirs(NEWROOT + "/dev", exist_ok=True)
    for dev in DEVICES:
        open(f"{NEWROOT}/dev/{dev}", "w").close()
        mount(f"/dev/{dev}", f"{NEWROOT}/dev/{dev}", None, MS_BIND)
    os.symlink("/proc/self/fd", f"{NEWROOT}/dev/fd")  # dangling by design: there is no /proc
    for d in (*RUN_DIRS, "/.old"):
        os.makedirs(NEWROOT + d, exist_ok=True)
    os.chdir(NEWROOT)
    _check(_libc.syscall(SYSCALL["pivot_root"], b".", b".old"), "pivot_root")
    os.chdir("/")
    umount("/.old")
    os.rmdir("/.old")
    mount("none", "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return "namespaces", ""


def fresh_run_dirs(uid: int, disk_mb: int) -> None:
    """Give the next run an empty /work (owned by its uid) and /tmp: unmount the used ones, mount anew."""
    for d in RUN_DIRS:
        if os.path.ismount(d):
            umount(d)
        opts = f"size={disk_mb}m,nr_inodes=4096," + (
            f"mode=700,uid={uid},gid={uid}" if d == "/work" else "mode=1777"
        )
        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, opts)


def _expose(path: str) -> None:
    """Recreate `path` inside the new root: a symlink stays a symlink, a directory is bound read-only."""
    if not path or not os.path.lexists(path):
        return
    inside = NEWROOT + path
    covered = any(path.startswith(p + "/") for p in RO_DIRS if os.path.isdir(p) and not os.path.islink(p))
    if os.path.lexists(inside) or covered:
        return
    if os.path.islink(path):
        os.makedirs(os.path.dirname(inside), exist_ok=True)
        os.symlink(os.readlink(path), inside)
        real = os.path.realpath(path)
        if real != path:
            _expose(real)
        return
    if os.path.isdir(path):
        os.makedirs(inside, exist_ok=True)
        mount(path, inside, None, MS_BIND | MS_REC)
        mount("none", inside, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def arrange_fds(keep: dict[int, int]) -> None:
    """Move the fds a process needs to their fixed numbers and close every other one."""
    moved = {target: os.dup(src) for target, src in keep.items()}
    for target, fd in moved.items():
        os.dup2(fd, target, inheritable=True)
    top = max(moved)
    os.closerange(top + 1, 1 << 16)
    for fd in range(top + 1):
        if fd not in moved:
            try:
                os.close(fd)
            except OSError:
                pass


def drop_privileges(limits: dict, uid: int, isolated: bool) -> None:
    """Limits that hold for everything the process starts, then the switch to the unprivileged uid."""
    rl = {
        resource.RLIMIT_FSIZE: (int(limits["file_size_mb"]) << 20,) * 2,
        resource.RLIMIT_NOFILE: (int(limits["open_files"]),) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    if isolated:
        rl[resource.RLIMIT_NPROC] = (int(limits["processes"]),) * 2
    for which, value in rl.items():
        resource.setrlimit(which, value)
    if isolated:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        prctl(PR_SET_DUMPABLE, 1)
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def apply_run_limits(cpu: float, memory_mb: int) -> None:
    """CPU time and address space. Only ever lowered, so this works after privileges are gone and the
    program cannot raise them back. The kernel sends SIGXCPU at the soft CPU limit and SIGKILL one CPU
    second later, for programs that ignore SIGXCPU."""
    seconds = max(1, int(-(-cpu // 1)))  # whole seconds, rounded up; the verdict compares the exact use
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    if memory_mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20,) * 2)
