"""`codefoundry recipe sft-sensitivity`: the survey's SFT hyperparameter study at laptop (or GPU) scale.

Which SFT settings move held-out pass@1, one factor at a time around a centre:

1. base: the quickstart's data -> pretrain stages (`recipes.common.build_base`), built once in `OUT/base/`
   with `base` as QuickstartConfig overrides, or taken read-only from a finished quickstart run
   (`base_run`). The SFT records are the quickstart's (`chain.sft_records`: the built-in training split
   and the first `sft_parametric` parametric training problems), written once to `OUT/sft_data.jsonl`.
2. the grid: the centre is the quickstart's SFT (global batch 16, lr 1e-2, 27 epochs = its 277 steps over
   164 packed sequences, cosine to lr/10, warmup 10% of the steps). `grid` names the values of each factor
   (global_batch, lr, epochs, schedule, warmup); `mode: oat` varies one factor at a time with the others at
   the centre, so the centre cell is run once and shared by every factor; `mode: full` runs every
   combination. Epochs, not steps, are fixed: a bigger global batch takes fewer steps, as in the survey.
   Global batch = `micro_batch` sequences per forward pass x gradient accumulation (the same gradient,
   since the loss is normalised per response token over the whole step). Warmup is a fraction of the
   steps, floored (0.1 of 277 steps = the quickstart's 27).
3. per cell, in `OUT/cells/<name>/`: `codefoundry sft` from the pretrained checkpoint, then through the
   eval harness held-out parametric pass@1 (`eval_problems` problems x `eval_samples` samples at
   `temperature`, unbiased estimator, 95% percentile-bootstrap CI over problems), its difference from the
   centre cell paired over the same problems (bootstrap CI of the per-problem differences), greedy pass@1
   on the built-in held-out split (`builtin_problems`; about 0 for laptop-size models), the final SFT
   train and validation loss (the SFT run's seeded 5% of the records), steps, and wall time.
4. `OUT/sft_sensitivity.md` / `.csv` / `.png` (pass@1 with CI bars against each factor's values, one panel
   per factor) and `OUT/results.json`.

Caching and resume: a finished cell wrote `OUT/cells/<name>/done.json` and a rerun skips it; a cell cut
short resumes its SFT from the last checkpoint (`save_every`) and restarts its evaluation, which gives the
numbers of an unbroken run. `OUT/recipe.json` records the config; a rerun with other result-deciding
values stops with a message. Parallelism: `parallel` cells at once, each in its own process with `threads`
torch threads whatever `parallel` is, so the numbers do not depend on it.

Limits: one seed per cell, so differences inside the CIs are noise, and one-factor-at-a-time misses
interactions (`mode: full` sees them, at the product's cost); the learning-rate floor of the cosine and
linear schedules is lr/10 (the SFT default), not 0; wall times depend on the machine and on its load
(recorded).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codefoundry.recipes import common

if TYPE_CHECKING:
    from codefoundry.recipes.quickstart import QuickstartConfig

__all__ = ["FACTORS", "SFTSensitivityConfig", "plan_cells", "run_sft_sensitivity"]

FACTORS = ("global_batch", "lr", "epochs", "schedule", "warmup")
SCHEDULES = ("cosine", "linear", "constant")  # train.sft.SCHEDULES (not imported: it needs torch)
LABELS = {"global_batch": "global batch", "lr": "learning rate", "epochs": "epochs", "schedule": "scheduler",
          "warmup": "warmup (fraction of steps)"}  # fmt: skip
BASE_STAGES = ("data", "pretrain")
NAME = "sft_sensitivity"
RECIPE = "sft-sensitivity"


def _default_grid() -> dict[str, tuple[Any, ...]]:
    return {"global_batch": (4, 16, 64), "lr": (3e-3, 1e-2, 3e-2), "epochs": (9.0, 27.0, 54.0),
            "schedule": ("cosine", "linear", "constant")}  # fmt: skip


@dataclass(frozen=True)
class SFTSensitivityConfig:
    out: str = "runs/sft-sensitivity"
    seed: int = 0
    # the pretrained model: QuickstartConfig overrides for OUT/base, or an existing quickstart run to reuse
    base: dict[str, Any] = field(default_factory=dict)
    base_run: str = ""
    # the centre cell: the quickstart's SFT settings
    global_batch: int = 16  # sequences per optimizer step
    lr: float = 1e-2
    epochs: float = 27.0  # passes over the packed training sequences (steps = ceil(epochs * rows / batch))
    schedule: str = "cosine"  # cosine | linear | constant after the warmup
    warmup: float = 0.1  # fraction of the steps
    # the swept values: factor -> values (the centre's value is added when missing)
    grid: dict[str, Any] = field(default_factory=_default_grid)
    mode: str = "oat"  # oat: one factor at a time around the centre | full: every combination
    micro_batch: int = 16  # sequences per forward pass; a bigger global batch accumulates gradients
    # the evaluation of every cell
    eval_problems: int = 200  # parametric held-out problems
    eval_samples: int = 4  # samples per problem at `temperature` (1 at temperature 0 = greedy)
    temperature: float = 1.0
    max_new_tokens: int = 32
    builtin_problems: int | None = None  # greedy pass@1 on the built-in held-out split: None = all, 0 = skip
    long_tokens: int = 128  # generation budget of the built-in problems
    # how it runs (of these only `threads` and `device` change a number)
    parallel: int = 2  # cells at once, each in its own process
    threads: int = 1  # torch threads per cell (fixed: it changes float sums)
    workers: int = 1  # sandbox workers per cell
    base_threads: int = 2  # torch threads of the base stages (run alone, before the cells)
    save_every: int = 50  # SFT checkpoint interval in steps (a killed cell resumes from there)
    device: str = "cpu"
    progress: bool = True  # one bar over the cells (each SFT also logs OUT/cells/<name>/sft/metrics.jsonl)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", dict(self.base))
        for name in FACTORS:
            object.__setattr__(self, name, _factor_value(name, getattr(self, name), "centre"))
        object.__setattr__(self, "grid", _checked_grid(self))
        checks = {
            "mode": self.mode in ("oat", "full"), "micro_batch": self.micro_batch >= 1,
            "eval_problems": self.eval_problems >= 1, "eval_samples": self.eval_samples >= 1,
            "temperature": self.temperature > 0 or self.eval_samples == 1, "max_new_tokens": self.max_new_tokens >= 1,
            "builtin_problems": self.builtin_problems is None or self.builtin_problems >= 0,
            "long_tokens": self.long_tokens >= 1, "parallel": self.parallel >= 1, "threads": self.threads >= 1,
            "workers": self.workers >= 1, "base_threads": self.base_threads >= 1, "save_every": self.save_every >= 1,
        }  # fmt: skip
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            why = " (greedy decoding, temperature 0, takes eval_samples=1)" if "temperature" in bad else ""
            raise ValueError(f"{RECIPE}: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}{why}")
        for batch in {self.global_batch, *self.grid.get("global_batch", ())}:
            if batch > self.micro_batch and batch % self.micro_batch:
                raise ValueError(
                    f"{RECIPE}: global_batch {batch} is not a multiple of micro_batch {self.micro_batch}"
                )

    def identity(self) -> dict[str, Any]:
        """The values that decide the numbers (where and how it runs left out)."""
        return common.config_identity(
            self, ("out", "parallel", "workers", "save_every", "base_threads", "progress")
        )

    def centre(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FACTORS}


def _factor_value(name: str, value: Any, where: str) -> Any:
    """`value` as factor `name` takes it (int, float or schedule name), or a one-line ValueError."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    problem = ""
    if name == "global_batch":
        problem = "" if number and float(value).is_integer() and value >= 1 else "a positive whole number"
        value = int(value) if not problem else value
    elif name == "schedule":
        problem = "" if value in SCHEDULES else f"one of {', '.join(SCHEDULES)}"
    elif name == "warmup":
        problem = "" if number and 0 <= value < 1 else "a fraction of the steps in [0, 1)"
    else:  # lr, epochs
        problem = "" if number and value > 0 and math.isfinite(value) else "a positive number"
    if problem:
        raise ValueError(f"{RECIPE}: {where}: {name} value {value!r} is not {problem}")
    return float(value) if name in ("lr", "epochs", "warmup") else value


def _checked_grid(cfg: SFTSensitivityConfig) -> dict[str, tuple[Any, ...]]:
    """The grid with known factors, typed values without repeats and the centre's value in each (numeric
    factors sorted ascending; a schedule list keeps its order)."""
    if not isinstance(cfg.grid, dict) or not cfg.grid:
        raise ValueError(f"{RECIPE}: grid: expected factor: [values] pairs, got {cfg.grid!r}")
    grid: dict[str, tuple[Any, ...]] = {}
    for name in cfg.grid:
        if name not in FACTORS:
            raise ValueError(f"{RECIPE}: grid: unknown factor {name!r} (known: {', '.join(FACTORS)})")
    for name in FACTORS:  # the table's order, whatever the file's
        if name not in cfg.grid:
            continue
        raw = cfg.grid[name]
        raw = list(raw) if isinstance(raw, list | tuple) else [raw]
        values = [_factor_value(name, v, "grid") for v in raw]
        repeated = [v for v in values if values.count(v) > 1]
        if repeated:
            raise ValueError(f"{RECIPE}: grid: {name} lists {repeated[0]!r} twice")
        centre = getattr(cfg, name)
        if centre not in values:
            values.insert(0, centre)
        grid[name] = tuple(values if name == "schedule" else sorted(values))
    return grid


# ------------------------------------------------------------------------------------------------ cells
def cell_name(settings: dict[str, Any]) -> str:
    """A directory name that spells a cell's settings, e.g. `gb16_lr0.01_ep27_cosine_wu0.1`."""
    s = settings
    return f"gb{s['global_batch']}_lr{s['lr']:g}_ep{s['epochs']:g}_{s['schedule']}_wu{s['warmup']:g}"


def plan_cells(cfg: SFTSensitivityConfig) -> tuple[list[dict[str, Any]], list[tuple[str | None, list[str]]]]:
    """(the distinct cells' settings, the tables: (factor or None for the full grid, cell names)). In
    `oat` mode the centre cell appears in every factor's table but is one cell."""
    centre = cfg.centre()
    cells: dict[str, dict[str, Any]] = {}
    tables: list[tuple[str | None, list[str]]] = []
    if cfg.mode == "full":
        swept = list(cfg.grid)
        for combo in itertools.product(*(cfg.grid[f] for f in swept)):
            settings = {**centre, **dict(zip(swept, combo, strict=True))}
            cells[cell_name(settings)] = settings
        return list(cells.values()), [(None, list(cells))]
    for factor, values in cfg.grid.items():
        names = []
        for value in values:
            settings = {**centre, factor: value}
            cells.setdefault(cell_name(settings), settings)
            names.append(cell_name(settings))
        tables.append((factor, names))
    return list(cells.values()), tables


@dataclass(frozen=True)
class SFTInputs:
    """What every cell's SFT starts from (paths are strings: the cells run in spawned processes)."""

    init: str  # the pretrained checkpoint
    data: str  # OUT/sft_data.jsonl
    seq_len: int
    rows: int  # packed training sequences: one epoch


def _cell_steps(settings: dict[str, Any], rows: int) -> tuple[int, int]:
    """(optimizer steps, warmup steps) of a cell: SFTRun's epoch count rule, warmup floored."""
    steps = max(1, math.ceil(settings["epochs"] * rows / settings["global_batch"]))
    return steps, int(settings["warmup"] * steps)


def run_cell(cfg: SFTSensitivityConfig, settings: dict[str, Any], inputs: SFTInputs) -> dict[str, Any]:
    """One cell in `OUT/cells/<name>/`: SFT with `settings`, then its evaluation; returns (and writes to
    done.json) its row."""
    import torch

    torch.set_num_threads(cfg.threads)
    name = cell_name(settings)
    cell = Path(cfg.out) / "cells" / name
    marker = cell / "done.json"
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))
    steps, warmup = _cell_steps(settings, inputs.rows)
    summary = _train(cfg, settings, inputs, steps, warmup, cell / "sft")
    row: dict[str, Any] = {"cell": name, **settings, "steps": steps, "warmup_steps": warmup}
    row.update(_losses(cell / "sft", summary))
    row.update(_evaluate(cfg, summary["checkpoint"], cell))
    row["wall_s"] = round(row["sft_s"] + row["eval_s"], 1)  # SFT time counts its resumed parts
    row = json.loads(json.dumps(row))  # as a rerun reads it back
    common.write_json(marker, row)
    return row


def _train(cfg: SFTSensitivityConfig, settings: dict[str, Any], inputs: SFTInputs, steps: int, warmup: int,
           out: Path) -> dict[str, Any]:  # fmt: skip
    from codefoundry.train.sft import SFTConfig, sft
    from codefoundry.train.trainer_state import find_checkpoint

    summary_path = out / "summary.json"
    if summary_path.is_file():  # trained, but killed before its evaluation finished
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if summary.get("step") == steps:
            return summary
    batch = min(settings["global_batch"], cfg.micro_batch)
    scfg = SFTConfig(
        init=inputs.init, data=inputs.data, out=str(out), prompt_format="plain", seq_len=inputs.seq_len,
        batch_size=batch, grad_accum=settings["global_batch"] // batch, steps=steps, lr=settings["lr"],
        schedule=settings["schedule"], warmup=warmup, seed=cfg.seed, eval_every=0, save_every=cfg.save_every,
        log_every=1, resume=find_checkpoint(out) is not None, device=cfg.device, progress=False,
    )  # fmt: skip
    return sft(scfg)


def _losses(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The last step's train loss (from metrics.jsonl: a run resumed at its last step logs no train step)
    and the held-out loss before and after SFT, per response token."""
    from codefoundry.train.metrics import read_metrics

    train = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    return {"train_loss": train[-1] if train else None, "val_loss": summary["val_loss"],
            "initial_val_loss": summary["initial_val_loss"], "sft_s": round(summary["elapsed_s"], 1)}  # fmt: skip


def _evaluate(cfg: SFTSensitivityConfig, checkpoint: str, cell: Path) -> dict[str, Any]:
    """Held-out parametric pass@1 with its 95% CI and per-problem pass rates (for paired differences),
    and greedy pass@1 on the built-in held-out split; each restarts if it was cut short."""
    from codefoundry.eval import EvalConfig, run_eval
    from codefoundry.train.metrics import read_metrics

    started = time.perf_counter()
    runs = [("parametric", cfg.eval_samples, cfg.temperature, cfg.max_new_tokens, cfg.eval_problems)]
    if cfg.builtin_problems != 0:
        runs.append(("builtin", 1, 0.0, cfg.long_tokens, cfg.builtin_problems))
    row: dict[str, Any] = {}
    for task, n, temperature, max_tokens, limit in runs:
        out = cell / f"eval-{task}"
        # A cut-short evaluation starts over: resumed, it would draw the missing samples in other batches.
        shutil.rmtree(out, ignore_errors=True)
        ecfg = EvalConfig(
            out=str(out), task=task, model=f"cf:{checkpoint}", n=n, ks=(1,), temperature=temperature,
            max_tokens=max_tokens, seed=cfg.seed, workers=cfg.workers, limit=limit, progress=False,
        )  # fmt: skip
        result = run_eval(ecfg)
        ci = result["pass_at_k_ci95"]["pass@1"]
        if task == "builtin":
            row.update(
                {"builtin_pass@1": ci["mean"], "builtin_problems": result["counts"]["tasks_with_samples"]}
            )
            continue
        samples = read_metrics(out / "results.jsonl")
        per = common.pass_rates(samples)
        row.update({"pass@1": ci["mean"], "pass@1_low": ci["low"], "pass@1_high": ci["high"],
                    "per_problem": per, "problems": len(per), "samples": len(samples)})  # fmt: skip
    row["eval_s"] = round(time.perf_counter() - started, 1)
    return row


# ----------------------------------------------------------------------------------------------- driver
def run_sft_sensitivity(cfg: SFTSensitivityConfig, *, command: str = "") -> dict[str, Any]:
    """Run (or finish) the study in `cfg.out`; returns the results (also OUT/results.json) after writing
    the table (OUT/sft_sensitivity.md, .csv) and the plot (OUT/sft_sensitivity.png)."""
    root = Path(cfg.out)
    common.check_run_dir(root, RECIPE, cfg.identity())
    load_start = os.getloadavg()
    started = time.perf_counter()
    qcfg = None if cfg.base_run else common.base_config(cfg.out, cfg.base, seed=cfg.seed, threads=cfg.base_threads,
                                                        device=cfg.device, recipe=RECIPE)  # fmt: skip
    base = common.build_base(qcfg, cfg.base_run, stages=BASE_STAGES)
    inputs = _sft_inputs(cfg, base, qcfg)
    cells, tables = plan_cells(cfg)
    rows = _run_cells(cfg, cells, inputs)
    _add_deltas(list(rows.values()), rows[cell_name(cfg.centre())], seed=cfg.seed)
    results = {
        "title": "SFT hyperparameter sensitivity on parametric problems (codefoundry recipe sft-sensitivity)",
        "command": command or " ".join(sys.argv),
        "config": dataclasses.asdict(cfg),
        "base": str(base),
        "base_text": common.base_sentence(
            base, reused=bool(cfg.base_run), overrides=cfg.base, stages=BASE_STAGES
        ),
        "sft_data": {"records": str(inputs.data), "rows": inputs.rows, "seq_len": inputs.seq_len},
        "centre": cell_name(cfg.centre()),
        "rows": [rows[cell_name(s)] for s in cells],
        "tables": [{"factor": factor, "cells": names} for factor, names in tables],
        "wall_s": round(time.perf_counter() - started, 1),
        "load": common.load_text(load_start),
        "cpus": os.cpu_count(),
    }
    results = json.loads(json.dumps(results))
    common.write_json(root / "results.json", results)
    results["outputs"] = [str(p) for p in write_outputs(results, root / NAME)]
    return results


def _sft_inputs(cfg: SFTSensitivityConfig, base: Path, qcfg: QuickstartConfig | None) -> SFTInputs:
    """The SFT records of the base's quickstart settings (written once) and how many packed sequences of
    the base's seq_len they make after the SFT run's 5% held-out split."""
    from codefoundry.models import tokenizer as cft
    from codefoundry.recipes import chain
    from codefoundry.train import sft_data as D
    from codefoundry.train.sft import SFTConfig

    settings = common.base_settings(base)
    if "seq_len" not in settings:
        raise ValueError(f"{base / 'quickstart.json'}: no seq_len (the base run's settings are unknown)")
    n_parametric = common.sft_problem_count(base, qcfg)
    data = Path(cfg.out) / "sft_data.jsonl"
    if not data.is_file():
        rows = chain.sft_records(n_parametric)
        common.write_text(data, "".join(json.dumps(r) + "\n" for r in rows))
    init = chain.checkpoint_of(base, "base")
    defaults = SFTConfig(init=str(init), data=str(data), out="")  # the split and packing a cell's SFT uses
    train, _ = D.split_records(D.read_records(data), eval_fraction=defaults.eval_fraction, seed=cfg.seed)
    split = D.build_split(train, D.Renderer(cft.load(init)), seq_len=settings["seq_len"], prompt_format="plain",
                          overlong=defaults.overlong, packing=defaults.packing)  # fmt: skip
    return SFTInputs(str(init), str(data), int(settings["seq_len"]), len(split.rows))


def _run_cells(
    cfg: SFTSensitivityConfig, cells: list[dict[str, Any]], inputs: SFTInputs
) -> dict[str, dict[str, Any]]:
    """Every cell, `cfg.parallel` at a time, the costliest (most sequences seen) first."""
    order = sorted(cells, key=lambda s: -s["epochs"])
    jobs = [(cell_name(settings), (cfg, settings, inputs)) for settings in order]
    return common.run_cells(
        run_cell, jobs, parallel=cfg.parallel, desc=f"{RECIPE} cells", progress=cfg.progress
    )


def _add_deltas(rows: list[dict[str, Any]], centre: dict[str, Any], *, seed: int) -> None:
    """Each cell's pass@1 minus the centre cell's, paired over the same problems (`common.paired_delta`)."""
    for row in rows:
        delta = (None, None, None)
        if row["cell"] != centre["cell"]:
            delta = common.paired_delta(centre["per_problem"], row["per_problem"], seed=seed)
        row.update(dict(zip(("delta_pass@1", "delta_low", "delta_high"), delta, strict=True)))


# ---------------------------------------------------------------------------------------------- outputs
COLUMNS = ("steps", "pass@1 (95% CI)", "Δ pass@1 vs centre (95% CI)", "built-in pass@1 (greedy)",
           "val loss", "train loss", "wall time")  # fmt: skip
CSV_COLUMNS = ("factor", "value", "is_centre", "cell", *FACTORS, "steps", "warmup_steps", "pass@1", "pass@1_low",
               "pass@1_high", "delta_pass@1", "delta_low", "delta_high", "builtin_pass@1", "val_loss",
               "initial_val_loss", "train_loss", "problems", "samples", "sft_s", "eval_s", "wall_s")  # fmt: skip


def write_outputs(results: dict[str, Any], stem: Path) -> list[Path]:
    """`stem`.md (the tables with the command on top), `stem`.csv (the same numbers, unrounded, one line
    per table row) and `stem`.png (pass@1 against each factor's values)."""
    md, csv_path, png = stem.with_suffix(".md"), stem.with_suffix(".csv"), stem.with_suffix(".png")
    common.write_text(md, markdown(results, plot_name=png.name))
    common.write_text(csv_path, common.csv_text(CSV_COLUMNS, _csv_rows(results)))
    plot_factors(results, png)
    return [md, csv_path, png]


def value_text(factor: str, value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _by_cell(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["cell"]: row for row in results["rows"]}


def _csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    cells = _by_cell(results)
    out = []
    for table in results["tables"]:
        factor = table["factor"]
        for name in table["cells"]:
            row = cells[name]
            out.append({**row, "factor": factor, "value": row[factor] if factor else None,
                        "is_centre": name == results["centre"]})  # fmt: skip
    return out


def markdown(results: dict[str, Any], *, plot_name: str = "") -> str:
    """The tables (one per factor, or one for the full grid) with the command, the settings that make the
    cells comparable, and the machine load on top."""
    cfg, cells = results["config"], _by_cell(results)
    centre = cells[results["centre"]]
    data = results["sft_data"]
    shown = ", ".join(f"{LABELS[f]} {value_text(f, centre[f])}" for f in FACTORS)
    grid = "; ".join(
        f"{LABELS[f]} {', '.join(value_text(f, v) for v in vs)}" for f, vs in cfg["grid"].items()
    )
    mode = ("one factor at a time, the others at the centre (the centre cell is run once and appears in every "
            "table)" if cfg["mode"] == "oat" else "every combination of the values (full factorial)")  # fmt: skip
    builtin = ("-" if cfg["builtin_problems"] == 0 else
               f"greedy pass@1 on {centre.get('builtin_problems')} built-in held-out problems")  # fmt: skip
    lines = [
        "# SFT hyperparameter sensitivity (laptop scale)" if cfg["device"] == "cpu"
        else "# SFT hyperparameter sensitivity",
        "", f"Command: `{results['command']}`", "", results["base_text"], "",
        f"SFT: the quickstart's records ({data['rows']} packed sequences of {data['seq_len']} tokens after the "
        f"SFT run's seeded 5% held-out split), from the pretrained checkpoint with seed {cfg['seed']}. Centre "
        f"cell: {shown}. Values: {grid}; {mode}. Epochs are fixed, so a bigger global "
        f"batch takes fewer steps (steps = ceil(epochs x sequences / global batch)); global batch = micro-batch "
        f"{cfg['micro_batch']} x gradient accumulation; cosine and linear decay to lr/10 after a linear warmup "
        f"over the warmup fraction of the steps. pass@1: {cfg['eval_problems']} parametric held-out problems x "
        f"{cfg['eval_samples']} samples at T={cfg['temperature']}, up to {cfg['max_new_tokens']} tokens "
        "(unbiased estimator, 95% percentile-bootstrap CI over problems); Δ is paired with the centre cell over "
        f"the same problems. Built-in: {builtin}. Loss: per response token, val on the held-out 5% (before "
        f"SFT: {centre['initial_val_loss']:.3f}), train at the last step. Wall time: SFT plus evaluation, "
        f"{cfg['parallel']} cell(s) at a time, {cfg['threads']} torch thread(s) each.",
    ]  # fmt: skip
    for table in results["tables"]:
        factor = table["factor"]
        keys = [factor] if factor else list(cfg["grid"])
        if factor:
            lines += ["", f"## {LABELS[factor]}"]
        header = [LABELS[k] for k in keys] + list(COLUMNS)
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in table["cells"]:
            lines.append("| " + " | ".join(_cells_text(cells[name], keys, name == results["centre"])) + " |")
    lines += ["", common.timing_text(results)]
    if plot_name:
        lines += ["", f"![held-out pass@1 per factor]({plot_name})"]
    return "\n".join(lines) + "\n"


def _cells_text(row: dict[str, Any], keys: list[str], is_centre: bool) -> list[str]:
    values = [value_text(k, row[k]) for k in keys]
    values[-1] += " (centre)" if is_centre else ""
    builtin = row.get("builtin_pass@1")
    return [*values, str(row["steps"]), common.ci_text(row["pass@1"], row["pass@1_low"], row["pass@1_high"]),
            common.ci_text(row["delta_pass@1"], row["delta_low"], row["delta_high"], sign=True),
            common.ci_text(builtin), common.ci_text(row["val_loss"]), common.ci_text(row["train_loss"]),
            common.minutes_text(row["wall_s"])]  # fmt: skip


def plot_factors(results: dict[str, Any], png: Path) -> Path:
    """One panel per factor: held-out pass@1 with its 95% CI against the factor's values, the others at
    the centre (in `full` mode too: there each panel is the slice through the centre); the centre's
    pass@1 as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, cells = results["config"], _by_cell(results)
    centre = cells[results["centre"]]
    factors = list(cfg["grid"])
    fig, axes = plt.subplots(1, len(factors), figsize=(3.6 * len(factors), 3.4), sharey=True, squeeze=False)
    for ax, factor in zip(axes[0], factors, strict=True):
        values = cfg["grid"][factor]
        rows = [cells[cell_name({**{f: centre[f] for f in FACTORS}, factor: v})] for v in values]
        means = [r["pass@1"] for r in rows]
        errors = [[m - r["pass@1_low"] for m, r in zip(means, rows, strict=True)],
                  [r["pass@1_high"] - m for m, r in zip(means, rows, strict=True)]]  # fmt: skip
        positions = list(range(len(values)))  # evenly spaced: lr and batch grids are geometric
        ax.errorbar(positions, means, yerr=errors, fmt="o-", color="C0", capsize=3)
        at = values.index(centre[factor])
        ax.plot([at], [means[at]], "o", color="C3", markersize=8, zorder=3, label="centre")
        ax.axhline(centre["pass@1"], color="gray", linestyle="--", linewidth=0.8)
        ax.set_xticks(positions, [value_text(factor, v) for v in values])
        ax.set_xlabel(LABELS[factor])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out pass@1 (95% CI)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("SFT sensitivity: parametric held-out pass@1, one factor at a time around the centre")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return png
