"""Gaps closed in review s35: the program's stack limit (Limits.stack_mb), a request larger than a worker's
channel carries, an interrupted execute_many that kept none of its results, integer types for workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import codefoundry
from codefoundry.cli import main as cli_main
from codefoundry.sandbox import Interrupted, Limits, Program, Status, checks, execute, execute_many

# Recursion 10^6 deep with ~200 bytes of locals a frame: about 210 MB of stack at its deepest.
DEEP_C = r"""
#include <stdio.h>
#include <string.h>
static long depth(long n) {
    volatile char pad[200];
    memset((char *)pad, (int)n, sizeof pad);
    if (n == 0) return pad[7];
    return depth(n - 1) + pad[3];
}
int main(void) { printf("%ld\n", depth(1000000)); return 0; }
"""


# -- 1. the stack ------------------------------------------------------------------------------------------
def test_deep_recursion_passes_with_a_large_stack_and_dies_with_a_small_one():
    # At the usual 8 MB a DFS 10^6 deep died of SIGSEGV whatever the limits said.
    deep = execute(DEEP_C, language="c", limits=Limits(stack_mb=512))
    assert deep.status is Status.OK, (deep.status, deep.message, deep.stderr[-300:])
    assert deep.peak_memory_mb > 150  # it did go deep
    shallow = execute(DEEP_C, language="c", limits=Limits(stack_mb=16))
    assert shallow.status is Status.KILLED and shallow.signal == signal.SIGSEGV, shallow


def test_the_default_stack_holds_a_dfs_a_million_deep():
    assert Limits().stack_mb == 256
    assert execute(DEEP_C, language="cpp").stdout.strip().lstrip("-").isdigit()


def test_a_build_keeps_its_own_stack():
    # gcc parses 1000 nested parentheses in 8 MB of stack (the worker's), not in 2 MB (measured, gcc 12):
    # the program's small stack must not be the compiler's.
    nested = "int main(void) { return " + "(" * 1000 + "0" + ")" * 1000 + "; }"
    result = execute(nested, language="c", limits=Limits(stack_mb=2))
    assert result.status is Status.OK, (result.phase, result.message, result.stderr[-300:])


def test_a_python_programs_c_level_recursion_uses_stack_mb():
    source = (
        "import sys, functools\nsys.setrecursionlimit(10**6)\n"
        "@functools.lru_cache(None)\ndef f(n):\n    return 0 if n == 0 else f(n - 1) + 1\nprint(f(100000))\n"
    )
    assert execute(source, limits=Limits(stack_mb=8)).status is Status.KILLED
    assert execute(source, limits=Limits(stack_mb=256)).stdout == "100000\n"


def test_node_keeps_its_own_stack_and_starts_its_threads():
    # libuv sizes node's threads by RLIMIT_STACK: at 1024 MB they did not fit its address space and node
    # hung until the backstop. V8 bounds its recursion itself.
    js = "require('fs').readFile('/etc/hostname', () => console.log('read'))"
    result = execute(js, language="javascript", limits=Limits(stack_mb=1024, cpu_seconds=5))
    assert result.status is Status.OK and result.stdout == "read\n", (result.status, result.stderr[-300:])


@pytest.mark.parametrize("value, error", [(0, ValueError), (True, TypeError), (2.0, TypeError)])
def test_stack_mb_is_checked_like_the_other_int_limits(value, error):
    with pytest.raises(error, match="Limits.stack_mb"):
        Limits(stack_mb=value)


def test_the_cli_takes_a_stack_option(tmp_path, capsys):
    path = tmp_path / "deep.c"
    path.write_text(DEEP_C)
    assert cli_main(["sandbox", "run", str(path), "--stack", "16"]) == 1
    assert "SIGSEGV" in capsys.readouterr().err
    assert cli_main(["sandbox", "run", str(path), "--stack", "0"]) == 2
    assert "--stack must be MB" in capsys.readouterr().err


# -- 2. a request larger than the channel ------------------------------------------------------------------
def test_stdin_larger_than_a_request_carries_is_refused_before_anything_runs(monkeypatch):
    # The real bound is a 4-byte frame length (4 GiB of JSON, stdin in hex): past it, sending raised
    # struct.error out of execute_many mid-run. Lowered here so that the test needs no gigabytes.
    monkeypatch.setattr(checks, "MAX_REQUEST_BYTES", 4000)
    fits = Program("import sys; print(len(sys.stdin.read()))", stdin="x" * 1000)
    assert execute_many([fits], workers=1, progress=False)[0].stdout == "1000\n"
    too_big = Program("print(1)", stdin="x" * 2000)
    with pytest.raises(ValueError, match=r"^programs\[1\]\.stdin: 2000 bytes of stdin.* 4000 ") as e:
        execute_many([fits, too_big], workers=1, progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^programs\[0\]\.files: 0 bytes of stdin, 2100 of files"):
        execute_many([Program("print(1)", files={"a": b"x" * 1000, "b": "y" * 1100})], progress=False)
    with pytest.raises(ValueError, match=r"^stdin: 3000 bytes of stdin"):
        execute("print(1)", stdin=b"x" * 3000)


def test_a_large_stdin_leaves_nothing_in_later_programs(one_worker):
    # The template that forks each program kept its buffer at the largest request it had received, stdin
    # included: every later program of the worker was born that much bigger, and failed to allocate.
    grow = "x = bytearray(40 << 20)\nprint('ok')"
    assert execute(grow, limits=Limits(memory_mb=96)).status is Status.OK
    big = execute("import sys; print(len(sys.stdin.buffer.read()))", stdin=b"x" * (32 << 20))
    assert big.stdout == f"{32 << 20}\n"
    after = execute(grow, limits=Limits(memory_mb=96))
    assert after.status is Status.OK, (after.status, after.stderr[-300:])


def test_a_large_source_leaves_nothing_in_later_programs(one_worker):
    grow = "x = bytearray(40 << 20)\nprint('ok')"
    big = execute("print(1)\n#" + "x" * (56 << 20), limits=Limits(disk_mb=128))
    assert big.stdout == "1\n"
    after = execute(grow, limits=Limits(memory_mb=96))
    assert after.status is Status.OK, (after.status, after.stderr[-300:])


# -- 3. an interrupted execute_many ------------------------------------------------------------------------
_INTERRUPTED = r"""
import ctypes, json, os, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: the runs' orphans stay ours to count
from codefoundry.sandbox import Interrupted, Limits, Program, execute_many, shutdown

spin = Program("while True: pass", limits=Limits(cpu_seconds=600))
print("ready", flush=True)
try:
    execute_many([f"print({i})" for i in range(4)] + [spin, spin], workers=2, progress=False)
    results = None
except Interrupted as e:
    results = e.results
shutdown()

def alive_descendants():
    children = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        children.setdefault(int(ppid), []).append((int(name), state))
    found, todo = [], [os.getpid()]
    while todo:
        for pid, state in children.get(todo.pop(), []):
            todo.append(pid)
            if state != "Z":
                found.append(pid)
    return found

def reap():
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass

deadline = time.monotonic() + 10
while (left := alive_descendants()) and time.monotonic() < deadline:
    reap()
    time.sleep(0.05)
reap()
shown = None if results is None else [r and {"status": r.status.value, "stdout": r.stdout} for r in results]
print(json.dumps({"results": shown, "left": left}))
"""


def _descendants_cpu(root: int) -> dict[int, int]:
    """pid -> user CPU clock ticks of every process below `root`."""
    children: dict[int, list[tuple[int, int]]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        children.setdefault(int(fields[1]), []).append((int(name), int(fields[11])))
    found, todo = {}, [root]
    while todo:
        for pid, ticks in children.get(todo.pop(), []):
            found[pid] = ticks
            todo.append(pid)
    return found


def test_an_interrupted_execute_many_keeps_its_results_and_stops_its_runs():
    # Ctrl-C used to wait for every run in progress to end (a spinning one: its whole CPU limit), then
    # raised a bare KeyboardInterrupt: the finished results were lost.
    src = os.path.dirname(os.path.dirname(codefoundry.__file__))
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        # Both workers spinning means the four fast programs are done (each thread stores its result before
        # it takes the next program); a spinner is the only process here to use a second of CPU.
        tick = os.sysconf("SC_CLK_TCK")
        deadline = time.monotonic() + 120
        while sum(t >= tick for t in _descendants_cpu(proc.pid).values()) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "the programs never started spinning"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    report = json.loads(out.splitlines()[-1])
    expected = [{"status": "ok", "stdout": f"{i}\n"} for i in range(4)] + [None, None]
    assert report["results"] == expected, err[-2000:]
    assert report["left"] == [], "processes left running after the interrupt"


@pytest.mark.slow  # Ray starts in ~20 s on two loaded cores
def test_an_interrupted_ray_run_keeps_the_batches_that_came_back():
    ray = pytest.importorskip("ray")
    import _thread
    import threading

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    spin = Program("while True: pass", limits=Limits(cpu_seconds=600))
    timer = threading.Timer(8.0, _thread.interrupt_main)  # the spinners never end: only this ends the call
    try:
        timer.start()
        with pytest.raises(Interrupted) as e:
            execute_many([f"print({i})" for i in range(4)] + [spin, spin], workers=2, executor="ray")
    finally:
        timer.cancel()
        if started:
            ray.shutdown()
    results = e.value.results
    assert len(results) == 6 and results[4:] == [None, None]
    assert all(r is None or r.stdout == f"{i}\n" for i, r in enumerate(results))


def test_interrupted_is_a_keyboard_interrupt_with_the_results():
    error = Interrupted([None, None])
    assert isinstance(error, KeyboardInterrupt) and error.results == [None, None]
    assert "0 of 2" in str(error)


# -- 4. workers of any integer type ------------------------------------------------------------------------
class _Two:
    def __index__(self) -> int:
        return 2


def test_workers_may_be_any_integer_type():
    np = pytest.importorskip("numpy")
    for workers in (np.int64(2), _Two()):
        assert [
            r.stdout for r in execute_many(["print(1)", "print(2)"], workers=workers, progress=False)
        ] == [
            "1\n",
            "2\n",
        ]
    with pytest.raises(TypeError, match="workers must be an int"):
        execute_many(["print(1)"], workers=True, progress=False)
    with pytest.raises(TypeError, match="workers must be an int"):
        execute_many(["print(1)"], workers=2.0, progress=False)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        execute_many(["print(1)"], workers=np.int64(0), progress=False)
