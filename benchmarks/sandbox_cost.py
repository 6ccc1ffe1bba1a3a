"""Where a sandbox run's cost goes: CPU time and page faults per judged HumanEval run, for each process
of one worker (the parent, the zygote, the programs it reaps, the template, the judge, the parse helper),
read from /proc before and after. Page faults are the steady figure on a noisy VM: each process that a
run forks pays one for every page it writes. Work the kernel defers to its own threads (tearing down a
namespace, say) is in no process of ours and so not here: `--workers N` adds, to each round, a timed
pass with N workers and the whole machine's busy CPU a run from /proc/stat, which counts it.

    python benchmarks/sandbox_cost.py [--reps 1] [--rounds 4] [--against DIR] [--workers 2]

`--against DIR` alternates the installed sandbox with the sandbox package in DIR (a copy of
`src/codefoundry/sandbox` at another commit) round by round, in one process, and reports both: the way
the changes in `benchmarks/README.md` were A/B-tested. Each side's zygote starts the way its own
worker.py starts it (`_START`; a copy from before that existed ran zygote.py as the script). Linux only
(/proc).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import codefoundry.sandbox.worker as sandbox_worker
from codefoundry.sandbox import Program, execute_many, shutdown
from codefoundry.tasks import humaneval

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> dict[str, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {
        "ppid": int(fields[1]), "faults": int(fields[7]), "child_faults": int(fields[8]),
        "ticks": int(fields[11]) + int(fields[12]), "child_ticks": int(fields[13]) + int(fields[14]),
    }  # fmt: skip


def processes(read: Callable[[int], dict] = _stat) -> dict[int, dict]:
    """pid -> `read(pid)` for every process on the machine (`sandbox_soak.py` reads /proc/PID/status)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                out[int(name)] = read(int(name))
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile (a file read half-way through its exit)
    return out


def _is_python(pid: int) -> bool:
    """The zygote's long-lived Python children (template, judge, parse helper), not the run's init."""
    return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]


# How worker.py started the zygote before `_START`: the interpreter compiled zygote.py itself.
_SCRIPT_START = (
    "import sys\ndel sys.argv[0]\n"
    "exec(compile(open(sys.argv[0]).read(), sys.argv[0], 'exec'),"
    " {'__name__': '__main__', '__file__': sys.argv[0]})\n"
)


def _start_code(sandbox_dir: Path) -> str:
    """The zygote start-up code of the worker.py in `sandbox_dir`."""
    spec = importlib.util.spec_from_file_location("codefoundry_other_worker", sandbox_dir / "worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "_START", _SCRIPT_START)


def measure(programs: list[Program]) -> dict[str, dict[str, float]]:
    """Per run: CPU ms and page faults of each process of a fresh one-worker pool."""
    shutdown()
    execute_many(programs[:4], workers=1, progress=False)  # start and warm the worker
    me = os.getpid()
    before, self0 = processes(), resource.getrusage(resource.RUSAGE_SELF)
    execute_many(programs, workers=1, progress=False)
    after, self1 = processes(), resource.getrusage(resource.RUSAGE_SELF)
    n = len(programs)
    zygote = next(p for p, s in after.items() if s["ppid"] == me and p in before)
    z0, z1 = before[zygote], after[zygote]
    out = {
        "parent": {"cpu_ms": ((self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)) / n * 1e3,
                   "faults": (self1.ru_minflt - self0.ru_minflt) / n},
        "zygote": {"cpu_ms": (z1["ticks"] - z0["ticks"]) / TICK / n * 1e3, "faults": (z1["faults"] - z0["faults"]) / n},
        "programs": {"cpu_ms": (z1["child_ticks"] - z0["child_ticks"]) / TICK / n * 1e3,
                     "faults": (z1["child_faults"] - z0["child_faults"]) / n},
    }  # fmt: skip
    helpers = []
    for pid, s in after.items():
        if s["ppid"] == zygote and pid in before and _is_python(pid):
            helpers.append({"cpu_ms": (s["ticks"] - before[pid]["ticks"]) / TICK / n * 1e3,
                            "faults": (s["faults"] - before[pid]["faults"]) / n})  # fmt: skip
    # The template faults after every clone (every page it writes); of the other two, the judge computes.
    helpers.sort(key=lambda h: h["faults"], reverse=True)
    if helpers:
        out["template"] = helpers.pop(0)
    helpers.sort(key=lambda h: h["cpu_ms"], reverse=True)
    for name, h in zip(("judge", "parse_helper"), helpers, strict=False):
        out[name] = h
    out["total"] = {k: sum(v[k] for v in list(out.values())) for k in ("cpu_ms", "faults")}
    return out


def _busy_ticks() -> int:
    """Clock ticks every CPU of the machine has spent busy (all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def machine(programs: list[Program], workers: int) -> dict[str, float]:
    """One pass of `programs` on `workers` fresh workers: samples/s, and busy CPU a run across the machine
    (every process and kernel thread, so work the kernel defers after a run counts too)."""
    shutdown()
    execute_many(programs[:8], workers=workers, progress=False)  # start and warm the workers
    busy, t = _busy_ticks(), time.perf_counter()
    execute_many(programs, workers=workers, progress=False)
    wall = time.perf_counter() - t
    time.sleep(0.2)  # what the kernel does after the last run
    return {
        "samples_per_s": len(programs) / wall,
        "busy_ms": (_busy_ticks() - busy) / TICK / len(programs) * 1e3,
    }


def _machine_text(m: dict[str, float]) -> str:
    return f"{m['samples_per_s']:.1f} samples/s, machine busy {m['busy_ms']:.2f} ms a run"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=1, help="times the 164 problems are repeated per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--against", help="another sandbox package directory to alternate with")
    ap.add_argument("--workers", type=int, help="also time a pass with this many workers (see above)")
    ap.add_argument("--json")
    args = ap.parse_args()
    problems = humaneval.load() * args.reps
    programs = [Program(p.program(p.canonical_solution), judge=p.judge()) for p in problems]
    sides = {"installed": (sandbox_worker.ZYGOTE, sandbox_worker._START)}
    if args.against:
        sides["against"] = (Path(args.against) / "zygote.py", _start_code(Path(args.against)))
    rounds: dict[str, list[dict]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in sides if r % 2 == 0 else reversed(list(sides)):
            sandbox_worker.ZYGOTE, sandbox_worker._START = sides[name]
            t = time.perf_counter()
            rounds[name].append(
                measure(programs) | {"wall_ms": (time.perf_counter() - t) / len(programs) * 1e3}
            )
            row = rounds[name][-1]
            print(f"{name}: " + "  ".join(f"{k} {v['cpu_ms']:.2f} ms / {v['faults']:.0f} faults"
                                          for k, v in row.items() if isinstance(v, dict)), flush=True)  # fmt: skip
            if args.workers:
                row["machine"] = machine(programs, args.workers)
                print(f"{name}: {args.workers} workers {_machine_text(row['machine'])}", flush=True)
    sandbox_worker.ZYGOTE, sandbox_worker._START = sides["installed"]
    shutdown()
    summary = {
        name: {part: {k: statistics.median(r[part][k] for r in rows if part in r) for k in ("cpu_ms", "faults")}
               for part in rows[0] if isinstance(rows[0][part], dict) and part != "machine"}
        for name, rows in rounds.items()
    }  # fmt: skip
    for name, parts in summary.items():
        print(f"median per run, {name}: " + ", ".join(
            f"{part} {v['cpu_ms']:.2f} ms / {v['faults']:.0f} faults" for part, v in parts.items()))  # fmt: skip
        if args.workers:
            rows = [r["machine"] for r in rounds[name]]
            parts["machine"] = {
                k: statistics.median(r[k] for r in rows) for k in ("samples_per_s", "busy_ms")
            }
            print(f"median, {name}, {args.workers} workers: {_machine_text(parts['machine'])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "median": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
