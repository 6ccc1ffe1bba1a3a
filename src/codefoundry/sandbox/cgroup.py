"""The worker's memory cgroup (v1 or v2): what bounds a run's memory as a whole.

Loaded by path into the zygote before jail.py (standard library only). As root the worker makes its
cgroup in its own memory cgroup; as a caller who is not root (userns.py), where one is delegated to it.
Both are the same rule: a cgroup directory this process may write (the directory and its cgroup.procs),
its own memory cgroup or, on v2, that one's parent, because a v2 cgroup that holds processes cannot give
its children the memory controller. A cgroup whose memory limit this process may not set is not used.
"""

import os

LIMIT_FILES = {1: "memory.limit_in_bytes", 2: "memory.max"}


class MemoryCgroup:
    """A memory cgroup holding one worker's runs, so that a run's memory is bounded as a whole: anonymous
    memory of all its processes, memfd and SysV shared memory, files it writes to its tmpfs. Created before
    pivot_root and used through a directory fd afterwards."""

    def __init__(self, path: str, version: int) -> None:
        self.path, self.version = path, version
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        self.parent_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        self.limit = -1

    def remove(self) -> None:
        """Delete the (by then empty) cgroup; works after pivot_root through the parent's fd."""
        try:
            os.rmdir(os.path.basename(self.path), dir_fd=self.parent_fd)
        except OSError:
            pass

    def _write(self, name: str, value: str) -> None:
        fd = os.open(name, os.O_WRONLY, dir_fd=self.fd)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def _read(self, name: str) -> str:
        fd = os.open(name, os.O_RDONLY, dir_fd=self.fd)
        try:
            return os.read(fd, 65536).decode()
        finally:
            os.close(fd)

    def set_limit(self, limit_bytes: int) -> None:
        if limit_bytes != self.limit:
            self._write(LIMIT_FILES[self.version], str(limit_bytes))
            self.limit = limit_bytes

    def join(self) -> None:
        """Move the calling process (and so everything it starts) into the cgroup."""
        self._write("cgroup.procs", "0")

    def oom_kills(self) -> int:
        text = self._read("memory.oom_control" if self.version == 1 else "memory.events")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0


def create(name: str) -> MemoryCgroup | None:
    """A new memory cgroup `name` where this process may make one (see the module's docstring), or None."""
    for version, base in memory_cgroup_bases():
        for where in [base] if version == 1 else [base, os.path.dirname(base)]:
            if not (os.access(where, os.W_OK) and os.access(os.path.join(where, "cgroup.procs"), os.W_OK)):
                continue
            if version == 2:
                try:
                    with open(os.path.join(where, "cgroup.subtree_control"), "w") as f:
                        f.write("+memory")
                except OSError:
                    pass  # not ours to change, or already on: the new cgroup's files say which
            path = os.path.join(where, name)
            try:
                os.mkdir(path)
            except OSError:
                continue
            if os.access(os.path.join(path, LIMIT_FILES[version]), os.W_OK):
                return MemoryCgroup(path, version)
            os.rmdir(path)
    return None


def memory_cgroup_bases() -> list[tuple[int, str]]:
    """Where this process's memory cgroup lives, for cgroup v1 and v2 (from /proc/self/{cgroup,mountinfo})."""
    try:
        with open("/proc/self/cgroup") as f:
            groups = [line.rstrip("\n").split(":", 2) for line in f]
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return []
    bases = []
    for _, controllers, rel in groups:
        for m in mounts:
            sep = m.index("-")
            fstype, opts, root, point = m[sep + 1], m[sep + 3], m[3], m[4]
            if (
                controllers
                and "memory" in controllers.split(",")
                and fstype == "cgroup"
                and "memory" in opts.split(",")
            ):
                bases.append((1, point + rel[len(root.rstrip("/")) :]))
            elif not controllers and fstype == "cgroup2":
                try:
                    with open(os.path.join(point, "cgroup.controllers")) as f:
                        if "memory" in f.read().split():
                            bases.append((2, point + rel[len(root.rstrip("/")) :]))
                except OSError:
                    pass
    return bases
