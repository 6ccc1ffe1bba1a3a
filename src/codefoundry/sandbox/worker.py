"""One warm sandbox worker, seen from the parent: start the zygote, send it runs, read back results.

The zygote is started once (`python -I -S`, running zygote.py; empty environment) and serves runs until it
is closed. A worker that dies or stops answering is replaced; the run it was serving becomes a
`sandbox_error` result, never a wrong answer.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

from codefoundry.sandbox.pyrun import ONE_THREAD
from codefoundry.sandbox.result import ExecutionResult, Isolation, Judge, Limits
from codefoundry.sandbox.runners import language_name, runner_for

ZYGOTE = Path(__file__).with_name("zygote.py")
# How the zygote starts (`python -I -S -c _START zygote.py REQ_FD RESP_FD`): zygote.py, and the modules it
# loads, are compiled in throwaway children and come back marshalled. Compiled by the zygote itself they
# left the parser's freed memory (~1.7 MB) resident in it, and so in every program's process, a copy of
# it: each run paid for those pages at fork, in page faults and at exit (benchmarks/README.md).
_START = """
import marshal, os, sys

def compiled(path):
    r, w = os.pipe()
    if (pid := os.fork()) == 0:
        try:
            with open(path, encoding="utf-8") as f, open(w, "wb") as out:
                out.write(marshal.dumps(compile(f.read(), path, "exec")))
        finally:
            os._exit(0)
    os.close(w)
    with open(r, "rb") as f:
        data = f.read()
    if os.waitpid(pid, 0)[1] or not data:  # not expected: compiling here says what went wrong
        with open(path, encoding="utf-8") as f:
            return compile(f.read(), path, "exec")
    return marshal.loads(data)

del sys.argv[0]
exec(compiled(sys.argv[0]), {"__name__": "__main__", "__file__": sys.argv[0], "_compiled": compiled})
"""
# Imported once in each worker so that runs find them warm (HumanEval-style prompts all import typing,
# whose cold import costs more than a run). Each extra module makes every fork dearer: measured, a longer
# list (hashlib, decimal, random, statistics, ...) lowered judged HumanEval throughput by about 10%.
PRELOAD = ("typing", "re", "math", "collections", "itertools", "functools", "string", "heapq", "bisect")
# Where this Python's installed packages live: on the programs' (and judges') sys.path after the standard
# library, as under `python main.py` (the zygote runs with -S, which skips `site`; .pth files are not read).
SITE_PACKAGES = tuple(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
# Runtimes that bound their own stack and keep the worker's RLIMIT_STACK, not Limits.stack_mb: V8 stops a
# deep recursion at its --stack-size (about 1 MB, "Maximum call stack size exceeded") whatever the rlimit,
# and libuv gives each of node's threads a stack of the rlimit's size: at 1024 MB, node under its address
# space allowance (runners.py) could not start its threads and hung (node 20, measured).
OWN_STACK = frozenset({"javascript"})
_GRACE_SECONDS = (
    30.0  # how long past the run's own wall limit the parent waits before declaring the worker dead
)
_warned = threading.Lock()  # taken for good by the first warning: workers starting in several threads
# at once printed it once each


def warn_weaker(reason: str) -> None:
    """Say once per process, on stderr, that runs are isolated less than they could be, and why."""
    if not _warned.acquire(blocking=False):
        return
    print(f"codefoundry.sandbox: weaker isolation ({reason}); results say so", file=sys.stderr)


class WorkerDied(Exception):
    pass


class Worker:
    """A zygote process and the two pipes to it. Not thread-safe: one run at a time."""

    def __init__(self, extra_readonly: tuple[str, ...] = (), *, cpu: int | None = None) -> None:
        self.proc: subprocess.Popen | None = None
        self._req = self._resp = self._req_r = self._resp_w = -1  # the zygote's ends: _req_r, _resp_w
        self._killed = False
        self.cgroups: list[str] = []
        self.scratch: str | None = None
        try:
            self._spawn()
            self._start(extra_readonly, cpu)
        except BaseException:
            # Whatever ended the start (a failure, a timeout, a Ctrl-C landing anywhere in it) ends what it
            # had started: the zygote killed and reaped (with it what it started: their death signal), its
            # pipes closed, the cgroups it reported removed (one made but not yet reported is swept by the
            # next worker's `cgroup.create`). Each failed start used to leave two fds and a zombie, and a
            # Ctrl-C right after the zygote started left it waiting, its pipes held open here, for a hello.
            if self.proc is not None:
                self.proc.kill()
            self.close()
            raise

    def _spawn(self) -> None:
        """Start the zygote on two new pipes, each end held by an attribute from the start, so that a start
        cut short anywhere (`__init__`) closes them all, and the zygote reads the end of its requests."""
        self._req_r, self._req = os.pipe()
        self._resp, self._resp_w = os.pipe()
        req_r, resp_w = self._req_r, self._resp_w
        # LD_BIND_NOW: the dynamic linker resolves every symbol at start-up, in the zygote, rather than at
        # first call, which each run's process did again for itself (a copied page of the symbol table each).
        # ONE_THREAD: the judge and parse helper inherit this environment, under process limits of their own.
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LD_BIND_NOW": "1", **ONE_THREAD}
        if os.environ.get("CODEFOUNDRY_SANDBOX_ISOLATION"):
            env["CODEFOUNDRY_SANDBOX_ISOLATION"] = os.environ["CODEFOUNDRY_SANDBOX_ISOLATION"]
        debug = os.environ.get("CODEFOUNDRY_SANDBOX_DEBUG")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _START, str(ZYGOTE), str(req_r), str(resp_w)],
                pass_fds=(req_r, resp_w),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None if debug else subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            self._close_fds("_req_r", "_resp_w")

    def _start(self, extra_readonly: tuple[str, ...], cpu: int | None) -> None:
        """Pin the zygote to `cpu`, send it its hello, and read back its isolation level."""
        self.cpu = cpu
        if cpu is not None:
            # Everything the zygote starts (programs, judge, parse helper) inherits this: a judged run's
            # program and judge then hand the CPU to each other instead of waking each other across CPUs.
            try:
                os.sched_setaffinity(self.proc.pid, {cpu})
            except OSError:
                self.cpu = None
        self.uid = 100_000 + 2 * secrets.randbelow(1 << 29)  # the program's uid; the judge gets uid + 1
        self._send({"extra_readonly": list(extra_readonly), "preload": list(PRELOAD), "uid": self.uid,
                    "site_packages": list(SITE_PACKAGES)})  # fmt: skip
        hello = json.loads(self._recv(60.0))
        self.isolation = Isolation(hello["isolation"])
        self.cgroups = hello.get("cgroups") or []
        # At process level: the directory the zygote makes each run's work directory in. `close` removes it
        # once the zygote is gone, so a worker killed mid-run leaves no work directory behind.
        self.scratch = hello.get("scratch")
        # Below the namespaces level, or without the system-call filter (a reason given at any level)
        if self.isolation is not Isolation.NAMESPACES or hello["reason"]:
            warn_weaker(hello["reason"])

    def _send(self, obj: dict) -> None:
        body = json.dumps(obj).encode()
        data = memoryview(struct.pack(">I", len(body)) + body)
        try:
            while data:
                data = data[os.write(self._req, data) :]
        except OSError as e:
            raise WorkerDied(f"cannot write to the sandbox worker: {e}") from None

    def _recv(self, timeout: float) -> bytes:
        head = self._read_exact(4, timeout)
        (n,) = struct.unpack(">I", head)
        return self._read_exact(n, timeout)

    def _read_exact(self, n: int, timeout: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            ready, _, _ = select.select([self._resp], [], [], timeout)
            if not ready:
                raise WorkerDied(f"the sandbox worker gave no answer within {timeout:.0f} s")
            chunk = os.read(self._resp, n - len(buf))
            if not chunk:
                raise WorkerDied("the sandbox worker exited")
            buf += chunk
        return bytes(buf)

    def run(self, program: str, *, language: str, stdin: str | bytes | None, files: dict | None,
            limits: Limits, judge: Judge | None) -> ExecutionResult:  # fmt: skip
        runner = runner_for(language)
        limit = limits.to_dict()
        if runner.reserved_mb:  # a runtime's unused reservations: the zygote's jail.apply_run_limits
            limit["address_space_mb"] = limits.memory_mb + runner.reserved_mb
        if language_name(language) in OWN_STACK:
            del limit["stack_mb"]
        request = {
            "program": program,
            "filename": runner.filename,
            "compile": list(runner.compile) if runner.compile else None,
            "run": runner.command(limits.memory_mb),
            "limits": limit,
            "stdin": _hex(stdin),
            "files": {name: _hex(content) for name, content in (files or {}).items()},
            "uid": self.uid,
            "judged": judge is not None,
        }
        self._send(request)
        if judge is not None:
            self._send({"setup": judge.setup, "tests": list(judge.tests), "entry_point": judge.entry_point,
                        "stop_on_failure": judge.stop_on_failure})  # fmt: skip
        build = limits.build_wall if runner.compile else 0.0
        reply = json.loads(self._recv(limits.wall + build + _GRACE_SECONDS))
        return ExecutionResult.from_dict(reply)

    def kill(self) -> None:
        """End the zygote now, mid-run too (an interrupted `execute_many`); its run ends with it (the run's
        init reads a pipe only the zygote holds; at process level, PR_SET_PDEATHSIG). The thread waiting
        for the run's reply gets WorkerDied."""
        # Dead from now on for `alive`: the signal lands a moment later, and a run that had just ended
        # handed its worker back as alive, to fail the next program with a sandbox_error.
        self._killed = True
        try:
            self.proc.kill()
        except OSError:  # already reaped by the thread that waited for it
            pass

    @property
    def alive(self) -> bool:
        return not self._killed and self.proc.poll() is None

    def forget(self) -> None:
        """In a forked child: close this process's copies of the pipes, and nothing else (the zygote, its
        cgroups and scratch directory are the parent's)."""
        self._close_pipes()
        self.cgroups, self.scratch = [], None
        self.proc.returncode = -1  # not our child: never waited for here, nor killed

    def close(self) -> None:
        close_workers([self])

    def _close_pipes(self) -> None:
        """Close this process's ends of the pipes, once: the zygote reads the end of its requests, and
        exits."""
        self._close_fds("_req", "_resp", "_req_r", "_resp_w")

    def _close_fds(self, *names: str) -> None:
        for name in names:
            fd = getattr(self, name)
            setattr(self, name, -1)  # first: an fd closed twice could by then be another thread's file
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


def close_workers(workers: list[Worker], patience: float = 5.0) -> None:
    """Close `workers` together: each zygote is told to end before any is waited for (`patience` seconds
    for all, then killed), and their cgroups are removed with one deadline for all (`remove_cgroups`). Closed
    one after another, a pool's shutdown paid each worker's waits in turn."""
    for worker in workers:
        worker._close_pipes()
    procs = [worker.proc for worker in workers if worker.proc is not None]  # None: cut short before it
    deadline = time.monotonic() + patience
    try:
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        # A Ctrl-C in the waits (a second one while an interrupted run shuts its pool down) left every
        # worker's cgroups behind, in the caller's delegated cgroup too, and the zygotes not yet waited for
        # running: those are killed now (reaped by Popen later), and the cgroups and scratch still go.
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        remove_cgroups([path for worker in workers for path in worker.cgroups])
        for worker in workers:
            if worker.scratch:
                shutil.rmtree(worker.scratch, ignore_errors=True)


def remove_cgroups(paths: list[str], patience: float = 2.0) -> None:
    """Remove cgroups the workers made, empty once their workers are gone, though not at once where one was
    killed (`kill`): its processes were still leaving, the removal failed (EBUSY), and the directory stayed
    behind for good, in the caller's delegated cgroup too, which then could not be removed. What is still
    in one is killed (`_kill_cgroup`), then all are waited for together, `patience` seconds in all: waited
    for one by one, each busy cgroup cost its own 2 s."""
    busy = [path for path in paths if _busy(path)]
    deadline = time.monotonic() + patience
    while busy:
        for path in busy:
            _kill_cgroup(path)
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)
        busy = [path for path in busy if _busy(path)]


def _busy(path: str) -> bool:
    """Remove the cgroup at `path`: False once it is gone (or cannot be removed for any reason but that it
    still holds processes), True while it holds some (EBUSY)."""
    try:
        os.rmdir(path)
    except OSError as e:
        return e.errno == errno.EBUSY
    return False


def _kill_cgroup(path: str) -> None:
    """SIGKILL every process in the cgroup: at once through cgroup.kill (cgroup v2, Linux 5.14), else each
    process cgroup.procs lists, through a pidfd taken while it was listed (a pid listed again after its pidfd
    was opened is that process's, not a later one's; one gone meanwhile is not signalled)."""
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
        return
    except OSError:
        pass  # cgroup v1, or an older kernel
    pidfds = {}
    try:
        for pid in _listed(path):
            try:
                pidfds[pid] = os.pidfd_open(pid)
            except OSError:
                pass  # gone already
        still = _listed(path)
        for pid, fd in pidfds.items():
            if pid in still:
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
    except OSError:
        pass  # the cgroup is gone, or not ours to read
    finally:
        for fd in pidfds.values():
            os.close(fd)


def _listed(path: str) -> set[int]:
    with open(os.path.join(path, "cgroup.procs")) as f:
        return {int(line) for line in f if line.strip()}


def _hex(data: str | bytes | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return bytes(data).hex()
