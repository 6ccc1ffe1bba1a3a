"""System-level building blocks of the sandbox worker: namespaces, mounts, clone, privileges, limits, and
the framing of its pipes and sockets.

Loaded by path into the zygote (standard library only). Linux only; every call raises OSError with the
failing operation's name.
"""

import ctypes
import importlib
import os
import re
import resource
import signal
import socket
import struct
import sys

# cgroup.py and seccomp.py as the zygote loaded them (zygote._load registers the modules it loads), or as
# package modules.
cgroup = sys.modules.get("codefoundry_cgroup") or importlib.import_module("codefoundry.sandbox.cgroup")
seccomp = sys.modules.get("codefoundry_seccomp") or importlib.import_module("codefoundry.sandbox.seccomp")

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUSER = 0x20000000, 0x40000000, 0x10000000
CLONE_PARENT = 0x00008000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOSYMFOLLOW, MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 256, 1024, 2048, 1 << 21, 1 << 24
# A mount's own options (mountinfo's sixth field) a read-only remount keeps: in a user namespace the kernel
# refuses (EPERM) one that drops a locked noexec or changes the locked atime mode; nosymfollow is the host's.
KEPT_OPTIONS = {"noexec": MS_NOEXEC, "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME}
KEPT_OPTIONS |= {"relatime": MS_RELATIME, "nosymfollow": MS_NOSYMFOLLOW}
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYSCALLS = {
    "x86_64": {"clone": 56, "pivot_root": 155, "keyctl": 250},
    "aarch64": {"clone": 220, "pivot_root": 41, "keyctl": 219},
}
KEYCTL_CLEAR, KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING = 7, -4, -5
SYSCALL = _SYSCALLS.get(os.uname().machine)
RO_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
DEVICES = ("null", "zero", "full", "random", "urandom")
NEWROOT = "/tmp/.cf-root"
RUN_DIRS = ("/work", "/tmp")  # per-worker tmpfs mounts, replaced by fresh ones after any run that wrote there
WORK_INODES = 4096  # each one's nr_inodes; result.WORK_INODES repeats it for the caller's checks (tested)
BUILD_PROCESSES = 16  # the uid's processes while a program builds (gcc runs cc1, as, collect2 and ld)
# A build's largest file (MB) and open files, whatever the program's limits: at file_size_mb=0 every build
# failed ("File too large" on the assembler's temporary file), and a few open files broke it too. What it
# writes still lands in the run's size-limited /work and /tmp; the program's limits hold again after it.
BUILD_FILE_SIZE_MB, BUILD_OPEN_FILES = 1024, 1024

_libc = ctypes.CDLL(None, use_errno=True)
_libc_gil = ctypes.PyDLL(None, use_errno=True)  # calls that keep the GIL held, as os.fork does


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s: str | None) -> bytes | None:
    return s.encode() if s is not None else None


def release_free_memory() -> None:
    """Give the C heap's free pages back to the kernel (glibc's malloc_trim; a no-op elsewhere)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def preload(modules: list[str]) -> None:
    """Import modules programs commonly use, then freeze the heap (collections in runs copy no pages)."""
    import gc

    for name in modules:
        try:
            __import__(name)
        except Exception:
            pass
    gc.collect()
    gc.freeze()
    release_free_memory()  # fewer resident pages: every fork copies fewer page-table entries


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(src: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(src), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), f"mount {target}")


def umount(target: str) -> None:
    _check(_libc.umount2(_b(target), MNT_DETACH), f"umount {target}")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), "prctl")


def _fork_calls() -> tuple:
    """CPython's fork hooks and the raw system call, as ctypes functions with their types set, resolved
    once: a child that looked `PyOS_AfterFork_Child` up itself (dlsym, a new function object) paid ~80
    page faults more than after `os.fork`, every run."""
    api = ctypes.pythonapi
    hooks = (api.PyOS_BeforeFork, api.PyOS_AfterFork_Child, api.PyOS_AfterFork_Parent)
    for hook in hooks:
        hook.argtypes, hook.restype = [], None
    call = _libc_gil.syscall
    call.argtypes, call.restype = [ctypes.c_long] + [ctypes.c_ulong] * 5, ctypes.c_long
    return (*hooks, call)


_before_fork, _after_fork_child, _after_fork_parent, _syscall = _fork_calls()


def clone(extra_flags: int) -> int:
    """fork() with extra clone flags, CPython's before/after-fork handling around the one system call.
    With CLONE_NEWPID the child is pid 1 of a new PID namespace (so the zygote need not fork a helper to
    call unshare); with CLONE_PARENT it is its caller's sibling."""
    _before_fork()
    pid = _syscall(SYSCALL["clone"], extra_flags | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        _after_fork_child()
        return 0
    err = ctypes.get_errno()
    _after_fork_parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


class Helper:
    """A long-lived child of the zygote reached over a Unix socket pair (the judge server, the parse
    helper): forked on first use, running `serve(socket fd)` (which never returns); `kill` ends it, and the
    next use forks a fresh one."""

    def __init__(self, serve) -> None:
        self._serve = serve
        self.pid: int | None = None
        self.sock: socket.socket | None = None

    def socket(self) -> socket.socket:
        if self.pid is None:
            ours, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                try:
                    ours.close()
                    self._serve(theirs.detach())
                finally:
                    os._exit(0)  # never back into the zygote's own code
            theirs.close()
            self.pid, self.sock = pid, ours
        return self.sock

    def kill(self) -> None:
        if self.pid is None:
            return
        kill_pid(self.pid)
        os.waitpid(self.pid, 0)
        self.sock.close()
        self.pid, self.sock = None, None


def read_exact(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def read_frame(fd: int) -> bytes:
    (n,) = struct.unpack(">I", read_exact(fd, 4))
    return read_exact(fd, n)


def write_frame(fd: int, data: bytes) -> None:
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def send_with_fds(sock: socket.socket, body: bytes, fds: list[int], flag: int = 0) -> None:
    """One message to a Helper: a header (body length, a one-byte flag) carrying `fds`, then the body."""
    socket.send_fds(sock, [struct.pack(">QB", len(body), flag)], fds)
    sock.sendall(body)


def _receive_head(sock: socket.socket, max_fds: int) -> tuple[int, list[int], int] | None:
    """A message's header: (body size, fds, flag), or None once the other side is gone."""
    head, fds, _, _ = socket.recv_fds(sock, 9, max_fds)
    while head and len(head) < 9:
        more = sock.recv(9 - len(head))
        head = head + more if more else b""
    if not head:
        return None
    size, flag = struct.unpack(">QB", head)
    return size, fds, flag


def receive_with_fds(sock: socket.socket, max_fds: int) -> tuple[bytes, list[int], int] | None:
    """The next message `send_with_fds` sent: (body, fds, flag), or None once the other side is gone."""
    if (header := _receive_head(sock, max_fds)) is None:
        return None
    size, fds, flag = header
    body = bytearray()
    while len(body) < size:
        chunk = sock.recv(min(size - len(body), 1 << 20))
        if not chunk:
            return None
        body += chunk
    return bytes(body), fds, flag


def process_level(why: str) -> tuple[str, str, None]:
    """The weaker level. The zygote becomes a child subreaper: a daemon that leaves the run's session is
    orphaned to it instead of to pid 1, and killed after the run (`reap_strays`)."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    return "process", why, None


def setup_worker(extra_ro: list[str]) -> tuple[str, str, "cgroup.Cgroups | None"]:
    """Enter the worker's own network, mount, IPC and UTS namespaces and pivot into a read-only root.
    Returns the isolation level reached, why when it is the weaker one, and the worker's cgroups."""
    if os.environ.get("CODEFOUNDRY_SANDBOX_ISOLATION") == "process":
        return process_level("namespaces disabled by CODEFOUNDRY_SANDBOX_ISOLATION=process")
    if os.geteuid() != 0 or SYSCALL is None:
        return process_level("not root (or an unknown architecture): cannot create namespaces")
    try:
        unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
    except OSError as e:
        return process_level(f"namespaces unavailable ({e})")
    groups = cgroup.create()  # on the host's paths, before pivoting
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    private_root(extra_ro)
    return "namespaces", "", groups


def private_root(extra_ro: list[str]) -> None:
    """In a fresh mount namespace whose mounts were made private: pivot into a read-only tmpfs root holding
    read-only binds of the system directories, the Python installation and `extra_ro`, a few devices, and
    the mount points of the runs' directories; the old root is detached."""
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


def fresh_run_dirs(uid: int, disk_mb: int) -> None:
    """Give the next run an empty /work (owned by its uid) and /tmp: unmount the used ones, mount anew."""
    for d in RUN_DIRS:
        if os.path.ismount(d):
            umount(d)
        opts = f"size={disk_mb}m,nr_inodes={WORK_INODES}," + (
            f"mode=700,uid={uid},gid={uid}" if d == "/work" else "mode=1777"
        )
        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, opts)


def tidy_run_dirs(filename: str, uid: int) -> bool:
    """After a run: True when it left nothing behind but its own source file `filename`, which is then
    removed, and left the directories themselves as they were made (mode, owner, no extended attributes:
    either could carry data, or break the next run); otherwise `fresh_run_dirs` must replace them."""
    if os.listdir("/tmp") or os.listdir("/work") != [filename]:
        return False
    for d, mode, owner in (("/work", 0o700, uid), ("/tmp", 0o1777, os.getuid())):
        st = os.stat(d)
        if st.st_mode & 0o7777 != mode or st.st_uid != owner or os.listxattr(d):
            return False
    path = os.path.join("/work", filename)
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    os.unlink(path)
    return True


def write_run_files(workdir: str, files: dict[str, str], uid: int | None) -> None:
    """A run's files (name -> hex content) under its work directory, owned by `uid` when given."""
    for name, content in files.items():
        path = os.path.normpath(os.path.join(workdir, name))
        if not path.startswith(workdir + "/"):
            raise ValueError(f"file name {name!r} leaves the work directory")
        _make_dirs(workdir, os.path.dirname(path), uid)
        with open(path, "wb") as f:
            f.write(bytes.fromhex(content))
        if uid is not None:
            os.chown(path, uid, uid)


def _make_dirs(workdir: str, path: str, uid: int | None) -> None:
    """Directories down to `path`, owned by `uid` like the work directory: made by root, the program could
    not create a file beside the ones it was given (`data/out.txt` next to `data/in.txt`)."""
    for part in os.path.relpath(path, workdir).split(os.sep):
        workdir = os.path.join(workdir, part)
        if part != "." and not os.path.isdir(workdir):
            os.mkdir(workdir)
            if uid is not None:
                os.chown(workdir, uid, uid)


def stray_children(proc_fd: int, known: set[int]) -> list[int]:
    """This process's children that are none of `known`: processes a program made with CLONE_PARENT, which
    makes the zygote their parent and hides them from the run's init (so the namespace looked empty)."""
    if proc_fd < 0:
        return []
    me = os.getpid()
    try:
        fd = os.open(f"{me}/task/{me}/children", os.O_RDONLY, dir_fd=proc_fd)
    except OSError:
        return []
    try:
        children = os.read(fd, 1 << 16).split()
    finally:
        os.close(fd)
    return [int(c) for c in children if int(c) not in known]


def kill_pid(pid: int) -> None:
    """SIGKILL, whether or not the process is still there."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def reap(pids: list[int]) -> None:
    """Kill and reap strays: a zombie left unreaped would count against the programs' process limit in
    every later run, and would keep the run's init from ever finishing its exit."""
    for pid in pids:
        kill_pid(pid)
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


STRAY_ROUNDS = 64  # generations of a daemon's tree killed after a run


def reap_strays(proc_fd: int, known, stray: list[int], rounds: int = STRAY_ROUNDS) -> None:
    """`reap(stray)`, then scan again (`known()` gives the known children) and reap what is new, until a
    scan finds none or after `rounds` scans. At process level the zygote is a child subreaper: a stray's
    children are handed to it as the stray dies, so each round takes the next generation of a daemon's
    tree (one that forks faster than this kills may outlast it). With namespaces a stray's children go to
    the run's init instead, and the second scan finds nothing."""
    for left in range(rounds - 1, -1, -1):
        if not stray:
            return
        reap(stray)
        if left:
            stray = stray_children(proc_fd, known())


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
        _read_only_below(inside)


def _read_only_below(top: str) -> None:
    """`top` and every mount under it read-only, nosuid and nodev too. A remount changes one mount, and a
    host mount under a bound directory (a volume under /opt, Docker's /etc/hosts) kept its own flags:
    writable, and a program wrote to the host through it. Options a remount could lose are kept (strictatime
    and nodiratime remounted relatime stopped a user_namespace worker from starting: `KEPT_OPTIONS`). `top`
    is named as mountinfo names it: an `extra_readonly` "/data/" matched no point, and stayed writable."""
    top, found = os.path.realpath(top), _mount_options()
    for point in [top, *(p for p in found if p.startswith(top + "/"))]:  # KeyError: `top` is not a mount
        mount("none", point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | found[point])


def _mount_options() -> dict[str, int]:
    """{mount point: the MS_ flags of `KEPT_OPTIONS` it has, MS_STRICTATIME where neither relatime nor
    noatime (statvfs shows none)}, of the topmost mount on each point (mountinfo lists it last)."""
    found = {}
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            options = set(fields[5].decode().split(","))
            flags = sum(flag for name, flag in KEPT_OPTIONS.items() if name in options)
            if not options & {"relatime", "noatime"}:
                flags |= MS_STRICTATIME
            found[os.fsdecode(_unescape(fields[4]))] = flags
    return found


def _unescape(field: bytes) -> bytes:
    """A mountinfo path: the kernel writes space, tab, newline and backslash as octal escapes (\\040)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field)


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


def drop_privileges(
    limits: dict,
    uid: int,
    isolated: bool,
    *,
    building: bool = False,
    dumpable: bool = True,
    clear_keyrings: bool = False,
) -> None:
    """Limits that hold for everything the process starts, then the switch to the unprivileged uid (kept
    when it is already ours: the user_namespace level) and the loss of every capability, then the system
    call filter (seccomp.py) where the worker found it works; a build gets BUILD_PROCESSES processes at
    least, lowered after it to the program's limit, which counts its keeper (build.py), and
    BUILD_FILE_SIZE_MB and BUILD_OPEN_FILES, lowered by `build.build`. `dumpable` False: no process of the
    same uid can trace this one (the judge, the parse helper). `clear_keyrings`: empty the uid's kernel
    keyrings (where no filter denies the calls that fill them)."""
    # A core limit of 1 byte, not 0: a core_pattern that pipes to a helper (apport, systemd-coredump)
    # ignores RLIMIT_CORE except for 1, which aborts the dump; a file core needs a whole page.
    rl = {**file_limits(limits), resource.RLIMIT_CORE: (1, 1)}
    if building:
        _raise_for_build(rl)
    if isolated:
        processes = int(limits["processes"])
        rl[resource.RLIMIT_NPROC] = (max(processes + 1, BUILD_PROCESSES) if building else processes,) * 2
    for which, value in rl.items():
        resource.setrlimit(which, value)
    if not isolated:
        # No PID namespace ends a process-level run with its worker: killed mid-run (or given up on by the
        # pool after an interrupt), it left the program running, adopted by init, until it ended by itself.
        # Its parent is the zygote (the template clones with CLONE_PARENT); its children are not covered.
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    same_uid = uid == os.getuid()  # the user_namespace level: no other uid to switch to
    if isolated:
        if not same_uid:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)  # from root to another uid: every capability goes
        else:
            drop_capabilities()  # the same uid in a user namespace: they must be given up one by one
        prctl(PR_SET_DUMPABLE, int(dumpable))
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if clear_keyrings:
        clear_user_keyrings()
    if seccomp.ENABLED:
        seccomp.install()  # a program's process is born under the template's: nothing to do there
    elif isolated and same_uid:  # what keeps one uid's processes apart there (userns.py): never without it
        raise OSError(0, "no seccomp filter at the user_namespace level")


def file_limits(limits: dict) -> dict[int, tuple[int, int]]:
    """The program's largest file and open files, as rlimits."""
    return {
        resource.RLIMIT_FSIZE: (int(limits["file_size_mb"]) << 20,) * 2,
        resource.RLIMIT_NOFILE: (int(limits["open_files"]),) * 2,
    }


def _raise_for_build(rl: dict) -> None:
    """The program's file limits in `rl`, raised for a build to BUILD_FILE_SIZE_MB and BUILD_OPEN_FILES,
    though not past a hard limit this process could not raise (not root: `checks.check_rlimits` kept the
    program's below it)."""
    for which, build in (
        (resource.RLIMIT_FSIZE, BUILD_FILE_SIZE_MB << 20),
        (resource.RLIMIT_NOFILE, BUILD_OPEN_FILES),
    ):
        rl[which] = (max(rl[which][0], _within_hard_limit(which, build)),) * 2


def _within_hard_limit(which: int, value: int) -> int:
    """`value`, or the hard limit where it is lower and this process cannot raise it (not root)."""
    hard = resource.getrlimit(which)[1]
    return min(value, hard) if hard != resource.RLIM_INFINITY and os.geteuid() != 0 else value


def drop_capabilities() -> None:
    """Empty every capability set of this process (bounding, ambient, effective, permitted, inheritable).
    Its uid is not 0, so nothing it execs gets one back (and no_new_privs ignores file capabilities)."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # EINVAL: past the kernel's last capability
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT)")
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    _check(_libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")


def clear_user_keyrings() -> None:
    """Empty the kernel keyrings that belong to this process's uid (user and user-session): they outlive
    every process, so a key one run adds would be there for the next run of the worker (same uid)."""
    if SYSCALL is None:
        return
    for ring in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING):
        _libc.syscall(SYSCALL["keyctl"], KEYCTL_CLEAR, ring)  # failure (no keyrings here) changes nothing


def apply_run_limits(
    cpu: float, memory_mb: int, processes: int | None = None, stack_mb: int | None = None
) -> None:
    """CPU time and address space, and the processes of the uid where given (after a build, which had
    more). Only ever lowered, so this works after privileges are gone and the program cannot raise them
    back. The kernel sends SIGXCPU at the soft CPU limit and SIGKILL one CPU second later, for programs
    that ignore SIGXCPU. The address space is `memory_mb` (a run's `address_space_mb` where its runtime
    reserves more than it uses: runners.Runner.reserved_mb), though never above its hard limit. The stack
    is `stack_mb` where given (the program's, never a build's: the compiler keeps the worker's own),
    soft and hard, below the hard limit too (`checks.check_rlimits` refuses more where that is ours)."""
    seconds = max(1, int(-(-cpu // 1)))  # whole seconds, rounded up; the verdict compares the exact use
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    if memory_mb > 0:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20,) * 2)
        except ValueError:  # above the hard limit (not root): node's allowance; `checks` kept memory_mb below
            space = _within_hard_limit(resource.RLIMIT_AS, memory_mb << 20)
            resource.setrlimit(resource.RLIMIT_AS, (space, space))
    if processes is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (processes,) * 2)
    if stack_mb is not None:
        hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
        stack = stack_mb << 20 if hard == resource.RLIM_INFINITY else min(stack_mb << 20, hard)
        resource.setrlimit(resource.RLIMIT_STACK, (stack, stack))


def exec_program(argv: list[str], env: dict[str, str]) -> None:
    """Exec a program that is not Python with the signal dispositions a shell gives it. This process is a
    Python interpreter, which ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec:
    a C program writing past its file size limit got EFBIG, ignored it and exited 0 ("ok"), where `./main`
    dies of SIGXFSZ (subprocess's `restore_signals` resets the same two)."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    os.execve(argv[0], argv, env)


def _write_file(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def receive_into(sock: socket.socket, buf: bytearray, max_fds: int) -> tuple[int, list[int], int] | None:
    """`receive_with_fds` into `buf` (grown as needed): (body size, fds, flag), the body in buf[:size], or
    None once the other side is gone. The caller can then wipe the body in place (the template does, so
    that no later run finds an earlier run's request in the memory it inherits)."""
    if (header := _receive_head(sock, max_fds)) is None:
        return None
    size, fds, flag = header
    if len(buf) < size:
        buf.extend(bytes(size - len(buf)))  # the old contents were wiped by the caller
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:size])
        if not n:
            return None
        got += n
    return size, fds, flag
