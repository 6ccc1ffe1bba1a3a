"""The sandbox worker: a warm, single-threaded fork server that runs one untrusted program per clone.

Started by `worker.py` (`python -I -S` running this file as `zygote.py REQ_FD RESP_FD`, compiled in a
throwaway child: `worker._START`) with an empty environment; standard library only. It reads requests from
REQ_FD and writes a response to each on RESP_FD (frames: a 4-byte big-endian length, a JSON body).

What is isolated (level "namespaces", when the worker runs as root):
- Network: the worker's own network namespace (made once, no device up): no address, not even 127.0.0.1.
- Filesystem: a private mount namespace whose root is a read-only tmpfs holding read-only, nosuid, nodev
  binds of /usr, /etc, /bin, /sbin, /lib*, /opt and the Python installation, and /dev/null, zero, full,
  random, urandom. /root, /home, /var, /run, /srv, /mnt, /sys, /proc and the host's /tmp are absent (only
  the Python prefix is visible under /root when Python lives there). The program's work directory
  (cwd and HOME) /work and /tmp are size- and inode-limited tmpfs mounts; after any run that wrote to
  them they are replaced by empty ones, so nothing carries over from one run to the next.
- Processes: each run's program is forked (via setns) into a PID namespace whose pid 1 is an idle init
  (`sh -c 'read _'` spawned with posix_spawn: no copy of the zygote's memory). The fork is made by the
  template, a long-lived root copy of the zygote holding nothing but its socket and the fds programs
  need, with CLONE_PARENT: the program is the zygote's own child (signals and wait4 behave as anywhere
  else), yet the zygote never forks per run, and so does not pay a copy-on-write fault for each page
  its pumping and bookkeeping write while the program lives. The program is born in init's IPC
  namespace too. When the program has been reaped, the zygote looks at init's children and at the IPC
  namespace's objects (runspace.py): no child (no daemon, no orphan, no zombie left) and no SysV segment,
  queue or semaphore set and no POSIX message queue, and both namespaces are reused by the next run;
  anything, and init is killed, which makes the kernel kill everything in the PID namespace before the
  run is reported and destroy the IPC namespace with its objects, and the next run gets a fresh pair.
  Either way nothing outlives a run. (Where the IPC namespace's objects cannot be counted, each program
  takes a fresh IPC namespace of its own.) There is no /proc inside. Each program leads a session of its
  own: process groups span PID namespaces, and the zygote's holds the parse helper (the programs' uid).
- Privileges: the program runs as an unprivileged uid/gid chosen at random per worker, with no
  supplementary groups and no_new_privs, so rlimits cannot be raised and root's files (/etc/shadow)
  stay unreadable although the sandbox runs as root. Its environment holds only PATH, HOME, LANG, TMPDIR.
  A seccomp filter (seccomp.py, set once in the template that forks it; `extra["syscall_filter"]`) denies
  it, its builds, judge and parse helper calls that reach other processes, namespaces, mounts, the kernel.
- Limits: the CPU time of the run as a whole, all its processes together, counted by the worker's cgroup
  or else by the run's PID namespace (`extra["run_cpu_limit"]` says which): the zygote looks no sooner
  than the run, on every CPU at once, could have used its limit, and ends it once past it (a timeout).
  Each process also has RLIMIT_CPU (SIGXCPU at the limit, SIGKILL a CPU second later; a run that used more
  CPU than allowed is a timeout even when the signal came late). A build's CPU time, which has its own
  limit, is never charged to the run. RLIMIT_AS per process, RLIMIT_NPROC (per worker uid, so one run's
  fork bomb does not starve another worker), RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_STACK (`stack_mb`; not
  node's), no core files. Where a memory cgroup can be created (v1 or v2; `extra["memory_cgroup"]` says),
  the run as a whole (all its processes, memfd and SysV shared memory, files it writes) is bounded by its
  memory limit plus room for its disk, and an OOM kill there is reported as `memory_exceeded`. The zygote
  caps captured output (a run that floods stops with `output_limit`) and enforces a wall-clock backstop
  (from the build's end; a build has its own).
- Verdicts: a judged run (`Judge`) runs its tests in the worker's judge server, a long-lived process
  under the next uid, outside every run's PID namespace: the program can neither see, signal, trace nor
  read it. The tests are read from the request stream only after the program's process exists, so they
  are never in its memory, and reach the judge with the channel's fds over a Unix socket. Values cross
  as plain data (see rpc.py); the judge serves the program only calls of what a test handed it. The judge
  reports on a pipe the program never holds. A judged program's own exit status does not count.

Python programs are compiled before forking, by the worker's parse helper (a long-lived child of the
zygote under the programs' uid, outside every run's PID namespace), for programs of up to
`verdict.PARSE_LIMIT` characters: compiling parses, folds constants within CPython's size limits and
emits bytecode; nothing is run. A program that does not parse gets no process: it fails in phase
"compile" with the report `python main.py` prints (a judged one with every test "not run"). One that
compiles cleanly gets its code object, marshalled, which its process loads instead of compiling. What
only the compiler rejects, or what warns, the run compiles itself. What each run's interpreter needs
and never changes is set up once in the template (pyrun.py).

Not covered in verdicts: a test that calls a method of an object the program returned instead of plain
data (`result.startswith(expected)`) runs that method in the program, with the test's arguments, since
class-based tasks need method calls on the program's objects; comparisons (`==`, `!=`, `in`) with such
an object are never forwarded. A name the tests use but never define is the judge's own standard-library
object when the program bound it to one (`math` for a test relying on the solution's `import math`),
and otherwise the program's object, whose behaviour the program decides.

Not covered between runs of one worker (covert channels, both ends of which are programs): a run that
creates and removes files leaves its directories tidy, so they are reused, and the tmpfs inode numbers
the next run sees tell how many files it made; an abstract Unix socket kept alive only by a cycle of
in-flight descriptors stays connectable, in the worker's network namespace, until the kernel's socket
garbage collector frees it (well under a second); SysV IPC ids count up in an IPC namespace that runs
share, so a run that made and removed objects tells the next how many. Everything else a run could
leave (processes, including CLONE_PARENT children, which the zygote reaps itself; files; directory modes
and extended attributes; IPC objects; kernel keyrings, which the filter keeps programs from using and
which are cleared at the start of every run where there is no filter; locks and flags on its stdin, a
fresh open of /dev/null each run; the request itself, wiped from the template after each clone) is
removed or checked before the next run (tests/sandbox/test_redteam_crossrun.py).

Not covered: the kernel is shared (no gVisor: an exploit through a call the filter allows escapes);
between the zygote's looks a run can pass its CPU limit by 10 ms times the number of CPUs (more where only
its PID namespace counts it: /proc's clock ticks); without a memory cgroup, memory is bounded per process
only; timing side channels are open. The parse helper exposes CPython's tokenizer, parser and compiler to
untrusted text in a process that outlives a run: a memory-safety bug there would give a program the
programs' uid across later runs (unprivileged and filtered, with no network and a read-only root, never
the judge's uid), and with it the code objects later runs load, so that it could make later programs
behave as it likes; the root zygote never loads them. Programs in other languages run under the same OS
isolation but have no judge process: their verdict is their exit status, which they control.

Without root, where the kernel lends a user namespace, the level is "user_namespace": all of the above
inside one, except that one uid serves all and cgroups need delegating (userns.py). Otherwise it is
"process": rlimits (CPU time per process), a session whose group is killed after the run, a work directory
in the worker's scratch directory, an empty environment, the caller's uid; no network, filesystem or IPC
isolation, and the caller's own process can be signalled (and traced without the filter), so verdicts are
not protected there. The zygote, a subreaper, kills a daemon leaving the session, unless it forks faster.
Every result reports the level.
"""

import json
import marshal
import os
import select
import signal
import socket
import struct
import sys
import time
import types

_here = os.path.dirname(os.path.abspath(__file__))


def _load(name: str) -> types.ModuleType:
    """One of our sibling modules, by path (no package import inside the sandbox)."""
    mod = types.ModuleType(f"codefoundry_{name}")
    path = os.path.join(_here, f"{name}.py")
    mod.__file__ = path
    if _compiled is not None:
        code = _compiled(path)
    else:
        with open(path, encoding="utf-8") as f:
            code = compile(f.read(), path, "exec")
    exec(code, mod.__dict__)  # our own trusted module, loaded by path
    sys.modules[mod.__name__] = mod  # for the modules loaded after it
    return mod


# Given by worker.py's start-up code, which runs this file from code compiled in a throwaway child and
# compiles our modules the same way (path -> code object); None when this file is run directly.
_compiled = globals().get("_compiled")


cgroup, seccomp = _load("cgroup"), _load("seccomp")  # before jail.py, which uses them
jail, build = _load("jail"), _load("build")  # build.py uses jail.py
userns = _load("userns")
runspace = _load("runspace")
crossing, rpc = _load("crossing"), _load("rpc")  # rpc.py uses crossing.py
testcode = _load("testcode")
judge = _load("judge")
results = _load("verdict")
pyrun = _load("pyrun")
REQ_FD, RESP_FD, SCRATCH = 3, 4, None  # replaced at start-up (SCRATCH: at process level only)
JUDGED_EXIT_GRACE = 0.5  # seconds a judged program has to exit after its judge finished
JUDGE_STUCK_SECONDS = 3.0  # after the program was killed, how long the judge may take to report
OWN_PIDFD = -1  # the zygote's own PID namespace, to return to after starting a run's program
OWN_IPC_FD = -1  # the zygote's own IPC namespace (nsfs), to return to from the runs' one
SHELL = next((p for p in ("/bin/sh", "/usr/bin/sh") if os.access(p, os.X_OK)), "")
PROC_FD = -1  # the host's /proc, kept from before pivot_root: to see whether a run's init has children
NOTE_FD = 5  # in the program's process: trusted notes (the build's end, then its keeper's: build.py)
GO_FD = 6  # in the program's process: the zygote's end of it closes once the program may start (build.py)
BODY_BYTES = 1 << 16  # the template's buffer for a run's request: most fit, a larger one is not kept
NCPU = max(os.cpu_count() or 1, len(os.sched_getaffinity(0)))  # read before /sys is gone: a run's CPU pace


# -- one run, seen from the zygote ---------------------------------------------------------------------------
class Run:
    def __init__(self, req: dict, isolation: str, workdir: str | None = None) -> None:
        self.req = req
        self.limits = req["limits"]
        self.isolation = isolation
        self.ns = isolation != "process"
        self.judged = bool(req.get("judged"))
        # The program's uid; the judge's is uid + 1 as root, the same at the user_namespace level.
        self.uid = os.getuid() if isolation == userns.LEVEL else int(req["uid"])
        self.workdir = workdir or ("/work" if self.ns else _temp_dir())
        self.tmpdir = "/tmp" if self.ns else self.workdir
        self.code = b""  # a Python program's code object, marshalled by the parse helper (or b"")
        self.ipc_ready = False  # born in the run namespace's IPC namespace (else it takes a fresh one)
        self.groups, self.go = None, -1  # a build's: the worker's cgroups, and our end of GO_FD's pipe


def _temp_dir(prefix: str = "cf-run-") -> str:
    return __import__("tempfile").mkdtemp(prefix=prefix, dir=SCRATCH)  # only the process level imports it


class Worker:
    def __init__(self, isolation: str, uid: int, cgroup) -> None:
        self.isolation = isolation
        self.cgroup = cgroup
        self.disk_mb = -1
        self.dirty = True
        namespaces, one_uid = isolation != "process", isolation == userns.LEVEL
        # What counts a run's CPU time as a whole: the worker's cgroup, else the run's PID namespace (RunCpu).
        cpu, memory = (cgroup.cpu, cgroup.memory) if cgroup else (None, None)
        by = "cgroup" if cpu else "pid_namespace" if namespaces and PROC_FD >= 0 else None
        self.extra = {"memory_cgroup": bool(memory), "run_cpu_limit": by, "syscall_filter": seccomp.ENABLED}
        uid = os.getuid() if one_uid else uid
        self.judges = judge.JudgeServer(uid + (not one_uid), namespaces, jail=jail, testcode=testcode)
        self.parser = results.ParseServer(uid, namespaces, jail=jail)
        self.forker = Forker(isolation, cgroup) if jail.SYSCALL is not None else None
        self.space = runspace.RunNamespace(SHELL, PROC_FD, OWN_PIDFD, OWN_IPC_FD) if namespaces else None
        # Forked now, before any request is read: forked in the middle of a run, a helper (the template
        # above all, which every program is a copy of) kept that run's request in its stack's frames.
        for helper in self._helpers():
            helper.socket()

    def _helpers(self) -> list:
        return [self.judges.process, self.parser.process, *([self.forker.process] if self.forker else [])]

    def known_children(self) -> set[int]:
        """The zygote's long-lived children; any other child after a run is a stray (`jail.stray_children`)."""
        return {h.pid for h in self._helpers() if h.pid is not None} | (
            {self.space.init_pid} if self.space is not None and self.space.init_pid > 0 else set()
        )

    def serve(self, req: dict) -> dict:
        run = Run(req, self.isolation)
        python = req.get("run") == ["<python>"]
        report, code = self.parser.check(req["program"], req["filename"]) if python else (None, b"")
        if report is not None:  # a judged run's tests are still read: the request stream stays in step
            if not run.ns:
                os.rmdir(run.workdir)  # made for the run, still empty: nothing ran
            tests = (json.loads(jail.read_frame(REQ_FD)).get("tests") or []) if run.judged else []
            return results.not_run(run, report, tests) | {"extra": dict(self.extra)}
        disk = int(run.limits["disk_mb"])
        if run.ns and (self.dirty or disk != self.disk_mb):
            jail.fresh_run_dirs(run.uid, disk)
            self.disk_mb = disk
        self.dirty = True
        if self.isolation == userns.LEVEL:  # the uid's count there has the helpers, zygote, its waiter, init
            run.limits["processes"] = int(run.limits["processes"]) + len(self._helpers()) + 3
        oom_before = self._limit_memory(run)
        try:
            jail.write_run_files(run.workdir, run.req.get("files") or {}, run.uid if run.ns else None)
            run.code = code
            cpu_by = self.extra["run_cpu_limit"]
            result = start(
                run, self.judges, self.known_children, self.cgroup, self.space, self.forker, cpu_by
            )
        finally:
            if not run.ns:
                import shutil

                shutil.rmtree(run.workdir, ignore_errors=True)
        self.dirty = run.ns and not jail.tidy_run_dirs(run.req["filename"], run.uid)
        result["extra"] = dict(self.extra)
        if self.cgroup is not None and self.cgroup.oom_kills() > oom_before and result["status"] != "ok":
            result["status"] = "memory_exceeded"
            result["message"] = f"the run's total memory passed its limit of {run.limits['memory_mb']} MB"
        return result

    def _limit_memory(self, run: Run) -> int:
        """The run's whole memory (every process, memfd, shared memory, tmpfs files) is bounded by its
        memory limit plus room for its disk, or more while it builds (`_program_may_start`); returns the
        cgroup's OOM-kill count before the run."""
        if self.cgroup is None:
            return 0
        self.cgroup.bound(run.limits, building=bool(run.req.get("compile")))
        return self.cgroup.oom_kills()


class Forker:
    """Forks each run's program from the template, a long-lived copy of the zygote, with CLONE_PARENT: the
    program is still the zygote's child (wait4), but the zygote, whose pumping writes ~256 pages a run,
    never forks per run and so never pays their copy-on-write faults."""

    def __init__(self, isolation: str, cgroup) -> None:
        self.process = jail.Helper(lambda sock_fd: _template(sock_fd, isolation, cgroup))

    def fork(self, run: Run, keep: dict[int, int], space: "runspace.RunNamespace | None") -> int:
        """The program's pid; `keep` maps the fds it gets to the zygote's fds; with `space`, it is born in
        the run's PID namespace (and IPC one, where shared). `run.code` follows the request, as raw bytes."""
        sock = self.process.socket()
        # Not stdin and files, used by now: held in the template's buffer, they were in every later program
        # (after 32 MB of stdin, a Python program could not allocate 40 MB under a 96 MB limit).
        req = {k: v for k, v in run.req.items() if k not in ("stdin", "files")}
        head = marshal.dumps({"req": req, "workdir": run.workdir, "targets": list(keep)})
        body = struct.pack(">I", len(head)) + head + run.code
        fds, flag = list(keep.values()), 0  # flag bits for the template: 1, init's pidfd last; 2, IPC too
        if space is not None:
            fds, flag = [*fds, space.pidfd], 1 + 2 * space.shares_ipc
        jail.send_with_fds(sock, body, fds, flag=flag)
        reply = b""
        while len(reply) < 4:
            chunk = sock.recv(4 - len(reply))
            if not chunk:
                self.process.kill()
                raise OSError("the template process ended")
            reply += chunk
        (pid,) = struct.unpack(">i", reply)
        if pid < 0:
            raise OSError(-pid, f"clone: {os.strerror(-pid)}")
        return pid


def _template(sock_fd: int, isolation: str, cgroup) -> None:
    """The template's loop: receive a run's fds and request, clone the program, send back its pid."""
    jail.prctl(jail.PR_SET_PDEATHSIG, signal.SIGKILL)  # it never outlives the zygote
    # Only what the programs need: a run's pipes open in the zygote when this was forked must not stay
    # open here (their readers would never see the end of them).
    previous = 0
    for fd in sorted({sock_fd, OWN_PIDFD, OWN_IPC_FD} - {-1} | (cgroup.fds if cgroup is not None else set())):
        os.closerange(previous, fd)
        previous = fd + 1
    os.closerange(previous, 1 << 16)
    if isolation != "process":
        pyrun.prepare_runs(pyrun.run_env("/work", "/tmp"))
    pyrun.warm_run_path(rpc, lambda req, workdir: Run(req, "namespaces", workdir))
    if seccomp.ENABLED:
        seccomp.install()  # once: every program is born under it
    sock = socket.socket(fileno=sock_fd)
    body = bytearray(BODY_BYTES)  # each run's request, wiped after its clone
    while (message := jail.receive_into(sock, body, 16)) is not None:
        size, fds, flag = message
        pidns = fds.pop() if flag & 1 else -1
        ipc = jail.CLONE_NEWIPC if flag & 2 else 0
        if pidns >= 0:
            jail.setns(pidns, jail.CLONE_NEWPID | ipc)
        try:
            pid = jail.clone(jail.CLONE_PARENT)
        except OSError as e:
            pid = -(e.errno or 1)
        if pid == 0:
            try:
                # Decoded here, not before the clone: every page the template writes costs it a fault
                # after each clone (measured: 64 more a run there, 8 fewer in the program's process).
                (head,) = struct.unpack(">I", body[:4])
                msg = marshal.loads(body[4 : 4 + head])
                run = Run(msg["req"], isolation, msg["workdir"])
                run.code = bytes(body[4 + head : size])
                run.ipc_ready = bool(ipc)
                program_main(run, dict(zip(msg["targets"], fds, strict=True)), cgroup)  # ends the process
            finally:
                os._exit(70)  # should it ever return or raise: never back into the caller
        body[:size] = bytes(size)  # the program has its copy; later runs must find none
        if len(body) > BODY_BYTES:  # a large source's: later programs would be born with it
            body = bytearray(BODY_BYTES)
            jail.release_free_memory()
        if pidns >= 0:
            jail.setns(OWN_PIDFD, jail.CLONE_NEWPID)
            if ipc:
                jail.setns(OWN_IPC_FD, jail.CLONE_NEWIPC)
            os.close(pidns)
        for fd in fds:
            os.close(fd)
        sock.sendall(struct.pack(">i", pid))


def start(run: Run, judges, known, groups=None, space=None, forker: Forker | None = None,
          cpu_by: str | None = None) -> dict:  # fmt: skip
    """Clone an idle init into new PID and IPC namespaces, fork the program into them (through the
    template), hand the tests to the judge, watch. `known()`: the zygote's own long-lived children;
    `cpu_by`: what counts the run's CPU time as a whole (`Worker.extra["run_cpu_limit"]`)."""
    stdin_data = bytes.fromhex(run.req.get("stdin") or "")
    if stdin_data:
        stdin_fd = os.memfd_create("stdin")
        os.write(stdin_fd, stdin_data)
        os.lseek(stdin_fd, 0, os.SEEK_SET)
    else:
        # Opened per run, not a dup: a dup shares one open file description, whose status flags and
        # flock a run could set for every later run (and, through the lock, for the host's /dev/null).
        stdin_fd = os.open("/dev/null", os.O_RDONLY)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    none = (-1, -1)
    (note_r, note_w), (go_r, run.go) = (os.pipe(), os.pipe()) if run.req.get("compile") else (none, none)
    run.groups = groups
    rpc_in, rpc_out = (os.pipe(), os.pipe()) if run.judged else (none, none)  # judge->prog, prog->judge
    keep = {0: stdin_fd, 1: out_w, 2: err_w} | ({NOTE_FD: note_w, GO_FD: go_r} if note_w >= 0 else {})
    keep |= {3: rpc_in[0], 4: rpc_out[1]} if run.judged else {}
    started = time.monotonic()
    # Before the program's process exists: the run's CPU time, counted by the worker's cgroup, else by its
    # PID namespace (RunCpu).
    count = groups.cpu_seconds if cpu_by == "cgroup" else space.cpu_seconds if cpu_by else None
    meter = cgroup.RunCpu(count, cpu_by == "cgroup", run.req, started, NCPU)
    if space is not None:
        space.enter()  # our next child is born in the run's PID namespace (a fresh init, if need be)
    if forker is not None:
        if space is not None:
            jail.setns(OWN_PIDFD, jail.CLONE_NEWPID)  # the template forks the program, not we
        pid = forker.fork(run, keep, space)
    else:  # no raw clone on this architecture (process-level isolation only): fork here
        pid = os.fork()
        if pid == 0:
            try:
                program_main(run, keep, groups)  # ends the process
            finally:
                os._exit(70)  # should it ever return or raise: never back into the caller
    for fd in (stdin_fd, out_w, err_w, note_w, go_r, rpc_in[0], rpc_out[1]):
        if fd >= 0:
            os.close(fd)
    report_r = -1
    if run.judged:
        payload = jail.read_frame(REQ_FD)  # read only now: the program's process never held it
        report_r, report_w = os.pipe()
        judges.submit(payload, [rpc_out[0], rpc_in[1], report_w])
        for fd in (rpc_out[0], rpc_in[1], report_w):
            os.close(fd)
    fds = {"out": out_r, "err": err_r, "note": note_r, "report": report_r}
    return watch(run, pid, space, judges, fds, started, known, meter)


def watch(
    run: Run,
    pid: int,
    space: "runspace.RunNamespace | None",
    judges: "judge.JudgeServer",
    fds: dict[str, int],
    started: float,
    known,
    meter: "cgroup.RunCpu",
) -> dict:
    """Pump output under a cap, enforce the run's CPU limit and wall backstop, reap it, collect the report."""
    cap = int(run.limits["output_bytes"])
    # A build has a backstop of its own; the run's starts when the build has ended (its notes end).
    deadline = started + float(run.limits["build_wall_seconds" if meter.build is None else "wall_seconds"])
    data = {name: bytearray() for name in fds}
    by_fd = {fd: name for name, fd in fds.items() if fd >= 0}
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (*by_fd, pidfd):
        poller.register(fd, select.POLLIN)
    reason, status = "", None
    grace: float | None = None  # once the judge is done, the program gets a moment to exit by itself
    killed_at: float | None = None
    while by_fd or status is None:
        now = time.monotonic()
        if grace is not None and now >= grace and status is None:
            grace = None
            jail.kill_pid(pid)  # the verdict is in; the program is stuck (serving, spinning, ...)
        if now >= deadline and not reason:
            reason, killed_at = "build" if meter.build is None else "wall", now
            _kill_run(pid, space)
        if now >= meter.next and not reason and status is None and meter.over(now):
            reason, killed_at = "cpu", now  # its processes together: each one's RLIMIT_CPU is not enough
            _kill_run(pid, space)
        if killed_at is not None and now - killed_at > JUDGE_STUCK_SECONDS and "report" in by_fd.values():
            judges.kill()  # trusted test code that does not end: restart the judge, end the run
            killed_at = None
        wake = min(deadline, grace or deadline, meter.next if status is None else deadline)
        timeout_ms = int(max(0.0, wake - now) * 1000) if not reason else 500
        for fd, _ in poller.poll(timeout_ms):
            if fd == pidfd:
                poller.unregister(pidfd)
                status = os.wait4(pid, 0)[1:]
                stray = jail.stray_children(PROC_FD, known())
                if space is None or not space.empty() or stray:
                    meter.leftovers()
                    _kill_run(pid, space)  # leftovers (daemons, zombies): init's end takes them all down
                jail.reap_strays(PROC_FD, known, stray)
                continue
            chunk = os.read(fd, 65536)
            name = by_fd[fd]
            if not chunk:
                poller.unregister(fd)
                del by_fd[fd]
                if name == "report" and status is None:
                    grace = time.monotonic() + JUDGED_EXIT_GRACE
                elif name == "note" and meter.build is None and not reason:  # a failed build: no line
                    meter.built(None, time.monotonic())
                continue
            if name in ("out", "err"):
                room = cap - len(data["out"]) - len(data["err"])
                data[name] += chunk[: max(room, 0)]
                if len(chunk) > room and not reason:
                    reason, killed_at = "output", time.monotonic()
                    _kill_run(pid, space)
            elif len(data[name]) < (8 << 20):
                data[name] += chunk
                ended = name == "note" and meter.build is None and b"\n" in data[name] and not reason
                if ended and meter.built(results.build_cpu(data[name]), time.monotonic()):  # the build's end
                    _program_may_start(run)
                    started = time.monotonic()  # the program's wall time starts now
                    deadline = started + float(run.limits["wall_seconds"])
    os.close(pidfd)
    _program_may_start(run)  # a build that failed, or a run killed while it built
    if space is not None and space.killed:  # `discard` returns once every process of the namespace is gone
        space.discard(lambda: jail.reap(jail.stray_children(PROC_FD, known())))
    for fd in fds.values():
        if fd >= 0:
            os.close(fd)
    prog = results.program_status(status)
    if prog:
        prog["cpu"] = meter.total(prog["cpu"])  # every process of the run, once all have ended
    return results.verdict(run, prog, data, reason, time.monotonic() - started)


def _program_may_start(run: Run) -> None:
    """The build has ended: the run's own memory limit again, then the end of GO_FD's pipe, for which the
    program's keeper waits before it starts the program (build.start_program)."""
    if run.go >= 0:
        try:
            if run.groups is not None:
                run.groups.bound(run.limits)
        finally:
            os.close(run.go)
            run.go = -1


def _kill_run(pid: int, space) -> None:
    """End the whole run: its namespace's init (the kernel then kills the rest), or at process level the
    program's process group."""
    if space is not None:
        space.kill()
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- inside the run: init and the program's process ---------------------------------------------------------
def program_main(run: Run, keep: dict[int, int], cgroup) -> None:
    """Take a session of its own and a fresh IPC namespace (unless born in the run's), join the memory
    cgroup, arrange fds, drop privileges, then compile and exec, or run Python in this warm interpreter."""
    code = 70
    try:
        os.setsid()  # no PID namespace bounds the zygote's group: kill(0, SIGSTOP) reached the parse helper
        if run.ns and not run.ipc_ready:
            jail.unshare(jail.CLONE_NEWIPC)  # SysV and POSIX IPC objects die with the program
        if cgroup is not None:
            cgroup.join()
        jail.arrange_fds(keep)
        req = run.req
        env = pyrun.run_env(run.workdir, run.tmpdir)
        os.chdir(run.workdir)
        fd = os.open(req["filename"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        source = memoryview(req["program"].encode("utf-8", "surrogateescape"))
        while source:
            source = source[os.write(fd, source) :]
        if run.ns:
            os.fchown(fd, run.uid, run.uid)
        os.close(fd)
        # Without the filter (which denies filling them), the uid's keyrings are emptied before anything runs.
        keyrings, building = run.ns and not seccomp.ENABLED, bool(req.get("compile"))
        jail.drop_privileges(run.limits, run.uid, run.ns, building=building, clear_keyrings=keyrings)
        processes = None
        if building:
            build.build(req["compile"], env, run.limits, NOTE_FD)  # a failed build ends the process
            build.start_program(NOTE_FD, GO_FD)  # returns in a new process; the keeper reports its memory
            processes = int(run.limits["processes"]) + 1 if run.ns else None  # after a build; with the keeper
        space = int(run.limits.get("address_space_mb", run.limits["memory_mb"]))  # runners.Runner.reserved_mb
        stack = run.limits.get("stack_mb")  # absent for node (worker.OWN_STACK)
        jail.apply_run_limits(float(run.limits["cpu_seconds"]), space, processes, stack)
        if req.get("run") == ["<python>"]:
            code = pyrun.run(req["program"], req["filename"], env, run.judged, run.code, rpc)
        else:
            jail.exec_program(req["run"], env)
    except BaseException as e:
        try:
            os.write(2, f"codefoundry sandbox: {type(e).__name__}: {e}\n".encode()[-2000:])
        except OSError:
            pass
    os._exit(code)


# -- the server loop ---------------------------------------------------------------------------------------
def main() -> None:
    global REQ_FD, RESP_FD, OWN_PIDFD, OWN_IPC_FD, PROC_FD, SCRATCH
    REQ_FD, RESP_FD = int(sys.argv[1]), int(sys.argv[2])
    for fd in (REQ_FD, RESP_FD):
        os.set_inheritable(fd, False)  # nothing we exec (a run's init) may hold the worker's pipes
    try:
        PROC_FD = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        PROC_FD = -1  # no /proc: run namespaces are never judged empty, so never reused (still correct)
    hello = json.loads(jail.read_frame(REQ_FD))
    isolation, why, cgroup = userns.setup_worker(hello.get("extra_readonly", []))
    if isolation == userns.LEVEL:  # a new process, pid 1 of the worker's PID namespace, with its /proc
        os.close(PROC_FD)
        PROC_FD = userns.PROC_FD
    OWN_PIDFD = os.pidfd_open(os.getpid())
    OWN_IPC_FD = runspace.own_ipc_namespace(PROC_FD) if isolation != "process" else -1
    jail.preload(hello.get("preload", []))
    sys.path += [p for p in hello.get("site_packages", []) if p not in sys.path]  # after the stdlib's
    SCRATCH = None if isolation != "process" else _temp_dir("cf-worker-")  # the parent removes it
    reply = {
        "isolation": isolation,
        "reason": why,
        "cgroups": cgroup.paths if cgroup else [],
        "scratch": SCRATCH,
    }
    jail.write_frame(RESP_FD, json.dumps(reply).encode())
    worker = Worker(isolation, int(hello["uid"]), cgroup)
    while True:
        try:
            req = json.loads(jail.read_frame(REQ_FD))
        except EOFError:
            worker.judges.kill()
            worker.parser.kill()
            if worker.forker is not None:
                worker.forker.process.kill()
            if worker.space is not None:
                worker.space.discard()
            if cgroup is not None:
                cgroup.remove()
            return
        try:
            result = worker.serve(req)
        except Exception as e:
            message = f"{type(e).__name__}: {e}"[:300]
            result = {"status": "sandbox_error", "isolation": isolation, "message": message}
            jail.write_frame(RESP_FD, json.dumps(result).encode())
            return  # the request stream may be out of step: the pool starts a fresh worker
        jail.write_frame(RESP_FD, json.dumps(result).encode())


if __name__ == "__main__":
    main()
