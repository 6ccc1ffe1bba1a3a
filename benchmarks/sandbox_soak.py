"""Soak: a million sandbox runs on one pool of warm workers, watching for anything that accumulates.

Issue 2 asks that the parent never accumulate zombies or file descriptors over millions of runs, and that
no process or file outlive its run. The red-team tests check each attack once; this runs the attacks
again and again among ordinary programs and, after every batch, reads from /proc:

- the calling process: open fds, threads, resident memory, zombie children;
- every process below it (the workers' zygotes, templates, judges, parse helpers, run inits): how many,
  zombies among them, and each long-lived one's open fds and resident memory;
- the machine: processes not run by root (every sandboxed program runs under an unprivileged uid, so one
  alive between batches has outlived its run), SysV IPC objects and POSIX queues of the host, entries in
  the host's /tmp and /dev/shm, and the kernel's slab memory (namespaces or mounts leaked by the kernel's
  side of a run would show there);
- the verdicts: each program of the mix has the outcome it must have (an ordinary program prints what it
  computed, a canonical HumanEval solution passes, a wrong or verdict-forging one fails, each attack ends
  with its status), and a run's outcome that differs is counted and kept.

    python benchmarks/sandbox_soak.py --runs 1000000 --workers 2 --json benchmarks/results/sandbox_soak.json

The mix, per cycle of 1,000 programs: 886 small programs with checked output (a sum, printed), 80
canonical HumanEval solutions judged (they must pass), 20 wrong solutions judged (they must fail), 2
verdict forgers (`sys.exit(0)` and `os._exit(0)` before the tests), and one each of the cheap attacks
below; the costly ones (fork bomb, CPU spin) once every ten cycles. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from codefoundry.sandbox import ExecutionResult, Limits, Program, Status, execute_many, shutdown
from codefoundry.tasks import humaneval
from sandbox_cost import processes  # the same walk over /proc

LIMITS = Limits(cpu_seconds=2, memory_mb=256, processes=16, open_files=64, disk_mb=8, file_size_mb=4,
                output_bytes=1 << 16)  # fmt: skip
SPIN = Limits(cpu_seconds=0.3, memory_mb=256, processes=16, open_files=64, disk_mb=8, file_size_mb=4,
              output_bytes=1 << 16)  # fmt: skip
NOT_OK = {Status.FAILED, Status.TIMEOUT, Status.MEMORY_EXCEEDED, Status.OUTPUT_LIMIT, Status.KILLED}


@dataclass(frozen=True)
class Case:
    name: str
    program: Program
    expect: Callable[[ExecutionResult], bool]


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _ended_as(*statuses: Status) -> Callable[[ExecutionResult], bool]:
    return lambda r: r.status in statuses and not r.passed


# Attacks, each with the outcome it must get. Each also leaves something behind if the sandbox let it.
ATTACKS: dict[str, tuple[str, Callable[[ExecutionResult], bool]]] = {
    "setsid daemon": (
        _src("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(3600)
            os._exit(0)
        print("parent gone")
        """),
        lambda r: r.status == Status.OK and r.stdout == "parent gone\n",
    ),
    "thread left running": (
        _src("""
        import threading, time
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        print("main done")
        """),
        lambda r: r.status == Status.OK and r.stdout == "main done\n",
    ),
    "fds left open": (
        _src("""
        import os, socket
        keep = [open("/dev/null") for _ in range(40)] + [os.pipe() for _ in range(5)]
        keep.append(socket.socketpair())
        print(len(keep))
        """),
        lambda r: r.status == Status.OK and r.stdout == "46\n",
    ),
    "sysv shm left": (
        _src("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        shm = libc.shmget(0, 1 << 16, 0o1600)   # IPC_PRIVATE, IPC_CREAT | 0600
        fd = os.open("/dev/null", os.O_RDONLY)
        print(shm >= 0)
        """),
        lambda r: r.status == Status.OK and r.stdout == "True\n",
    ),
    "memory bomb": ("x = bytearray(1 << 31)\n", _ended_as(Status.MEMORY_EXCEEDED)),
    "stdout flood": (
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        _ended_as(Status.OUTPUT_LIMIT),
    ),
    "disk fill": (
        _src("""
        with open("big", "wb") as f:
            while True:
                f.write(b"\\0" * (1 << 20))
        """),
        _ended_as(Status.FAILED, Status.KILLED),
    ),
    "segfault": ("import ctypes\nctypes.string_at(0)\n", _ended_as(Status.KILLED)),
    "kill its parent, group and init": (
        "import os, signal\nfor pid in (os.getppid(), 1):\n    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n",
        lambda r: r.status != Status.SANDBOX_ERROR,
    ),
    "syntax error": ("def f(:\n", lambda r: r.status == Status.FAILED and r.phase == "compile"),
    "exception": (
        "raise ValueError('no')\n",
        lambda r: r.status == Status.FAILED and "ValueError" in r.stderr,
    ),
    "deep recursion": (
        "def f(n):\n    return f(n + 1)\nf(0)\n",
        lambda r: r.status == Status.FAILED and "RecursionError" in r.stderr,
    ),
}
COSTLY: dict[str, tuple[str, Callable[[ExecutionResult], bool]]] = {
    "fork bomb": (
        _src("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """),
        _ended_as(Status.TIMEOUT, Status.KILLED, Status.FAILED, Status.MEMORY_EXCEEDED),
    ),
    "cpu spin": ("while True:\n    pass\n", _ended_as(Status.TIMEOUT)),
}


def _forged(problem, how: str) -> Program:
    return Program(
        f"import os, sys\n{problem.prompt}{problem.canonical_solution}\n{how}\n", judge=problem.judge()
    )


def cycle(problems: list) -> list[Case]:
    """One cycle of the mix (1,000 programs), the forgers and attacks spread evenly through the ordinary
    programs; `COSTLY` not included."""
    p = problems[0]
    special = [Case("forged sys.exit(0)", _forged(p, "sys.exit(0)"), lambda r: not r.passed),
               Case("forged os._exit(0)", _forged(p, "os._exit(0)"), lambda r: not r.passed)]  # fmt: skip
    special += [Case(name, Program(source), expect) for name, (source, expect) in ATTACKS.items()]
    ordinary = []
    for i in range(1000 - 80 - 20 - len(special)):
        n = 1000 + i * 7
        ordinary.append(Case("small program", Program(f"print(sum(range({n})))\n"),
                             lambda r, want=f"{n * (n - 1) // 2}\n": r.status == Status.OK and r.stdout == want))  # fmt: skip
    for i in range(80):
        p = problems[i * 2 % len(problems)]
        ordinary.append(Case("canonical solution", Program(p.program(p.canonical_solution), judge=p.judge()),
                             lambda r: r.passed))  # fmt: skip
    for i in range(20):
        p = problems[(i * 8 + 1) % len(problems)]
        wrong = Program(p.program("    return None\n"), judge=p.judge())
        ordinary.append(
            Case("wrong solution", wrong, lambda r: not r.passed and r.status != Status.SANDBOX_ERROR)
        )
    step = (len(ordinary) + len(special)) // len(special)
    mixed = []
    for i, case in enumerate(ordinary):
        mixed.append(case)
        if i % step == step - 1 and special:
            mixed.append(special.pop(0))
    return mixed + special


# -- what is read from /proc after each batch ---------------------------------------------------------------
def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _kb(value: str) -> int:
    return int(value.split()[0])


def _cmd(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[0].decode(errors="replace").rsplit("/", 1)[-1]


def _count_lines(path: str) -> int:
    try:
        with open(path) as f:
            return max(0, sum(1 for _ in f) - 1)  # minus the header
    except OSError:
        return -1


def _entries(path: str) -> int:
    try:
        return len(os.listdir(path))
    except OSError:
        return -1


def snapshot() -> dict:
    me = os.getpid()
    table = processes(_status)
    children: dict[int, list[int]] = {}
    for pid, st in table.items():
        children.setdefault(int(st.get("PPid", "0")), []).append(pid)
    below, todo = [], list(children.get(me, []))
    while todo:
        pid = todo.pop()
        below.append(pid)
        todo.extend(children.get(pid, []))
    long_lived = []
    for pid in below:
        try:
            if _cmd(pid).startswith("python"):
                long_lived.append(
                    {"pid": pid, "fds": _fds(pid), "rss_kb": _kb(table[pid].get("VmRSS", "0 kB"))}
                )
        except OSError:
            pass
    mine = _status(me)
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    unprivileged = [
        pid for pid, st in table.items()
        if st.get("Uid", "0").split()[0] != "0" and pid not in below
    ]  # fmt: skip
    strays_below = [pid for pid in below if table[pid].get("Uid", "0").split()[0] != "0"
                    and not any(p["pid"] == pid for p in long_lived)]  # fmt: skip
    return {
        "parent_fds": _fds(me),
        "parent_threads": int(mine["Threads"]),
        "parent_rss_kb": _kb(mine["VmRSS"]),
        "parent_zombies": sum(table[p].get("State", "").startswith("Z") for p in children.get(me, [])),
        "processes_below": len(below),
        "zombies_below": sum(table[p].get("State", "").startswith("Z") for p in below),
        "unprivileged_below_not_helpers": len(strays_below),
        "unprivileged_elsewhere": len(unprivileged),
        "helpers": len(long_lived),
        "helper_fds_max": max((p["fds"] for p in long_lived), default=0),
        "helper_fds_total": sum(p["fds"] for p in long_lived),
        "helper_rss_kb_total": sum(p["rss_kb"] for p in long_lived),
        "helper_pids": sorted(p["pid"] for p in long_lived),
        "helper_rss_kb": [p["rss_kb"] for p in sorted(long_lived, key=lambda p: p["pid"])],
        "host_sysv_shm": _count_lines("/proc/sysvipc/shm"),
        "host_sysv_msg": _count_lines("/proc/sysvipc/msg"),
        "host_sysv_sem": _count_lines("/proc/sysvipc/sem"),
        "host_tmp_entries": _entries("/tmp"),
        "host_dev_shm_entries": _entries("/dev/shm"),
        "machine_processes": len(table),
        "slab_kb": _kb(meminfo["Slab"].strip()),
    }


WATCHED = ("helpers", "parent_fds", "parent_threads", "parent_zombies", "processes_below", "zombies_below",
           "unprivileged_below_not_helpers", "unprivileged_elsewhere", "helper_fds_max", "helper_fds_total",
           "host_sysv_shm", "host_sysv_msg", "host_sysv_sem", "host_dev_shm_entries")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=10_000, help="runs between two readings of /proc")
    ap.add_argument("--json", help="write every reading and the summary here")
    args = ap.parse_args()
    problems = humaneval.load()
    base = cycle(problems)
    costly = [Case(name, Program(src, limits=SPIN), expect) for name, (src, expect) in COSTLY.items()]
    stream = itertools.chain.from_iterable(
        base + (costly if c % 10 == 9 else []) for c in itertools.count()
    )  # fmt: skip
    shutdown()
    execute_many([Program("pass")] * (args.workers * 4), workers=args.workers, progress=False)
    readings = [{"runs": 0, "seconds": 0.0, **snapshot()}]
    print(json.dumps(readings[0]), flush=True)
    done, wrong, by_case, started = 0, [], {}, time.perf_counter()
    while done < args.runs:
        batch = list(itertools.islice(stream, min(args.batch, args.runs - done)))
        t = time.perf_counter()
        results = execute_many(
            [c.program for c in batch], workers=args.workers, limits=LIMITS, progress=False
        )
        seconds = time.perf_counter() - t
        for case, result in zip(batch, results, strict=True):
            by_case[case.name] = by_case.get(case.name, 0) + 1
            if not case.expect(result):
                wrong.append({"run": done, "case": case.name, "status": str(result.status),
                              "passed": result.passed, "message": result.message[:200],
                              "stdout": result.stdout[-200:], "stderr": result.stderr[-300:]})  # fmt: skip
        done += len(batch)
        time.sleep(0.2)  # let exits and the kernel's deferred teardown finish before reading
        reading = {"runs": done, "seconds": round(seconds, 2), "runs_per_s": round(len(batch) / seconds, 1),
                   "wrong_so_far": len(wrong), **snapshot()}  # fmt: skip
        readings.append(reading)
        print(json.dumps(reading), flush=True)
    summary = summarise(readings, wrong, by_case, time.perf_counter() - started)
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "readings": readings, "wrong": wrong},
                                              indent=1) + "\n")  # fmt: skip
    shutdown()


def summarise(readings: list[dict], wrong: list[dict], by_case: dict[str, int], seconds: float) -> dict:
    """First reading after the warm-up batch against the last, and the largest, for each watched figure."""
    first, last = readings[1] if len(readings) > 1 else readings[0], readings[-1]
    rates = [r["runs_per_s"] for r in readings[1:]]
    return {
        "runs": last["runs"],
        "hours": round(seconds / 3600, 3),
        "wrong_verdicts": len(wrong),
        "runs_by_case": by_case,
        "helper_replacements": len({tuple(r["helper_pids"]) for r in readings}) - 1,
        "runs_per_s_first_last_median": [rates[0], rates[-1], statistics.median(rates)] if rates else [],
        "watched_first_last_max": {
            k: [first[k], last[k], max(r[k] for r in readings[1:] or readings)] for k in WATCHED
        },  # fmt: skip
        "parent_rss_kb_first_last": [first["parent_rss_kb"], last["parent_rss_kb"]],
        "helper_rss_kb_total_first_last": [first["helper_rss_kb_total"], last["helper_rss_kb_total"]],
        "slab_kb_first_last": [first["slab_kb"], last["slab_kb"]],
        "host_tmp_entries_first_last": [first["host_tmp_entries"], last["host_tmp_entries"]],
    }


if __name__ == "__main__":
    main()
