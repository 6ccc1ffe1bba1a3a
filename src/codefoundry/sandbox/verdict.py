"""Results of the sandbox worker's runs: the verdict from what the zygote observed, and the early verdict
on Python that does not parse.

Loaded by path into the zygote (standard library only, no package imports). `run` is the zygote's `Run`:
its request, limits, isolation level and whether it is judged.
"""

import codecs
import importlib
import json
import marshal
import os
import re
import signal
import socket
import sys
import types

PARSE_LIMIT = 1 << 16  # characters: longer Python programs are parsed only in their own process
PARSE_SECONDS = 5.0  # a parse that takes longer ends the parser (restarted); the program then just runs
PARSER_LIMITS = {"file_size_mb": 0, "open_files": 16, "processes": 1}  # it never forks
PARSER_MEMORY_MB = 1024
ONLY_AST = 0x400  # ast.PyCF_ONLY_AST: `compile` parses and stops (the ast module is not in the zygote)
# How each runtime reports running out of memory when it ends a program, at the start of a line of stderr:
# text a program merely prints ("MemoryError caught, using fallback") is none of these.
OUT_OF_MEMORY = re.compile(
    r"^(?:[\w.]*MemoryError(?::|$)"  # Python, an uncaught one (numpy's _ArrayMemoryError too)
    r"|terminate called after throwing an instance of 'std::bad_alloc'"  # C++, libstdc++
    r"|libc\+\+abi: terminating due to uncaught exception of type std::bad_alloc"  # C++, libc++
    r"|FATAL ERROR: .*heap out of memory"  # node (V8)
    r"|# Fatal (?:process|javascript) OOM in "  # node (V8): memory it could not reserve or commit
    r"|RangeError: Array buffer allocation failed)",  # node: an ArrayBuffer past its address space
    re.MULTILINE,
)


class ParseServer:
    """A long-lived helper forked from the zygote that compiles Python programs before the zygote forks
    them, under the programs' unprivileged uid: the root zygote never parses untrusted text, and its heap
    stays as the preload left it (parsing in the zygote itself added ~80 page faults to every later run).
    A program that does not parse gets its report; one that compiles cleanly gets its code object,
    marshalled, which the program's process loads instead of compiling (compiling there cost ~0.4 ms and
    ~45 copied pages a run). A parser that fails, dies or hangs is restarted, and the program then simply
    runs (and compiles itself)."""

    def __init__(self, uid: int, isolated: bool, *, jail: types.ModuleType) -> None:
        self.jail = jail
        self.process = jail.Helper(lambda sock_fd: _serve(sock_fd, uid, isolated, jail))

    def check(self, program: str, filename: str) -> tuple[str | None, bytes]:
        """(report, code): the report `python main.py` prints when `program` does not parse, and the
        marshalled code object when it compiles without a warning; None and b"" when it is too long to
        parse here, only the compiler rejects it, or the parser failed."""
        if len(program) > PARSE_LIMIT:
            return None, b""
        try:
            sock = self.process.socket()
            sock.settimeout(PARSE_SECONDS)
            self.jail.send_with_fds(sock, json.dumps([filename, program]).encode(), [])
            reply = self.jail.receive_with_fds(sock, 0)
            if reply is None:
                raise EOFError
            body = reply[0]
            if body[:1] == b"C":
                return None, body[1:]
            report = json.loads(body[1:]) if body[:1] == b"R" else None
        except (OSError, ValueError, EOFError):
            self.kill()
            return None, b""
        return (report if isinstance(report, str) else None), b""

    def kill(self) -> None:
        self.process.kill()


def _serve(sock_fd: int, uid: int, isolated: bool, jail: types.ModuleType) -> None:
    try:
        null = os.open("/dev/null", os.O_RDWR)
        jail.arrange_fds({0: null, 1: null, 2: null, 3: sock_fd})
        os.chdir("/")
        jail.drop_privileges(PARSER_LIMITS, uid, isolated, dumpable=False)
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (PARSER_MEMORY_MB << 20,) * 2)
        sock = socket.socket(fileno=3)
        while (message := jail.receive_with_fds(sock, 0)) is not None:
            filename, program = json.loads(message[0])
            jail.send_with_fds(sock, compiled(program, filename), [])
    except BaseException:
        pass
    os._exit(0)


def compiled(program: str, filename: str) -> bytes:
    """The parse helper's answer: b"C" + the marshalled code object (nothing is run: compiling only
    parses, folds constants within CPython's size limits and emits bytecode), b"R" + the JSON report of a
    program that does not parse, or b"-" (only the compiler objects, compiling warned, or it failed: the
    program's own process compiles it and reports as `python main.py` would). Run in the parser process."""
    import warnings

    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            code = _pyrun().compile_source(program, filename)
        if warned:  # the program's own compile prints them, as `python main.py` does
            return b"-"
        return b"C" + marshal.dumps(code)
    except SyntaxError:
        pass  # reported below, outside this handler (the report must not chain this exception)
    except Exception:  # null bytes, nesting too deep, out of memory
        return b"-"
    report = syntax_error(program, filename)
    return b"R" + json.dumps(report).encode() if report is not None else b"-"


def syntax_error(program: str, filename: str) -> str | None:
    """The report `python main.py` prints for a program that does not parse, or None (it parses, or
    parsing failed otherwise: its own process then decides). Run in the parser process."""
    try:
        _pyrun().compile_source(program, filename, ONLY_AST)
    except SyntaxError as e:
        import io

        shown, sys.stderr = sys.stderr, io.StringIO()
        try:
            sys.__excepthook__(type(e), e.with_traceback(None), None)  # the C routine, as in the program
            return sys.stderr.getvalue()
        finally:
            sys.stderr = shown
    except Exception:  # null bytes, unencodable text, nesting too deep: the program's process reports it
        return None
    return None


def _pyrun() -> types.ModuleType:
    """pyrun.py as the zygote loaded it (after this module), or as a package module."""
    return sys.modules.get("codefoundry_pyrun") or importlib.import_module("codefoundry.sandbox.pyrun")


def not_run(run, report: str, tests: list) -> dict:
    """The result of a Python program that did not parse: no process was started."""
    res: dict = {
        "status": "failed", "message": "syntax error: the program was not run", "phase": "compile",
        "stdout": "", "stderr": report, "truncated": False, "isolation": run.isolation,
        "exit_code": None, "signal": None, "cpu_seconds": 0.0, "wall_seconds": 0.0, "peak_memory_mb": 0.0,
    }  # fmt: skip
    if run.judged:
        res["tests"] = [{"passed": False, "error": "not run: the program does not parse"} for _ in tests]
        res["tests_completed"] = False
    return res


def program_status(status: tuple | None) -> dict:
    if status is None:
        return {}
    st, ru = status
    return {
        "exit_code": os.WEXITSTATUS(st) if os.WIFEXITED(st) else None,
        "signal": os.WTERMSIG(st) if os.WIFSIGNALED(st) else None,
        "cpu": ru.ru_utime + ru.ru_stime,
        "maxrss_kb": ru.ru_maxrss,
    }


def json_lines(data: bytes) -> dict:
    merged: dict = {}
    for line in data.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            merged |= obj
    return merged


def build_cpu(note: bytes) -> float | None:
    """From a run's trusted notes, its build's CPU time (their first line), or None: the build failed."""
    return json_lines(note.partition(b"\n")[0]).get("build_cpu")


def verdict(run, prog: dict, data: dict, reason: str, wall: float) -> dict:
    note = json_lines(bytes(data["note"]))
    truncated = reason == "output" or bool(note.get("truncated"))  # the build cut its messages
    # A build that failed, or that its backstop ended: the program never ran, and what the process used
    # was the compiler's (cpu_seconds never counts a build; peak_memory_mb is the program's own).
    built = note.get("phase") != "compile" and reason != "build"
    res: dict = {
        "stdout": _text(bytes(data["out"]), truncated),
        "stderr": _text(bytes(data["err"]), truncated),
        "truncated": truncated,
        "wall_seconds": round(wall, 4),
        "isolation": run.isolation,
        "phase": "run" if built else "compile",
        "exit_code": prog.get("exit_code"),
        "signal": prog.get("signal"),
        "cpu_seconds": round(float(prog.get("cpu", 0.0)), 4) if built else 0.0,
        "peak_memory_mb": round(_peak_kb(note, prog) / 1024, 2) if built else 0.0,
    }
    report = json_lines(bytes(data["report"])) if run.judged else {}
    if run.judged:
        tests = report.get("tests") if isinstance(report.get("tests"), list) else []
        res["tests"] = [{"passed": bool(t[0]), "error": str(t[1])[:300]} for t in tests]
        res["tests_completed"] = bool(report.get("completed"))
    status, msg = _status(run, res, report, reason, bool(prog), note)
    res["status"], res["message"] = status, msg
    return res


def _text(data: bytes, cut: bool) -> str:
    """Captured output as text, bytes that are not UTF-8 replaced (U+FFFD). Output `cut` at the limit
    ends at the last whole character: the limit falls on a byte, and the start of a character it cut in
    two had come back as a U+FFFD the program never wrote."""
    if not cut:
        return data.decode("utf-8", "replace")
    # Not final: an incomplete sequence at the end is held back (dropped), invalid bytes are still replaced.
    return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=False)


def _peak_kb(note: dict, prog: dict) -> float:
    """The program's largest resident set; a built program's from its keeper (build.py), as the process
    wait4 saw reaped the compiler too: 0 (not known) where the run was killed with its keeper."""
    if "build_cpu" in note:
        return float(note.get("program_maxrss_kb", 0))
    return float(prog.get("maxrss_kb", 0))


def _status(run, res: dict, report: dict, reason: str, reaped: bool, note: dict):
    lim = run.limits
    sig, code, cpu = res["signal"], res["exit_code"], res.get("cpu_seconds", 0.0)
    if reason == "output":
        return "output_limit", f"output passed {lim['output_bytes']} bytes"
    if reason == "wall":
        return "timeout", f"wall-clock backstop of {lim['wall_seconds']:g} s"
    if reason == "build":
        return "timeout", f"the build's wall-clock backstop of {lim['build_wall_seconds']:g} s"
    if reason == "cpu":
        return "timeout", f"CPU-time limit of {lim['cpu_seconds']:g} s (the run's processes together)"
    if not reaped:
        return "sandbox_error", "the run's init did not report the program's end"
    if res["phase"] == "compile":
        if note.get("limit") == "cpu":  # build.build: the compiler ran out of its CPU time
            return "timeout", f"the build's CPU-time limit of {lim['compile_seconds']:g} s"
        return "failed", "compile error"
    hard_cpu = max(1, -(-float(lim["cpu_seconds"]) // 1)) + 1  # what apply_run_limits set
    hit_hard = sig == signal.SIGKILL and cpu >= hard_cpu - 0.5  # rusage lags the kernel's own CPU clock
    if sig == signal.SIGXCPU or hit_hard or cpu > float(lim["cpu_seconds"]):
        return "timeout", f"CPU-time limit of {lim['cpu_seconds']:g} s"
    if _looks_out_of_memory(res, lim, float(note.get("static_mb", 0.0))):
        return "memory_exceeded", f"memory limit of {lim['memory_mb']} MB"
    if run.judged and report.get("completed") and res["tests"] and all(t["passed"] for t in res["tests"]):
        return "ok", ""
    if sig is not None:
        return "killed", f"killed by signal {sig} ({_signame(sig)})"
    if run.judged:
        if not report:
            return "sandbox_error", "the judge ended without a report"
        return "failed", report.get("error") or "not every test passed"
    return ("ok", "") if code == 0 else ("failed", f"exit code {code}")


def _looks_out_of_memory(res: dict, lim: dict, static_mb: float = 0.0) -> bool:
    """Whether a run that ended abnormally (a non-zero exit or a signal) ran out of memory: its runtime
    said so, or a signal ended it near its memory limit. A clean exit is never out of memory, whatever the
    program printed (a handled MemoryError it logs is the program's own business). A built program's
    `static_mb` (build.py: what its binary maps at exec) counts as used: global arrays past the limit
    cannot be mapped, and the kernel kills the program with SIGSEGV before it runs, having used nothing."""
    if res["exit_code"] == 0 and res["signal"] is None:
        return False
    if OUT_OF_MEMORY.search(res["stderr"][-8000:]):  # node prints ~1.7 KB of stack after its report
        return True
    near_limit = max(res.get("peak_memory_mb", 0.0), static_mb) >= 0.9 * float(lim["memory_mb"])
    return res["signal"] in (signal.SIGSEGV, signal.SIGABRT, signal.SIGKILL) and near_limit


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "?"
