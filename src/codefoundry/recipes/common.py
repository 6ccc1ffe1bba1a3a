"""What every `codefoundry recipe` shares: the base model (the quickstart's first stages, built once in
`OUT/base/` or taken from a finished quickstart run), the run-directory stamp that keeps a rerun from
mixing settings, atomic JSON/text writes, and the table formatting.

Base: `build_base` runs the quickstart's stages named in `stages` (a prefix of data -> pretrain -> SFT)
with the recipe's seed, thread count and device, then the recipe's `base` overrides of QuickstartConfig;
each stage is skipped once it wrote its done marker, so a killed build resumes. `base_run` instead names
a finished quickstart run (or another recipe's `OUT/base`), read and never written.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codefoundry.recipes.quickstart import QuickstartConfig

__all__ = [
    "BASE_STAGES", "base_config", "base_sentence", "base_settings", "build_base", "check_run_dir", "ci_text",
    "csv_text", "load_text", "minutes_text", "paired_delta", "pass_rates", "run_cells", "sft_problem_count", "timing_text",
    "write_json", "write_text",
]  # fmt: skip

BASE_STAGES = ("data", "pretrain", "sft")


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def config_identity(config: Any, run_keys: Iterable[str]) -> dict[str, Any]:
    """A recipe config's values that decide its numbers, as JSON would hold them: every field but
    `run_keys` (where and how it runs)."""
    values = dataclasses.asdict(config)
    for key in run_keys:
        values.pop(key)
    return json.loads(json.dumps(values))


def check_run_dir(root: Path, recipe: str, identity: dict[str, Any]) -> None:
    """Record the recipe's result-deciding values in OUT/recipe.json, or check that a rerun in the same
    directory uses the same ones (a resume must not mix two settings in one table)."""
    stamp = root / "recipe.json"
    mine = {"recipe": recipe, "config": json.loads(json.dumps(identity))}
    if stamp.is_file():
        theirs = json.loads(stamp.read_text(encoding="utf-8"))
        if theirs != mine:
            old = theirs.get("config", {})
            diff = sorted(k for k in mine["config"] if old.get(k) != mine["config"][k])
            what = ", ".join(diff) or f"recipe {theirs.get('recipe')!r}"
            raise ValueError(f"{root}: holds a {theirs.get('recipe')} run with other settings ({what});"
                             " rerun with the same ones to resume, or pick another --out")  # fmt: skip
        return
    write_json(stamp, mine)


def load_text(started: tuple[float, float, float]) -> dict[str, list[float]]:
    """The load average at the start (given) and now: how busy the machine was while timings were taken."""
    return {"start": [round(x, 2) for x in started], "end": [round(x, 2) for x in os.getloadavg()]}


# ----------------------------------------------------------------------------------------------- cells
def run_cells(fn: Callable[..., Any], jobs: Sequence[tuple[str, tuple]], *, parallel: int, desc: str,
              progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """`fn(*args)` for every `(name, args)` job, started in the order given (put the costliest first, so
    the last to finish are short), `parallel` at a time, each in a spawned process whose torch thread
    count is its own (with `parallel` 1: here, one by one); returns `{name: result}`. A bar counts
    finished jobs, cached ones included."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    results: dict[str, Any] = {}
    with tqdm(total=len(jobs), desc=desc, unit="cell", disable=not progress) as bar:
        if parallel == 1:
            for name, args in jobs:
                results[name] = fn(*args)
                bar.set_postfix_str(f"{name} done")
                bar.update()
            return results
        workers = max(1, min(parallel, len(jobs)))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(fn, *args): name for name, args in jobs}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.set_postfix_str(f"{futures[future]} done")
                bar.update()
    return results


def pass_rates(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Per task id, the fraction of its samples that passed, from the rows of an eval run's results.jsonl."""
    per: dict[str, list[bool]] = {}
    for r in rows:
        per.setdefault(r["task_id"], []).append(bool(r["passed"]))
    return {t: sum(v) / len(v) for t, v in per.items()}


def paired_delta(ref: dict[str, float], other: dict[str, float], *, seed: int
                 ) -> tuple[float | None, float | None, float | None]:  # fmt: skip
    """`other` minus `ref` over the keys both have (problems, windows, functions): the mean of the
    per-key differences with a percentile-bootstrap 95% CI (paired, so tighter than two separate CIs);
    Nones when they share no key."""
    from codefoundry.tasks.metrics import bootstrap_ci

    keys = sorted(set(ref) & set(other))
    diffs = [other[k] - ref[k] for k in keys]
    return bootstrap_ci(diffs, seed=seed) if diffs else (None, None, None)


# ------------------------------------------------------------------------------------------------ base
def base_config(out: str | Path, base: dict[str, Any], *, seed: int, threads: int, device: str,
                recipe: str) -> QuickstartConfig:  # fmt: skip
    """The QuickstartConfig of OUT/base: the recipe's seed, threads and device, then the `base` values."""
    from codefoundry.recipes.quickstart import QuickstartConfig

    fields = {f.name for f in dataclasses.fields(QuickstartConfig)}
    unknown = sorted(set(base) - fields)
    if unknown:
        raise ValueError(f"{recipe}: base: unknown QuickstartConfig key {unknown[0]!r}")
    values = {"seed": seed, "threads": threads, "device": device, **base}
    return QuickstartConfig(**{**values, "out": str(Path(out) / "base"), "progress": False})


def build_base(qcfg: QuickstartConfig | None, base_run: str = "", *,
               stages: Sequence[str] = BASE_STAGES) -> Path:  # fmt: skip
    """The quickstart's `stages` in `qcfg.out` (each skipped once it has its done marker), or the finished
    run `base_run` (which must hold them); returns the run directory."""
    from codefoundry.recipes import chain

    if base_run:
        root = Path(base_run)
        missing = [s for s in stages if not (root / s / chain.DONE).is_file()]
        if missing:
            raise ValueError(
                f"{root}: base_run has no finished {missing[0]!r} stage ({missing[0]}/{chain.DONE})"
            )
        return root
    if qcfg is None:
        raise ValueError("build_base: neither a base config nor a base_run")
    import torch

    from codefoundry.recipes.quickstart import STAGES, plan

    root, the_plan = Path(qcfg.out), plan(qcfg)
    # The quickstart's own record of its settings: OUT/base is then a quickstart run that another
    # recipe can reuse as `base_run` (and `codefoundry quickstart --out OUT/base` could finish).
    if not (root / "quickstart.json").is_file():
        stamp = {"config": qcfg.identity(), "plan": dataclasses.asdict(the_plan)}
        write_json(root / "quickstart.json", json.loads(json.dumps(stamp)))
    torch.set_num_threads(qcfg.threads)
    done: dict[str, dict[str, Any]] = {}
    for name, fn in STAGES:
        if name not in stages:
            continue
        marker = root / name / chain.DONE
        if not marker.is_file():
            started = time.perf_counter()
            summary = fn(chain.StageContext(qcfg, the_plan, root, name, dict(done)))
            write_json(
                marker, {"stage": name, "summary": summary, "wall_s": round(time.perf_counter() - started, 2)}
            )
        done[name] = json.loads(marker.read_text(encoding="utf-8"))["summary"]
    return root


def base_settings(base: Path) -> dict[str, Any]:
    """The QuickstartConfig values a base run recorded in its quickstart.json ({} when it has none)."""
    stamp = base / "quickstart.json"
    return json.loads(stamp.read_text(encoding="utf-8"))["config"] if stamp.is_file() else {}


def sft_problem_count(base: Path, qcfg: QuickstartConfig | None) -> int:
    """How many parametric problems the base's SFT saw (RL trains on the rest)."""
    if qcfg is not None:
        return qcfg.sft_parametric
    settings = base_settings(base)
    if "sft_parametric" not in settings:
        raise ValueError(
            f"{base / 'quickstart.json'}: base_run has no quickstart.json (which SFT problems it used is unknown)"
        )
    return int(settings["sft_parametric"])


def base_sentence(
    base: Path, *, reused: bool, overrides: dict[str, Any], stages: Sequence[str] = BASE_STAGES
) -> str:
    """Where the base model came from, in one sentence for a recipe's table."""
    chain_text = " -> ".join(stages)
    if reused:
        settings = base_settings(base)
        keys = ("minutes", "seed", "size", "sft_parametric")
        shown = ", ".join(f"{k}={settings[k]}" for k in keys if k in settings)
        stage_word = "stage" if len(stages) == 1 else "stages"
        return f"Base: the finished quickstart run `{base}` ({shown}; its {chain_text} {stage_word})."
    stage_word = "stage" if len(stages) == 1 else "stages"
    return f"Base: built in `{base}` by the quickstart's {chain_text} {stage_word} with {overrides or 'its defaults'}."


# --------------------------------------------------------------------------------------------- tables
def ci_text(value: float | None, low: float | None = None, high: float | None = None, *, sign: bool = False,
            digits: int = 3) -> str:  # fmt: skip
    """`0.812 [0.760, 0.851]` (or `-` for a missing value; no brackets without bounds)."""
    if value is None:
        return "-"
    fmt = f"{'+' if sign else ''}.{digits}f"
    if low is None or high is None:
        return f"{value:{fmt}}"
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def minutes_text(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def timing_text(results: dict[str, Any]) -> str:
    """The line under a recipe's table: its wall time, the CPUs, and how loaded the machine was."""
    load = results["load"]
    return (f"Total wall time {minutes_text(results['wall_s'])} on {results['cpus']} CPUs; load average "
            f"(1, 5, 15 min) {load['start']} at the start, {load['end']} at the end.")  # fmt: skip


def csv_text(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    """CSV with a header; a missing or None value is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return buffer.getvalue()
