"""The namespaces a worker's runs live in: a PID namespace whose pid 1 is an idle process, and the IPC
namespace that process holds. Consecutive runs reuse both as long as each run leaves them empty; otherwise
init is killed, which makes the kernel kill everything in the PID namespace and, with the last reference
gone, destroy the IPC namespace and every object in it, and the next run gets a fresh pair.

Loaded by path into the zygote, after jail.py (standard library only; Linux).

Empty means:
- processes: the program is reaped and init has no children (no daemon, no zombie);
- IPC: no SysV shared memory segment, message queue or semaphore set (counted with the `*_INFO` control
  calls, made from inside the namespace: the zygote enters it and comes back), and no POSIX message queue
  (each queue adds 20 to the size of the root directory of the namespace's mqueue filesystem, which the
  zygote holds a detached mount of, made with fsopen/fsmount: no path shows it).

Why reuse the IPC namespace: a fresh one per run (created by the program's process, torn down by a kernel
worker after it exits) cost ~0.4 ms of CPU a run on the 2-core VM, about 5% of a judged HumanEval run.
Where the mqueue mount cannot be made (Linux before 5.2, or the call refused), the IPC namespace is not
shared: each run's program takes a fresh one of its own, as before.
"""

import ctypes
import importlib
import os
import signal
import sys
import time

# jail.py as the zygote loaded it (zygote._load registers the modules it loads), or as a package module.
jail = sys.modules.get("codefoundry_jail") or importlib.import_module("codefoundry.sandbox.jail")

# (shmctl, msgctl, semctl) here, or None; fsopen, fsconfig and fsmount are 430-432 on every architecture.
_SYSV_CALLS = {"x86_64": (31, 71, 66), "aarch64": (195, 187, 191)}.get(os.uname().machine)
_FSOPEN, _FSCONFIG, _FSMOUNT = 430, 431, 432
SHM_INFO, MSG_INFO, SEM_INFO = 14, 12, 19
FSOPEN_CLOEXEC, FSCONFIG_CMD_CREATE, FSMOUNT_CLOEXEC = 1, 6, 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc/PID/stat's times


def _call(number: int, *args: int) -> int:
    ret = jail._syscall(number, *args, *([0] * (5 - len(args))))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"system call {number}: {os.strerror(err)}")
    return ret


def _mqueue_root() -> int:
    """A detached mount of the current IPC namespace's mqueue filesystem: an fd of its root directory."""
    name = ctypes.create_string_buffer(b"mqueue")
    context = _call(_FSOPEN, ctypes.addressof(name), FSOPEN_CLOEXEC)
    try:
        _call(_FSCONFIG, context, FSCONFIG_CMD_CREATE, 0, 0, 0)
        return _call(_FSMOUNT, context, FSMOUNT_CLOEXEC, 0)
    finally:
        os.close(context)


def sysv_objects() -> int:
    """SysV shared memory segments, message queues and semaphore sets in the current IPC namespace."""
    shmctl, msgctl, semctl = _SYSV_CALLS
    info = (ctypes.c_int * 32)()  # room for struct shm_info, msginfo and seminfo
    at = ctypes.addressof(info)
    _call(shmctl, 0, SHM_INFO, at)
    count = info[0]  # shm_info.used_ids
    _call(msgctl, 0, MSG_INFO, at)
    count += info[0]  # msginfo.msgpool: the queues in use
    _call(semctl, 0, 0, SEM_INFO, at)
    return count + info[7]  # seminfo.semusz: the sets in use


def own_ipc_namespace(proc_fd: int) -> int:
    """An fd of the caller's IPC namespace (through the /proc fd `proc_fd`), or -1: runs then take IPC
    namespaces of their own."""
    try:
        return os.open("self/ns/ipc", os.O_RDONLY, dir_fd=proc_fd) if proc_fd >= 0 else -1
    except OSError:
        return -1


class RunNamespace:
    """Init is `sh -c 'read _'` started with posix_spawn (a vfork: no copy of the zygote's memory), reading a
    pipe only the zygote writes to, so that it ends, with its namespaces, should the zygote die. Where
    there is no shell, init is a clone of the zygote that pauses (and dies with it).

    `own_ipc_fd`: the zygote's own IPC namespace (an nsfs fd), to come back to; -1 leaves the IPC namespace
    unshared. `shares_ipc` says whether runs are to be born in init's IPC namespace."""

    def __init__(self, shell: str, proc_fd: int, own_pidfd: int, own_ipc_fd: int = -1) -> None:
        self.shell, self.proc_fd, self.own_pidfd, self.own_ipc_fd = shell, proc_fd, own_pidfd, own_ipc_fd
        self.init_pid, self.pidfd, self.keepalive = -1, -1, -1
        self.mqueue_fd, self.mqueue_size = -1, 0  # the mqueue root, and its size with no queue in it
        self.killed = False

    @property
    def shares_ipc(self) -> bool:
        return self.mqueue_fd >= 0

    def enter(self) -> None:
        """Make our next child be born in the run's PID namespace (a fresh one, if need be)."""
        if self.init_pid < 0:
            self._spawn()
        else:
            jail.setns(self.pidfd, jail.CLONE_NEWPID)

    def _spawn(self) -> None:
        ipc = jail.CLONE_NEWIPC if self.own_ipc_fd >= 0 and _SYSV_CALLS else 0
        if not self.shell:
            self.init_pid = jail.clone(jail.CLONE_NEWPID | ipc)
            if self.init_pid == 0:
                _pause_forever()
            self.pidfd = os.pidfd_open(self.init_pid)
            jail.setns(self.pidfd, jail.CLONE_NEWPID)
        else:
            read_end, self.keepalive = os.pipe()
            try:
                jail.unshare(jail.CLONE_NEWPID | ipc)  # the zygote too enters the new IPC namespace
                self.init_pid = os.posix_spawn(self.shell, [self.shell, "-c", "read _"], {},
                                               file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0)])  # fmt: skip
            except OSError:
                jail.setns(self.own_pidfd, jail.CLONE_NEWPID)
                os.close(self.keepalive)
                self.keepalive = -1
                raise
            finally:
                os.close(read_end)
                if ipc:
                    jail.setns(self.own_ipc_fd, jail.CLONE_NEWIPC)  # and leaves it
            self.pidfd = os.pidfd_open(self.init_pid)
        if ipc:
            try:
                self.mqueue_fd = self._in_ipc(_mqueue_root)
                self.mqueue_size = os.fstat(self.mqueue_fd).st_size
            except OSError:
                if self.mqueue_fd >= 0:
                    os.close(self.mqueue_fd)
                self.mqueue_fd = -1  # runs take IPC namespaces of their own

    def _in_ipc(self, call):
        """`call()` made in init's IPC namespace."""
        jail.setns(self.pidfd, jail.CLONE_NEWIPC)
        try:
            return call()
        finally:
            jail.setns(self.own_ipc_fd, jail.CLONE_NEWIPC)

    def empty(self) -> bool:
        """Init has no children (every process the program started is gone and reaped), and, when runs share
        its IPC namespace, that holds no object."""
        try:
            fd = os.open(f"{self.init_pid}/task/{self.init_pid}/children", os.O_RDONLY, dir_fd=self.proc_fd)
        except OSError:
            return False
        try:
            if os.read(fd, 64).strip():
                return False
        finally:
            os.close(fd)
        if not self.shares_ipc:
            return True
        try:
            return os.fstat(self.mqueue_fd).st_size == self.mqueue_size and self._in_ipc(sysv_objects) == 0
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        """CPU time of the processes in the run's PID namespace other than init, each with that of the
        children it reaped: every process the run has had, where no cgroup counts them, as long as the
        program is not yet reaped (the zygote reaps it, and the CLONE_PARENT children). Init reaps nothing
        (its zombies make the namespace not empty), so all the others are there, zombies included."""
        try:
            ns = os.stat(f"{self.init_pid}/ns/pid", dir_fd=self.proc_fd).st_ino
            names = os.listdir(self.proc_fd)
        except (OSError, ValueError):  # no /proc here (then nothing counts the run as a whole)
            return 0.0
        ticks = 0
        for name in names:
            if not name.isdigit() or int(name) == self.init_pid:
                continue
            try:
                if os.stat(f"{name}/ns/pid", dir_fd=self.proc_fd).st_ino != ns:
                    continue
                fd = os.open(f"{name}/stat", os.O_RDONLY, dir_fd=self.proc_fd)
                try:
                    stat = os.read(fd, 4096)
                finally:
                    os.close(fd)
            except OSError:
                continue  # gone meanwhile
            ticks += sum(int(f) for f in stat[stat.rindex(b")") + 2 :].split()[11:15])  # u, s, cu, cs time
        return ticks / CLOCK_TICKS

    def kill(self) -> None:
        if self.init_pid > 0 and not self.killed:
            jail.kill_pid(self.init_pid)
            self.killed = True

    def discard(self, reap_others=None) -> None:
        """Kill init (and so the namespaces) and reap it. `reap_others()`, if given, is called until init is
        reaped: a process of the namespace whose parent is not init (CLONE_PARENT) must be reaped by its
        parent before init can finish its exit."""
        if self.init_pid < 0:
            return
        self.kill()
        if reap_others is None:
            os.waitpid(self.init_pid, 0)
        else:
            while not os.waitpid(self.init_pid, os.WNOHANG)[0]:
                reap_others()
                time.sleep(0.0005)
        for fd in (self.pidfd, self.keepalive, self.mqueue_fd):
            if fd >= 0:
                os.close(fd)  # the mqueue mount held the IPC namespace: it goes, with its objects
        self.init_pid, self.pidfd, self.keepalive, self.mqueue_fd = -1, -1, -1, -1
        self.killed = False


def _pause_forever() -> None:
    try:
        jail.prctl(jail.PR_SET_PDEATHSIG, signal.SIGKILL)  # should the zygote die first
        os.closerange(0, 1 << 16)
        while True:
            signal.pause()
    finally:
        os._exit(0)
