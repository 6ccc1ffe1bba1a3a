"""The sandbox worker: a warm, single-threaded fork server that runs one untrusted program per clone.

Started by `worker.py` as `python -I -S zygote.py REQ_FD RESP_FD` with an empty environment; standard
library only. It reads requests from REQ_FD and writes one response per request to RESP_FD (frames of a
4-byte big-endian length and a JSON body).

What is isolated (level "namespaces", when the worker may create namespaces: root or CAP_SYS_ADMIN):
- Network: the worker lives in its own network namespace, made once, with no device up, so no address
  at all, 127.0.0.1 included, can be reached.
- Filesystem: a private mount namespace whose root is a read-only tmpfs holding read-only, nosuid, nodev
  binds of /usr, /etc, /bin, /sbin, /lib*, /opt and the Python installation, and /dev/null, zero, full,
  random, urandom. /root, /home, /var, /run, /srv, /mnt, /sys, /proc and the host's /tmp are absent (only
  the Python prefix is visible under /root when Python lives there). The program's work directory
  (cwd and HOME) /work and /tmp are size- and inode-limited tmpfs mounts; after any run that wrote to
  them they are replaced by empty ones, so nothing carries over from one run to the next.
- Processes: the program is pid 1 of a fresh PID namespace, cloned straight from the zygote. When it
  exits, or is killed, the kernel kills everything left in that namespace (daemons, double forks, setsid
  children) before the run is reported, so nothing outlives a run. There is no /proc to look at.
- Privileges: the program runs as an unprivileged uid/gid chosen at random per worker, with no
  supplementary groups and no_new_privs, so rlimits cannot be raised and root's files (/etc/shadow)
  stay unreadable although the sandbox runs as root. Its environment holds only PATH, HOME, LANG, TMPDIR.
- Limits: RLIMIT_CPU (the timeout: SIGKILL at the limit; a run that used more CPU than allowed is a
  timeout even when the signal came late), RLIMIT_AS, RLIMIT_NPROC (per worker uid, so one run's fork bomb
  does not starve another worker), RLIMIT_FSIZE, RLIMIT_NOFILE, no core files. The zygote caps captured
  output (a run that floods stops with `output_limit`) and enforces a wall-clock backstop.
- Verdicts: a judged run (`Judge`) runs its tests in a second process, forked by the zygote under the
  next uid, outside the program's PID namespace: the program can neither see, signal, trace nor read it.
  The tests are read from the request stream only after the program's process exists, so they are never
  in its memory. Values cross as plain data (see rpc.py). The judge reports on a pipe the program never
  holds. A judged program's own exit status does not count.

Not covered: the kernel is shared (no seccomp filter, no gVisor: a kernel exploit escapes); CPU time is
limited per process, not per run (a run's CPU use is bounded by processes x CPU limit and by the wall
backstop); memory is limited per process by address space, not by a cgroup (so at most processes x
memory); timing side channels are open. Because the program is its namespace's init, signals it sends to
itself with the default action (e.g. `kill(getpid(), SIGTERM)`) are ignored by the kernel; for Python
programs the fatal signals and os.kill/killpg/abort aimed at itself are re-armed so that they end the
program as they would elsewhere (a program that bypasses this through ctypes merely survives itself). Programs in languages other than Python run under the same
OS isolation but have no judge process: their verdict is their exit status, which they control.

Without namespace privileges the level is "process": rlimits, an own process group that is killed at the
end, a temporary work directory and an empty environment; no network or filesystem isolation, and a
daemon that leaves the process group escapes. The level is reported in every result.
"""

import json
import os
import select
import signal
import struct
import sys
import time
import types

_here = os.path.dirname(os.path.abspath(__file__))


def _load(name: str) -> types.ModuleType:
    mod = types.ModuleType(f"codefoundry_{name}")
    path = os.path.join(_here, f"{name}.py")
    with open(path, encoding="utf-8") as f:
        exec(compile(f.read(), path, "exec"), mod.__dict__)  # our own trusted module, loaded by path
    return mod


jail = _load("jail")
rpc = _load("rpc")
REQ_FD, RESP_FD = 3, 4  # replaced from argv at start-up
JUDGED_EXIT_GRACE = 0.5  # seconds a judged program has to exit after its judge finished
NOTE_FD = 5  # in the program's process: trusted notes to the zygote, closed before untrusted code runs
FATAL_SIGNALS = ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGABRT", "SIGVTALRM",
                 "SIGPROF", "SIGTRAP", "SIGSYS", "SIGIO", "SIGPWR", "SIGSTKFLT")  # fmt: skip


# -- framing ------------------------------------------------------------------------------------------
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


# -- one run, seen from the zygote ---------------------------------------------------------------------------
class Run:
    def __init__(self, req: dict, isolation: str) -> None:
        self.req = req
        self.limits = req["limits"]
        self.isolation = isolation
        self.ns = isolation == "namespaces"
        self.judged = bool(req.get("judged"))
        self.uid = int(req["uid"])  # the program's uid; the judge's is uid + 1
        self.workdir = "/work" if self.ns else _temp_dir()
        self.tmpdir = "/tmp" if self.ns else self.workdir


def _temp_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="cf-run-")


class Worker:
    def __init__(self, isolation: str) -> None:
        self.isolation = isolation
        self.disk_mb = -1
        self.dirty = True

    def serve(self, req: dict) -> dict:
        run = Run(req, self.isolation)
        disk = int(run.limits["disk_mb"])
        if run.ns and (self.dirty or disk != self.disk_mb):
            jail.fresh_run_dirs(run.uid, disk)
            self.disk_mb = disk
        self.dirty = True
        try:
            _write_files(run)
            result = start(run)
        finally:
            if not run.ns:
                import shutil

                shutil.rmtree(run.workdir, ignore_errors=True)
        self.dirty = run.ns and not _tidy(run)
        return result


def _tidy(run: Run) -> bool:
    """True when the run left nothing behind but its own source file, which is then removed; otherwise the
    run directories are replaced before the next run."""
    if os.listdir("/tmp") or os.listdir("/work") != [run.req["filename"]]:
        return False
    path = os.path.join("/work", run.req["filename"])
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    os.unlink(path)
    return True


def _write_files(run: Run) -> None:
    for name, content in (run.req.get("files") or {}).items():
        path = os.path.normpath(os.path.join(run.workdir, name))
        if not path.startswith(run.workdir + "/"):
            raise ValueError(f"file name {name!r} leaves the work directory")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(bytes.fromhex(content))
        if run.ns:
            os.chown(path, run.uid, run.uid)


def start(run: Run) -> dict:
    """Clone the program as pid 1 of a new PID namespace, fork the judge if any, and watch both."""
    stdin_fd = os.memfd_create("stdin")
    os.write(stdin_fd, bytes.fromhex(run.req.get("stdin") or ""))
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    note_r, note_w = os.pipe()
    rpc_in, rpc_out = (
        (os.pipe(), os.pipe()) if run.judged else ((-1, -1), (-1, -1))
    )  # judge->prog, prog->judge
    started = time.monotonic()
    pid = jail.clone_new_pid_namespace() if run.ns else os.fork()
    if pid == 0:
        keep = {0: stdin_fd, 1: out_w, 2: err_w, NOTE_FD: note_w}
        if run.judged:
            keep |= {3: rpc_in[0], 4: rpc_out[1]}
        program_main(run, keep)  # never returns
    for fd in (stdin_fd, out_w, err_w, note_w, rpc_in[0], rpc_out[1]):
        if fd >= 0:
            os.close(fd)
    judge_pid, report_r = None, -1
    if run.judged:
        payload = json.loads(read_frame(REQ_FD))  # read only now: the program's process never held it
        report_r, report_w = os.pipe()
        judge_pid = os.fork()
        if judge_pid == 0:
            judge_main(run, payload, {3: rpc_out[0], 4: rpc_in[1], 5: report_w})
        for fd in (rpc_out[0], rpc_in[1], report_w):
            os.close(fd)
    return watch(
        run, pid, judge_pid, {"out": out_r, "err": err_r, "note": note_r, "report": report_r}, started
    )


def watch(run: Run, pid: int, judge_pid: int | None, fds: dict[str, int], started: float) -> dict:
    """Pump output under a cap, enforce the wall-clock backstop, reap the program and the judge."""
    cap = int(run.limits["output_bytes"])
    deadline = started + float(run.limits["wall_seconds"])
    data = {name: bytearray() for name in fds}
    by_fd = {fd: name for name, fd in fds.items() if fd >= 0}
    procs = {os.pidfd_open(pid): pid}
    if judge_pid is not None:
        procs[os.pidfd_open(judge_pid)] = judge_pid
    poller = select.poll()
    for fd in (*by_fd, *procs):
        poller.register(fd, select.POLLIN)
    reason, status = "", {}
    grace: float | None = None  # once the judge is done, the program gets a moment to exit by itself
    while by_fd or len(status) < len(procs):
        now = time.monotonic()
        if grace is not None and now >= grace and pid not in status:
            grace = None
            _kill(run, pid, None)  # the verdict is in; the program is stuck (serving, spinning, ...)
        left = min(deadline, grace or deadline) - now
        if deadline - now <= 0 and not reason:
            reason = "wall"
            _kill(run, pid, judge_pid)
        for fd, _ in poller.poll(max(0, int(left * 1000)) if not reason else 2000):
            if fd in procs:
                poller.unregister(fd)
                status[procs[fd]] = os.wait4(procs[fd], 0)[1:]
                os.close(fd)
                if procs[fd] == judge_pid and pid not in status:
                    grace = time.monotonic() + JUDGED_EXIT_GRACE
                elif procs[fd] == pid and not run.ns:
                    _kill(run, pid, None)  # process level: end stragglers of the program's group
                continue
            chunk = os.read(fd, 65536)
            name = by_fd[fd]
            if not chunk:
                poller.unregister(fd)
                del by_fd[fd]
                continue
            if name in ("out", "err"):
                room = cap - len(data["out"]) - len(data["err"])
                data[name] += chunk[: max(room, 0)]
                if len(chunk) > room and not reason:
                    reason = "output"
                    _kill(run, pid, judge_pid)
            elif len(data[name]) < (8 << 20):
                data[name] += chunk
    for fd in fds.values():
        if fd >= 0:
            os.close(fd)
    wall = time.monotonic() - started
    return verdict(run, status.get(pid), status.get(judge_pid) if judge_pid else None, data, reason, wall)


def _kill(run: Run, pid: int, judge_pid: int | None) -> None:
    for target in (pid, judge_pid):
        if target is None:
            continue
        try:
            if run.ns or target == judge_pid:
                os.kill(target, signal.SIGKILL)  # the program is its namespace's init: all of it goes
            else:
                os.killpg(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _json_lines(data: bytes) -> dict:
    merged: dict = {}
    for line in data.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            merged |= obj
    return merged


def verdict(run: Run, prog: tuple | None, judge: tuple | None, data: dict, reason: str, wall: float) -> dict:
    note = _json_lines(bytes(data["note"]))
    res: dict = {
        "stdout": bytes(data["out"]).decode("utf-8", "replace"),
        "stderr": bytes(data["err"]).decode("utf-8", "replace"),
        "truncated": reason == "output",
        "wall_seconds": round(wall, 4),
        "isolation": run.isolation,
        "phase": "compile" if note.get("phase") == "compile" else "run",
    }
    sig = code = None
    if prog is not None:
        st, ru = prog
        code = os.WEXITSTATUS(st) if os.WIFEXITED(st) else None
        sig = os.WTERMSIG(st) if os.WIFSIGNALED(st) else note.get("signal")
        res |= {
            "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 4),
            "peak_memory_mb": round(ru.ru_maxrss / 1024, 2),
        }
    res |= {"exit_code": code, "signal": sig}
    report = _json_lines(bytes(data["report"])) if run.judged else {}
    if run.judged:
        res["tests"] = [{"passed": bool(p), "error": str(e)[:300]} for p, e in report.get("tests", [])]
        res["tests_completed"] = bool(report.get("completed"))
    status, msg = _status(run, res, note, report, reason, prog is not None, judge)
    res["status"], res["message"] = status, msg
    return res


def _status(run: Run, res: dict, note: dict, report: dict, reason: str, reaped: bool, judge: tuple | None):
    lim = run.limits
    sig, code, cpu = res["signal"], res["exit_code"], res.get("cpu_seconds", 0.0)
    if reason == "output":
        return "output_limit", f"output passed {lim['output_bytes']} bytes"
    if reason == "wall":
        return "timeout", f"wall-clock backstop of {lim['wall_seconds']:g} s"
    if not reaped:
        return "sandbox_error", "the program's process was not reaped"
    if res["phase"] == "compile":
        return "failed", "compile error"
    if cpu > float(lim["cpu_seconds"]) or sig == signal.SIGXCPU:
        return "timeout", f"CPU-time limit of {lim['cpu_seconds']:g} s"
    if note.get("memory") or _looks_out_of_memory(res, lim):
        return "memory_exceeded", f"memory limit of {lim['memory_mb']} MB"
    if run.judged and report.get("completed") and res["tests"] and all(t["passed"] for t in res["tests"]):
        return "ok", ""
    if sig is not None:
        return "killed", f"killed by signal {sig} ({_signame(sig)})"
    if run.judged:
        if judge is not None and not report:
            return "sandbox_error", "the judge ended without a report"
        return "failed", report.get("error") or "not every test passed"
    return ("ok", "") if code == 0 else ("failed", f"exit code {code}")


def _looks_out_of_memory(res: dict, lim: dict) -> bool:
    tail = res["stderr"][-2000:]
    if "MemoryError" in tail or "std::bad_alloc" in tail or "heap out of memory" in tail:
        return True
    near_limit = res.get("peak_memory_mb", 0.0) >= 0.9 * float(lim["memory_mb"])
    return res["signal"] in (signal.SIGSEGV, signal.SIGABRT, signal.SIGKILL) and near_limit


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "?"


# -- inside the run: the program's process --------------------------------------------------------------
def program_main(run: Run, keep: dict[int, int]) -> None:
    """Arrange fds, drop privileges, then compile and exec, or run Python in this warm interpreter."""
    code = 70
    try:
        if not run.ns:
            os.setpgid(0, 0)
        jail.arrange_fds(keep)
        req = run.req
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": run.workdir,
            "LANG": "C.UTF-8",
            "TMPDIR": run.tmpdir,
        }
        os.chdir(run.workdir)
        with open(req["filename"], "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(req["program"])
        if run.ns:
            os.chown(req["filename"], run.uid, run.uid)
        jail.drop_privileges(run.limits, run.uid, run.ns)
        if req.get("compile") and not _compile(req["compile"], env, run.limits):
            os._exit(1)
        if req.get("run") != ["<python>"]:
            os.close(NOTE_FD)
        jail.apply_run_limits(float(run.limits["cpu_seconds"]), int(run.limits["memory_mb"]))
        if req.get("run") == ["<python>"]:
            code = run_python(req["program"], req["filename"], env, run.judged)
        else:
            os.execve(req["run"][0], req["run"], env)
    except BaseException as e:
        try:
            os.write(2, f"codefoundry sandbox: {type(e).__name__}: {e}\n".encode()[-2000:])
        except OSError:
            pass
    os._exit(code)


def _compile(cmd: list[str], env: dict[str, str], limits: dict) -> bool:
    """Compile in a child with its own CPU budget, before any untrusted code runs in this process."""
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(err_w, 1), os.dup2(err_w, 2)
        jail.apply_run_limits(float(limits["compile_seconds"]), max(2048, int(limits["memory_mb"])))
        os.execve(cmd[0], cmd, env)
    os.close(err_w)
    out = b""
    while chunk := os.read(err_r, 65536):
        out = (out + chunk)[-20000:]
    os.close(err_r)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return True
    os.write(2, out)
    os.write(NOTE_FD, json.dumps({"phase": "compile"}).encode() + b"\n")
    return False


def _on_fatal_signal(signum: int, frame: object) -> None:
    """pid 1 ignores signals it sends itself unless handled: end the program as the default action would."""
    try:
        os.write(NOTE_FD, json.dumps({"signal": signum}).encode() + b"\n")
    except OSError:
        pass
    os._exit(128 + signum)


def _self_signal_semantics() -> None:
    """The program is its PID namespace's init, and the kernel drops signals that init sends itself with
    their default action. Re-arm the usual meaning for Python programs: fatal signals end the program, and
    signalling itself, its group, pid 1 or its (invisible) parent with a signal it does not handle ends it.
    This is about faithful behaviour, not security: bypassing it only lets a program survive itself."""
    for name in FATAL_SIGNALS:
        signal.signal(getattr(signal, name), _on_fatal_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    real_kill, real_killpg = os.kill, os.killpg

    def _ends_self(sig: int) -> bool:
        if sig == 0:
            return False
        handler = signal.getsignal(sig) if sig not in (signal.SIGKILL, signal.SIGSTOP) else signal.SIG_DFL
        return handler == signal.SIG_DFL and sig not in (
            signal.SIGCHLD,
            signal.SIGURG,
            signal.SIGWINCH,
            signal.SIGCONT,
        )

    def kill(pid: int, sig: int) -> None:
        if pid in (0, 1, os.getpid()) and _ends_self(int(sig)):
            _on_fatal_signal(int(sig), None)
        real_kill(pid, sig)

    def killpg(pgid: int, sig: int) -> None:
        if pgid in (0, 1, os.getpgid(0)) and _ends_self(int(sig)):
            _on_fatal_signal(int(sig), None)
        real_killpg(pgid, sig)

    def raise_signal(sig: int) -> None:
        kill(os.getpid(), sig)

    def abort() -> None:
        _on_fatal_signal(int(signal.SIGABRT), None)

    os.kill, os.killpg, signal.raise_signal, os.abort = kill, killpg, raise_signal, abort


def run_python(program: str, filename: str, env: dict[str, str], judged: bool) -> int:
    """Run the program as `__main__` in this freshly cloned interpreter: no start-up cost per run."""
    os.environ.clear()
    os.environ.update(env)
    _self_signal_semantics()
    main = types.ModuleType("__main__")
    main.__file__ = filename
    sys.modules["__main__"] = main
    sys.argv = [filename]
    sys.path[:] = ["", *[p for p in sys.path if p and not p.startswith(_here)]]
    sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    code = 0
    try:
        exec(compile(program, filename, "exec"), main.__dict__)  # untrusted: this process is the sandbox
        if judged:
            rpc.Channel(3, 4, "c", main.__dict__).serve_forever()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except MemoryError:
        _note({"memory": True})
        code = 1
        _print_exception()
    except BaseException:
        code = 1
        _print_exception()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    return code


def _note(obj: dict) -> None:
    try:
        os.write(NOTE_FD, json.dumps(obj).encode() + b"\n")
    except OSError:
        pass


def _print_exception() -> None:
    import traceback

    try:
        traceback.print_exc()
    except BaseException:
        pass


# -- the judge's process ------------------------------------------------------------------------------------
def judge_main(run: Run, payload: dict, keep: dict[int, int]) -> None:
    """Its own uid, outside the program's PID namespace, no output, the tests, the program over a channel."""
    code = 1
    try:
        null = os.open("/dev/null", os.O_RDWR)
        jail.arrange_fds({0: null, 1: null, 2: null} | keep)
        os.chdir("/")
        jail.drop_privileges(run.limits, run.uid + 1, run.ns)
        jail.apply_run_limits(float(run.limits["cpu_seconds"]) + 5.0, max(1024, int(run.limits["memory_mb"])))
        channel = rpc.Channel(3, 4, "j")
        report = rpc.run_judge(channel, payload.get("setup", ""), list(payload["tests"]),
                               payload["entry_point"], bool(payload.get("stop_on_failure")))  # fmt: skip
        os.close(4)  # ends the program's serving loop
        os.write(5, json.dumps(report).encode() + b"\n")
        code = 0
    except BaseException as e:
        try:
            os.write(5, json.dumps({"error": f"judge: {type(e).__name__}: {e}"[:300]}).encode() + b"\n")
        except OSError:
            pass
    os._exit(code)


# -- the server loop ---------------------------------------------------------------------------------------
def _preload(modules: list[str]) -> None:
    """Import the modules programs commonly use once, in the zygote, so that runs find them warm; then
    freeze the heap so that collections in a run's process do not touch (and copy) the shared pages."""
    import gc

    for name in modules:
        try:
            __import__(name)
        except Exception:
            pass
    gc.collect()
    gc.freeze()


def main() -> None:
    global REQ_FD, RESP_FD
    REQ_FD, RESP_FD = int(sys.argv[1]), int(sys.argv[2])
    hello = json.loads(read_frame(REQ_FD))
    isolation, why = jail.setup_worker(hello.get("extra_readonly", []))
    _preload(hello.get("preload", []))
    write_frame(RESP_FD, json.dumps({"isolation": isolation, "reason": why, "pid": os.getpid()}).encode())
    worker = Worker(isolation)
    while True:
        try:
            req = json.loads(read_frame(REQ_FD))
        except EOFError:
            return
        try:
            result = worker.serve(req)
        except Exception as e:
            result = {
                "status": "sandbox_error",
                "isolation": isolation,
                "message": f"{type(e).__name__}: {e}"[:300],
            }
            write_frame(RESP_FD, json.dumps(result).encode())
            return  # the request stream may be out of step: the pool starts a fresh worker
        write_frame(RESP_FD, json.dumps(result).encode())


if __name__ == "__main__":
    main()
