"""The worker's cgroups (v1 or v2): what bounds a run's memory, and counts its CPU time, as a whole.

Loaded by path into the zygote before jail.py (standard library only). As root the worker makes its
cgroups in its own; as a caller who is not root (userns.py), where one is delegated to it. Both are the
same rule: a cgroup directory this process may write (the directory and its cgroup.procs), its own cgroup
of that hierarchy or, on v2, that one's parent, because a v2 cgroup that holds processes cannot give its
children the memory controller. A memory cgroup whose limit this process may not set is not used.

CPU time is counted by `cpuacct.usage` (v1) or `cpu.stat` (v2, present in every cgroup): the v2 memory
cgroup where there is one, else a cgroup of its own in the v1 cpuacct hierarchy or the v2 one.
"""

import os

LIMIT_FILES = {1: "memory.limit_in_bytes", 2: "memory.max"}
# Swap, which the memory limit alone leaves open: past it the kernel swaps the run's pages out instead of
# ending it (memfd, SysV and tmpfs pages too), so with swap on the host a run held its limit in memory and
# as much again as the swap would take. v1 bounds memory and swap together, v2 swap alone. Either file is
# absent where the kernel keeps no swap account (then there is no swap to bound, or no way to).
SWAP_FILES = {1: "memory.memsw.limit_in_bytes", 2: "memory.swap.max"}
# A build's memory, whatever the run's: each of its processes' address space (build.py) and, while it
# builds, the run's cgroup. cc1plus holds ~320 MB for a program using <regex>, so a build under a 64 MB
# run limit failed as `memory_exceeded`; the run's own limit holds again before the program starts.
BUILD_MEMORY_MB = 2048


def build_memory_mb(memory_mb: int) -> int:
    """A build's memory under a run's `memory_mb`: BUILD_MEMORY_MB at least."""
    return max(int(memory_mb), BUILD_MEMORY_MB)


CPU_FILES = {1: "cpuacct.usage", 2: "cpu.stat"}


class _Dir:
    """One cgroup directory, used through a directory fd (it still works after pivot_root)."""

    def __init__(self, path: str, version: int) -> None:
        self.path, self.version = path, version
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        self.parent_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)

    def write(self, name: str, value: str) -> None:
        fd = os.open(name, os.O_WRONLY, dir_fd=self.fd)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def read(self, name: str) -> str:
        fd = os.open(name, os.O_RDONLY, dir_fd=self.fd)
        try:
            return os.read(fd, 65536).decode()
        finally:
            os.close(fd)

    def remove(self) -> None:
        try:
            os.rmdir(os.path.basename(self.path), dir_fd=self.parent_fd)
        except OSError:
            pass


class Cgroups:
    """The cgroups holding one worker's runs, one run at a time: `memory` bounds a run's memory as a whole
    (anonymous memory of all its processes, memfd and SysV shared memory, files it writes to its tmpfs);
    `cpu` counts the CPU time of all its processes. Either may be None; on v2 they are one directory."""

    def __init__(self, memory: _Dir | None, cpu: _Dir | None) -> None:
        self.memory, self.cpu = memory, cpu
        self.dirs = [d for d in (memory, cpu) if d is not None]
        if memory is not None and cpu is memory:
            self.dirs = [memory]
        self.limit = -1

    @property
    def paths(self) -> list[str]:
        return [d.path for d in self.dirs]

    @property
    def fds(self) -> set[int]:
        return {fd for d in self.dirs for fd in (d.fd, d.parent_fd)}

    def remove(self) -> None:
        """Delete the (by then empty) cgroups."""
        for d in self.dirs:
            d.remove()

    def join(self) -> None:
        """Move the calling process (and so everything it starts) into the cgroups."""
        for d in self.dirs:
            d.write("cgroup.procs", "0")

    def bound(self, limits: dict, building: bool = False) -> None:
        """Bound the run's whole memory at its limit plus room for its disk (its tmpfs files count), or
        while it builds at BUILD_MEMORY_MB at least; swap adds nothing to it (SWAP_FILES)."""
        memory = build_memory_mb(limits["memory_mb"]) if building else int(limits["memory_mb"])
        limit_bytes = (memory + 2 * int(limits["disk_mb"]) + 64) << 20
        if self.memory is None or limit_bytes == self.limit:
            return
        version = self.memory.version
        swap = str(limit_bytes) if version == 1 else "0"
        # v1 refuses a memory limit above the memory-and-swap one: that one first when the limit rises
        if version == 1 and limit_bytes > self.limit >= 0:
            self._bound_swap(swap)
            self.memory.write(LIMIT_FILES[version], str(limit_bytes))
        else:
            self.memory.write(LIMIT_FILES[version], str(limit_bytes))
            self._bound_swap(swap)
        self.limit = limit_bytes

    def _bound_swap(self, value: str) -> None:
        try:
            self.memory.write(SWAP_FILES[self.memory.version], value)
        except (FileNotFoundError, PermissionError):
            pass  # no swap account here, or a delegated cgroup whose swap is not ours to bound

    def oom_kills(self) -> int:
        if self.memory is None:
            return 0
        text = self.memory.read("memory.oom_control" if self.memory.version == 1 else "memory.events")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def cpu_seconds(self) -> float:
        """CPU time used so far by every process that was ever in the cgroup (user and system)."""
        assert self.cpu is not None
        text = self.cpu.read(CPU_FILES[self.cpu.version])
        if self.cpu.version == 1:
            return int(text) / 1e9
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise OSError(f"no usage_usec in {self.cpu.path}/cpu.stat")


def create(prefix: str = "codefoundry-worker") -> Cgroups | None:
    """This process's cgroups where it may make them (see the module's docstring), or None: named
    `prefix`-(its PID namespace)-(its pid), so that those of killed processes can be told (`_sweep`)."""
    try:
        name = f"{prefix}-{os.stat('/proc/self/ns/pid').st_ino}-{os.getpid()}"
    except OSError:
        return None  # no /proc: no way to tell another worker's cgroups from stale ones
    memory = _make(name, "memory")
    cpu = memory if memory is not None and memory.version == 2 and _counts_cpu(memory) else None
    cpu = cpu or _make(name, "cpuacct")
    return Cgroups(memory, cpu) if memory or cpu else None


def _make(name: str, controller: str) -> _Dir | None:
    for version, base in bases(controller):
        for where in [base] if version == 1 else [base, os.path.dirname(base)]:
            if not (os.access(where, os.W_OK) and os.access(os.path.join(where, "cgroup.procs"), os.W_OK)):
                continue
            if version == 2 and controller == "memory":
                try:
                    with open(os.path.join(where, "cgroup.subtree_control"), "w") as f:
                        f.write("+memory")
                except OSError:
                    pass  # not ours to change, or already on: the new cgroup's files say which
            _sweep(where, name)
            path = os.path.join(where, name)
            try:
                os.mkdir(path)
            except OSError:
                continue
            made = _Dir(path, version)
            if controller == "memory" and os.access(os.path.join(path, LIMIT_FILES[version]), os.W_OK):
                return made
            if controller == "cpuacct" and _counts_cpu(made):
                return made
            for fd in (made.fd, made.parent_fd):
                os.close(fd)
            os.rmdir(path)
    return None


def _sweep(where: str, name: str) -> None:
    """Remove the empty cgroups that workers in this PID namespace (`name` up to its last "-", then a pid)
    left in `where` when they were killed before they could remove them (a Ray worker's end kills its
    sandbox workers): those whose pid no longer exists."""
    prefix = name.rpartition("-")[0] + "-"
    try:
        entries = os.listdir(where)
    except OSError:
        return
    for entry in entries:
        pid = entry[len(prefix) :]
        if entry.startswith(prefix) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.rmdir(os.path.join(where, entry))
            except OSError:
                pass  # not empty, or not ours to remove


def _counts_cpu(d: _Dir) -> bool:
    try:
        return Cgroups(None, d).cpu_seconds() >= 0
    except (OSError, ValueError):
        return False


def bases(controller: str) -> list[tuple[int, str]]:
    """Where this process's cgroup for `controller` lives, for v1 and v2 (from /proc/self/{cgroup,
    mountinfo}); any v2 cgroup counts CPU time ("cpuacct"), memory needs the v2 memory controller."""
    try:
        with open("/proc/self/cgroup") as f:
            groups = [line.rstrip("\n").split(":", 2) for line in f]
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return []
    found = []
    for _, controllers, rel in groups:
        for m in mounts:
            sep = m.index("-")
            fstype, opts, root, point = m[sep + 1], m[sep + 3], m[3], m[4]
            where = point + rel[len(root.rstrip("/")) :]
            if controllers and controller in controllers.split(",") and fstype == "cgroup":
                if controller in opts.split(","):
                    found.append((1, where))
            elif not controllers and fstype == "cgroup2":
                try:
                    with open(os.path.join(point, "cgroup.controllers")) as f:
                        if controller == "cpuacct" or controller in f.read().split():
                            found.append((2, where))
                except OSError:
                    pass
    return sorted(found)  # v1 first: on a hybrid system the v2 tree is the fallback


class RunCpu:
    """One run's CPU time as a whole: what all the run's processes used since it started, less its
    build's (the build has a limit of its own), and when next to look at it. Counted by the worker's
    cgroup (`count`, with `whole`: processes that ended count too), else by the run's PID namespace
    (`runspace.RunNamespace.cpu_seconds`: the processes still there, each with the children it reaped),
    else not at all (per process only: RLIMIT_CPU)."""

    def __init__(self, count, whole: bool, req: dict, started: float, ncpu: int) -> None:
        self.count, self.whole = count, whole
        self.limit, self.ncpu = float(req["limits"]["cpu_seconds"]), ncpu
        self.base = count() if count is not None and whole else 0.0
        self.build: float | None = None if req.get("compile") else 0.0  # set once the build has ended
        self.left = 0.0  # what processes left when the program ended had used (counted by namespace)
        self.seen = 0.0  # the most the run was counted as having used while it ran (`over`)
        # No process of the run can have used its limit before `limit / ncpu` seconds have passed.
        self.next = started + self.limit / ncpu if count is not None else float("inf")

    def built(self, build_cpu: float | None, now: float) -> bool:
        """The build's end, from the run's trusted notes (written before any untrusted code ran): its CPU
        time, or None when it failed. Whether it succeeded, and so the program starts now."""
        self.build = float(build_cpu or 0.0)
        if build_cpu is None:
            return False
        self.next = now + self.limit / self.ncpu if self.count is not None else self.next
        return True

    def used(self) -> float:
        return self.count() - self.base - (self.build or 0.0)

    def over(self, now: float) -> bool:
        """Whether the run has used more CPU time than its limit; if not, look again no sooner than its
        processes, on every CPU at once, could use the rest."""
        if self.build is None:
            self.next = now + 0.1  # still building
            return False
        used = self.used()
        self.seen = max(self.seen, used)
        left = self.limit - used
        self.next = now + max(left / self.ncpu, 0.01)
        return left < 0

    def leftovers(self) -> None:
        """The program has been reaped and other processes of the run are still there, about to be killed:
        counted by namespace, what they used is taken now."""
        if self.count is not None and not self.whole:
            self.left = self.count()

    def total(self, process_cpu: float) -> float:
        """The run's CPU time: the cgroup's count; else the program's process and the children it waited
        for (`process_cpu`, from wait4) and what the leftovers used; less the build."""
        if self.whole:
            return self.used()
        # Never below what was counted while it ran: a run killed for its CPU time can lose processes
        # before `leftovers` reads them (killed with init), and came back under its own limit.
        return max(0.0, process_cpu + self.left - (self.build or 0.0), self.seen)
