"""Python programs in the sandbox: what each run's process needs of the interpreter, prepared once per
worker, and the run itself (`__main__` from the parse helper's code object, or compiled here).

Loaded by path into the zygote (standard library only). `prepare_runs` is called once, in the template
(namespaces level): the environment, `__main__`, `sys.argv`, `sys.path` and the standard streams do not
change from run to run there, and building them in each run's process cost about 110 copied pages
(0.5 ms) a run. Each run's process inherits a pristine copy of them, and `exit` and `quit` in builtins
(`-S` skips `site`, which defines them).

A plain run ends as `python main.py` does: the message of `sys.exit("...")` on stderr (exit code 1), then
non-daemon threads joined (only where the program imported `threading`: a thread that never ends runs into
the CPU or wall-clock limit, as it would hang `python main.py`), then `atexit` handlers, then the streams
flushed. A judged run's process is ended once its judge is done: neither its threads nor its `atexit`
handlers are waited for (the judge's report decides the verdict).
"""

import atexit
import builtins
import marshal
import os
import sys
import types

_here = os.path.dirname(os.path.abspath(__file__))
PYTHON_FILENAME = "main.py"  # runners.py names Python programs so; other names work, a little slower


def compile_source(program: str, filename: str, flags: int = 0):
    """`compile(program, filename, "exec", flags)`; a program holding undecodable bytes (lone surrogates
    U+DC80..U+DCFF, as `errors="surrogateescape"` decodes them; its file holds those bytes) is compiled
    from its bytes, as `compile` reads bytes: a PEP 263 coding line is honoured, and without one such a byte
    in the code is a SyntaxError ("(unicode error) 'utf-8' codec can't decode byte ...", which `python
    main.py` words "Non-UTF-8 code starting with ...") where it was a UnicodeEncodeError from the sandbox."""
    try:
        return compile(program, filename, "exec", flags, dont_inherit=True)
    except UnicodeEncodeError:
        pass  # compiled below, outside the handler: a SyntaxError must not chain this exception
    return compile(program.encode("utf-8", "surrogateescape"), filename, "exec", flags, dont_inherit=True)


# Numeric libraries start a thread per CPU when loaded, and threads count against the run's `processes`;
# OpenBLAS, which numpy loads, raises SIGINT in the process when it cannot start one, so `import numpy`
# failed (KeyboardInterrupt) in any run whose worker saw more CPUs than its process limit left room for
# (a many-core machine, or pinning off: CODEFOUNDRY_SANDBOX_PIN=0). One each: a run is one CPU's work.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_env(workdir: str, tmpdir: str) -> dict[str, str]:
    """A run's whole environment."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "TMPDIR": tmpdir,
        **ONE_THREAD,
    }  # fmt: skip


_PRESET_ENV: dict[str, str] | None = None
_PRESET_STDIO: tuple | None = None
_PRESET_MAIN: types.ModuleType | None = None  # a fresh `__main__` for main.py, with sys.argv and sys.path set


def _standard_streams() -> tuple:
    """A run's stdin, stdout and stderr, also as sys.__stdin__ etc. (as under `python main.py`)."""
    stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    # stderr line-buffered (buffering=1), as Python's own since 3.9: a line is kept if the run is killed
    stderr = open(2, "w", 1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = stdin, stdout, stderr  # the old ones are freed here
    return stdin, stdout, stderr


def prepare_runs(env: dict[str, str]) -> None:
    """In the template: the runs' environment, and their standard streams built over the kinds of file
    they will have (stdin /dev/null, seekable like the memfd that carries stdin data; stdout and stderr
    pipes), so that what the streams learn about their files when built (seekability, position, not a
    terminal) holds for each run's own. fds 0-2 are replaced in every run's process before it runs."""
    global _PRESET_ENV, _PRESET_STDIO, _PRESET_MAIN
    os.environ.clear()
    os.environ.update(env)
    _PRESET_ENV = dict(env)
    _PRESET_MAIN = _main_module(PYTHON_FILENAME)
    null = os.open("/dev/null", os.O_RDONLY)
    out_r, out_w = os.pipe()
    for fd, target in ((null, 0), (out_w, 1), (out_w, 2)):
        os.dup2(fd, target)
    for fd in (null, out_r, out_w):
        if fd > 2:
            os.close(fd)
    _PRESET_STDIO = _standard_streams()
    _quitters()


def _quitters() -> None:
    """`exit()` and `quit()`, which `site` puts in builtins (posix wording)."""
    import _sitebuiltins  # frozen: no file is read

    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")


def _unprepared() -> tuple:
    """At process level (no template, no `prepare_runs`): what the preset holds, built in this run."""
    _quitters()
    return _standard_streams()


def _main_module(filename: str) -> types.ModuleType:
    """An empty `__main__` for `filename`, installed as `python filename` would have it."""
    main = types.ModuleType("__main__")
    main.__file__ = filename
    sys.modules["__main__"] = main
    sys.argv = [filename]
    sys.path[:] = ["", *[p for p in sys.path if p and not p.startswith(_here)]]
    return main


def run(
    program: str, filename: str, env: dict[str, str], judged: bool, compiled: bytes, rpc: types.ModuleType
) -> int:
    """Run the program as `__main__` in this freshly cloned interpreter: no start-up cost per run. The
    code object comes marshalled from the parse helper when it compiled the program, so that this process
    does not compile it."""
    if env != _PRESET_ENV:
        os.environ.clear()
        os.environ.update(env)
    main = (
        _PRESET_MAIN if _PRESET_MAIN is not None and filename == PYTHON_FILENAME else _main_module(filename)
    )
    streams = _PRESET_STDIO or _unprepared()
    sys.stdin, sys.stdout, sys.stderr = streams
    code = 0
    try:
        bytecode = marshal.loads(compiled) if compiled else compile_source(program, filename)
        exec(bytecode, main.__dict__)  # untrusted: this process is the sandbox
        if judged:
            rpc.Channel(3, 4, "c", main.__dict__).serve_forever()
    except SystemExit as e:
        code = _exit_status(e.code)
    except MemoryError:
        code = 1
        _print_exception()  # "MemoryError" on stderr: the verdict reads it as memory_exceeded
    except BaseException:
        code = 1
        _print_exception()
    if not judged:
        _shut_down()
    # As `python main.py` at exit: the current sys.stdout and sys.stderr, then the streams the program
    # started with, should it have replaced them and written to them since (an unreferenced stream would
    # be flushed as it is freed; these stay referenced by the preset).
    for stream in (sys.stdout, sys.stderr, streams[1], streams[2]):
        try:
            stream.flush()
        except BaseException:
            pass
    return code


def _exit_status(code: object) -> int:
    """The exit status of `raise SystemExit(code)` under `python main.py`: an int as C's `exit((int)code)`
    takes it (255 past a C long), 0 for None, else `str(code)` printed on sys.stderr and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if -(1 << 63) <= code < 1 << 63 else 255
    try:
        err = sys.stderr if sys.stderr is not None else sys.__stderr__
        err.write(str(code))
        err.write("\n")
    except BaseException:
        pass
    return 1


def _shut_down() -> None:
    """What `python main.py` does after its program, before flushing: join the non-daemon threads (where
    `threading` was imported at all), then run the `atexit` handlers (each one's error is printed and
    ignored by `_run_exitfuncs` itself)."""
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()
        except BaseException:
            pass
    try:
        atexit._run_exitfuncs()
    except BaseException:
        pass


def _print_exception() -> None:
    """The traceback `python main.py` would print, from the program's own frames on, by the interpreter's C
    routine: importing the `traceback` module (with linecache and tokenize, not in the zygote) made a
    failing run cost three times a passing one."""
    kind, exc, tb = sys.exc_info()
    try:
        tb = tb.tb_next if tb is not None else None  # drop run's own frame
        sys.__excepthook__(kind, exc.with_traceback(tb), tb)
    except BaseException:
        pass


def warm_run_path(rpc, make_run) -> None:
    """In the template, before its first clone: serve calls over a judge channel to itself and decode
    requests, so that CPython's in-place specialisation is done once, not copied by each run's process.
    `rpc`: rpc.py as the zygote loaded it; `make_run(req, workdir)`: a zygote.Run."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    ns = {"f": lambda *a, **k: a[0] if a else None}
    prog, test = rpc.Channel(r1, w2, "c", ns), rpc.Channel(r2, w1, "j")
    samples = [1, "abc", [1, 2, 3], [1.5, 2.5], (1, "a"), {"a": 1}, None, True, 2.5, [[1, 2], [3]]]
    for _ in range(3):
        for value in samples:
            test.send(["q", "call", ["name", "f"], test.encode([value]), test.encode({})])
            prog.serve_one(prog.recv())
            test.decode(test.recv()[1])
    for fd in (r1, w1, r2, w2):
        os.close(fd)
    limits = {"cpu_seconds": 1.0, "wall_seconds": 3.0, "memory_mb": 256, "processes": 8, "file_size_mb": 1,
              "disk_mb": 1, "open_files": 16, "output_bytes": 1024, "compile_seconds": 1.0}  # fmt: skip
    req = {"program": "pass\n", "filename": PYTHON_FILENAME, "compile": None, "run": ["<python>"],
           "limits": limits, "stdin": "", "files": {}, "uid": 1, "judged": True}  # fmt: skip
    head = marshal.dumps({"req": req, "workdir": "/work", "targets": [0, 1, 2, 3, 4]})
    for _ in range(10):
        msg = marshal.loads(head)
        make_run(msg["req"], msg["workdir"])
        run_env("/work", "/tmp")
