"""`codefoundry recipe scaling-law`: the survey's Chinchilla-style loss law L(N, D) = E + A/N^α + B/D^β,
measured on a grid of model shapes × token budgets at laptop (or GPU) scale.

1. data: the quickstart's data stage only (the standard library's token shards and tokenizer), built in
   `OUT/base/` with `base` as QuickstartConfig overrides, or taken read-only from a finished run
   (`base_run`).
2. one cell per (shape, budget): `pretrain` of a fresh model of that shape (dim, n_layers, n_heads,
   n_kv_heads) for that many steps, with the same seed, learning rate, batch, sequence length and FIM
   rate everywhere (fim_rate 0 by default: plain next-token training). Warmup is a tenth of the cell's
   steps and the cosine reaches lr/10 at its own last step, so every budget is a finished schedule.
   L = the next-token loss on `eval_batches` × `batch_size` fixed held-out windows (left to right, no
   FIM) at the end; N = non-embedding parameters (the tied embedding/head left out: in models this
   small it is most of the total, which is recorded too); D = tokens trained on.
3. the fit of `recipes.scaling_fit` (Huber on log L, a grid of starts, box-projected BFGS), a percentile
   bootstrap over cells for 95% CIs, and the compute-optimal N and D (C ≈ 6·N·D) at `budgets` times the
   largest C of the grid.
4. `OUT/scaling_law.md` / `.csv` / `.png` (measured points against the fitted curves) and
   `OUT/results.json`.

Caching and resume: a finished cell wrote `OUT/cells/<cell>/done.json` and a rerun skips it; a cell cut
short resumes its pretraining from the last checkpoint (every `save_every` steps), which gives the very
same loss as an uninterrupted run (pretrain's exact resume). The fit is redone on every run (seconds).
`OUT/recipe.json` records the result-deciding settings; a rerun with other ones stops with a message.

Parallelism: `parallel` cells run at once, each in a spawned process with `threads` torch threads
whatever `parallel` is, so the numbers do not depend on it. Limits: a dozen or so points from models of
15k-800k non-embedding parameters trained on under a million tokens each; the fit is noisy (wide CIs,
especially for B and β over a 4x range of D) and the exponents of such tiny models need not carry over to
large ones; one seed per cell; C counts non-embedding FLOPs only, while at this size the vocabulary head
costs as much compute as the rest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codefoundry.recipes import common

__all__ = ["ScalingLawConfig", "cell_config", "run_cell", "run_scaling_law"]

NAME = "scaling_law"
RECIPE = "scaling-law"
STAGES = ("data",)
Shape = tuple[int, int, int, int]  # (dim, n_layers, n_heads, n_kv_heads)


@dataclass(frozen=True)
class ScalingLawConfig:
    out: str = "runs/scaling-law"
    seed: int = 0
    # the data: QuickstartConfig overrides for OUT/base (its data stage only), or a finished run to reuse
    base: dict[str, Any] = field(default_factory=dict)
    base_run: str = ""
    # the grid: model shapes x token budgets (in optimizer steps: D = steps * batch_size * seq_len)
    shapes: tuple[Shape, ...] = ((32, 1, 2, 1), (48, 2, 3, 1), (64, 2, 4, 2), (96, 3, 6, 2), (128, 4, 4, 2))
    steps: tuple[int, ...] = (125, 250, 500)
    # every cell's training
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    fim_rate: float = 0.0
    eval_batches: int = 16
    # the fit
    bootstrap: int = 200  # resamples for the CIs (0 = none)
    huber_delta: float = 1e-3
    budgets: tuple[float, ...] = (1.0, 10.0)  # compute-optimal rows, as multiples of the grid's largest 6ND
    # how it runs (none of these changes a number)
    parallel: int = 2  # cells at once, each in its own process
    threads: int = 1  # torch threads per cell (fixed: it changes float sums)
    save_every: int = 50
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", dict(self.base))
        shapes = tuple(tuple(s) if isinstance(s, list | tuple) else (s,) for s in self.shapes)
        object.__setattr__(self, "shapes", shapes)
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "budgets", tuple(self.budgets))
        checks = {
            "shapes": len(self.shapes) >= 2 and len(set(self.shapes)) == len(self.shapes)
                      and all(_shape_error(s) is None for s in self.shapes),
            "steps": len(self.steps) >= 2 and len(set(self.steps)) == len(self.steps)
                     and all(type(s) is int and s >= 1 for s in self.steps),
            "batch_size": self.batch_size >= 1, "seq_len": self.seq_len >= 2, "lr": self.lr > 0,
            "fim_rate": 0 <= self.fim_rate <= 1, "eval_batches": self.eval_batches >= 1,
            "bootstrap": self.bootstrap >= 0, "huber_delta": self.huber_delta > 0,
            "budgets": bool(self.budgets) and all(b > 0 for b in self.budgets), "parallel": self.parallel >= 1,
            "threads": self.threads >= 1, "save_every": self.save_every >= 1,
        }  # fmt: skip
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            why = next(filter(None, map(_shape_error, self.shapes)), None) if "shapes" in bad else None
            raise ValueError(f"{RECIPE}: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}"
                             f"{f' ({why})' if why else ''}")  # fmt: skip
        if len(self.shapes) * len(self.steps) < 5:
            raise ValueError(f"{RECIPE}: {len(self.shapes)} shapes x {len(self.steps)} budgets give fewer than"
                             " the 5 points a fit of E, A, B, alpha, beta needs")  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """The values that decide the numbers (where and how it runs left out)."""
        return common.config_identity(self, ("out", "parallel", "save_every", "progress"))


def _shape_error(shape: Any) -> str | None:
    """Why `shape` is no (dim, n_layers, n_heads, n_kv_heads) a model can have, or None."""
    from codefoundry.models.config import ModelConfig

    if len(shape) != 4 or any(type(v) is not int or v < 1 for v in shape):
        return f"shape {list(shape)}: expected 4 positive ints (dim, n_layers, n_heads, n_kv_heads)"
    dim, n_layers, n_heads, n_kv_heads = shape
    try:
        ModelConfig(vocab_size=8, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads)
    except ValueError as e:
        return f"shape {list(shape)}: {e}"
    return None


def cell_name(shape: Shape, steps: int) -> str:
    dim, n_layers, n_heads, n_kv_heads = shape
    return f"d{dim}-l{n_layers}-h{n_heads}-kv{n_kv_heads}-s{steps}"


# ----------------------------------------------------------------------------------------------- cells
def cell_config(cfg: ScalingLawConfig, shape: Shape, steps: int, data: dict[str, str]) -> Any:
    """The PretrainConfig of one cell (in OUT/cells/<cell>/train), resuming a checkpoint left there."""
    from codefoundry.train.pretrain import PretrainConfig
    from codefoundry.train.trainer_state import find_checkpoint

    out = Path(cfg.out) / "cells" / cell_name(shape, steps) / "train"
    return PretrainConfig(
        data=data["shards"], tokenizer=data["tokenizer"], out=str(out), shape=shape, steps=steps,
        batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr, fim_rate=cfg.fim_rate, seed=cfg.seed,
        eval_every=0, eval_batches=cfg.eval_batches, save_every=cfg.save_every, log_every=max(1, steps // 20),
        resume=find_checkpoint(out) is not None, device=cfg.device, progress=False, final_eval=False,
    )  # fmt: skip


def run_cell(cfg: ScalingLawConfig, shape: Shape, steps: int, data: dict[str, str]) -> dict[str, Any]:
    """One cell: pretrain (or finish pretraining) its model and return (and write to done.json) its row."""
    import torch

    from codefoundry.train.pretrain import pretrain

    torch.set_num_threads(cfg.threads)
    marker = Path(cfg.out) / "cells" / cell_name(shape, steps) / "done.json"
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))
    pcfg = cell_config(cfg, shape, steps, data)
    done = Path(pcfg.out) / "summary.json"  # trained, but killed before the marker: nothing to redo
    summary = json.loads(done.read_text(encoding="utf-8")) if done.is_file() else {}
    if summary.get("step") != steps:
        summary = pretrain(pcfg)
    if summary["step"] != steps or summary["val_loss"] is None:
        raise RuntimeError(f"{marker.parent}: pretraining stopped at step {summary['step']} of {steps}"
                           f" ({summary['stopped']}) or has no held-out loss")  # fmt: skip
    n, d = summary["non_embedding_params"], summary["tokens"]
    row = {
        "cell": cell_name(shape, steps), "dim": shape[0], "n_layers": shape[1], "n_heads": shape[2],
        "n_kv_heads": shape[3], "N": n, "params": summary["params"], "steps": steps, "D": d, "flops": 6 * n * d,
        "loss": summary["val_loss"], "train_loss": summary["train_loss"], "unigram_loss": summary["unigram_loss"],
        "wall_s": round(summary["elapsed_s"], 1), "tokens_per_s": summary["tokens_per_s"],
    }  # fmt: skip
    common.write_json(marker, row)
    return row


def _run_cells(cfg: ScalingLawConfig, data: dict[str, str], vocab: int) -> list[dict[str, Any]]:
    """Every cell, `cfg.parallel` at a time, the costliest first (so the last to finish are short);
    returns the rows in grid order (shapes, then budgets)."""
    grid = [(shape, steps) for shape in cfg.shapes for steps in cfg.steps]
    cost = {cell: cell[1] * cell[0][0] * (12 * cell[0][0] * cell[0][1] + 2 * vocab) for cell in grid}
    jobs = [(cell_name(*cell), (cfg, *cell, data)) for cell in sorted(grid, key=lambda cell: -cost[cell])]
    rows = common.run_cells(
        run_cell, jobs, parallel=cfg.parallel, desc=f"{RECIPE} cells", progress=cfg.progress
    )
    return [rows[cell_name(shape, steps)] for shape, steps in grid]


def _data_paths(base: Path) -> dict[str, str]:
    """The token shards and tokenizer of the base's data stage (found beside its done marker, so a moved
    run still works) and the vocabulary size."""
    from codefoundry.recipes.chain import DONE

    summary = json.loads((base / "data" / DONE).read_text(encoding="utf-8"))["summary"]
    return {"shards": str(base / "data" / Path(summary["shards"]).name),
            "tokenizer": str(base / "data" / Path(summary["tokenizer"]).name),
            "vocab_size": str(summary["vocab_size"])}  # fmt: skip


# ------------------------------------------------------------------------------------------------- fit
def fit_cells(cfg: ScalingLawConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The law fitted to the rows (each gets its `fit_loss` and `log_residual`), the bootstrap CIs and
    the compute-optimal rows."""
    import numpy as np

    from codefoundry.recipes import scaling_fit as sf

    n, d, loss = (np.array([r[k] for r in rows], dtype=np.float64) for k in ("N", "D", "loss"))
    fit = sf.fit_law(n, d, loss, delta=cfg.huber_delta)
    for row, predicted in zip(rows, fit.law.loss(n, d), strict=True):
        row["fit_loss"] = float(predicted)
        row["log_residual"] = float(np.log(predicted) - np.log(row["loss"]))
    laws, hits = [], np.zeros(0, dtype=bool)
    if cfg.bootstrap:
        thetas, hits = sf.bootstrap_laws(n, d, loss, fit.theta, samples=cfg.bootstrap, seed=cfg.seed,
                                         delta=cfg.huber_delta)  # fmt: skip
        laws = [sf.Law.from_theta(t) for t in thetas]
    names = ("E", "A", "B", "alpha", "beta")
    boot = np.array([[getattr(law, k) for k in names] for law in laws]).reshape(len(laws), len(names))
    params = {k: _with_ci(getattr(fit.law, k), boot[:, i]) for i, k in enumerate(names)}
    largest = max(r["flops"] for r in rows)
    optimal = []
    for multiple in cfg.budgets:
        flops = multiple * largest
        n_opt, d_opt = fit.law.optimal(flops)
        boot = np.array([(*law.optimal(flops), law.loss(*law.optimal(flops))) for law in laws]).reshape(-1, 3)
        optimal.append({
            "multiple": multiple, "flops": flops, "N": _with_ci(n_opt, boot[:, 0]), "D": _with_ci(d_opt, boot[:, 1]),
            "loss": _with_ci(float(fit.law.loss(n_opt, d_opt)), boot[:, 2]), "tokens_per_param": d_opt / n_opt,
        })  # fmt: skip
    return {"params": params, "rmse_log": fit.rmse_log, "r2": fit.r2, "objective": fit.objective,
            "at_bound": list(fit.at_bound), "bootstrap": cfg.bootstrap, "bootstrap_at_bound": int(hits.sum()),
            "huber_delta": cfg.huber_delta, "starts": len(sf.start_grid()), "explore": sf.EXPLORE,
            "leaders": sf.LEADERS, "optimal": optimal}  # fmt: skip


def _with_ci(value: float, samples: Any) -> dict[str, float | None]:
    """The estimate with the 95% percentile interval of its bootstrap values (None without any)."""
    if not len(samples):
        return {"value": float(value), "low": None, "high": None}
    from codefoundry.recipes.scaling_fit import percentile_ci

    low, high = percentile_ci(samples)
    return {"value": float(value), "low": low, "high": high}


# ---------------------------------------------------------------------------------------------- driver
def run_scaling_law(cfg: ScalingLawConfig, *, command: str = "") -> dict[str, Any]:
    """Run (or finish) the grid in `cfg.out` and fit it; returns the results (also OUT/results.json)
    after writing the table (OUT/scaling_law.md, .csv) and the plot (OUT/scaling_law.png)."""
    root = Path(cfg.out)
    common.check_run_dir(root, RECIPE, cfg.identity())
    load_start = os.getloadavg()
    started = time.perf_counter()
    qcfg = None
    if not cfg.base_run:
        qcfg = common.base_config(cfg.out, cfg.base, seed=cfg.seed, threads=cfg.threads, device=cfg.device,
                                  recipe=RECIPE)  # fmt: skip
    base = common.build_base(qcfg, cfg.base_run, stages=STAGES)
    data = _data_paths(base)
    rows = _run_cells(cfg, data, int(data["vocab_size"]))
    fit = fit_cells(cfg, rows)
    sentence = common.base_sentence(base, reused=bool(cfg.base_run), overrides=cfg.base, stages=STAGES)
    results = {
        "title": "Scaling law L(N, D) = E + A/N^alpha + B/D^beta (codefoundry recipe scaling-law)",
        "command": command or " ".join(sys.argv),
        "config": dataclasses.asdict(cfg),
        "base": str(base),
        "base_sentence": sentence,
        "rows": rows,
        "fit": fit,
        "wall_s": round(time.perf_counter() - started, 1),
        "load": common.load_text(load_start),
        "cpus": os.cpu_count(),
    }
    results = json.loads(json.dumps(results))  # as a rerun reads it back (tuples as lists)
    common.write_json(root / "results.json", results)
    results["outputs"] = [str(p) for p in write_outputs(results, root / NAME)]
    return results


# --------------------------------------------------------------------------------------------- outputs
CSV_COLUMNS = ("cell", "dim", "n_layers", "n_heads", "n_kv_heads", "N", "params", "steps", "D", "flops", "loss",
               "fit_loss", "log_residual", "train_loss", "unigram_loss", "wall_s", "tokens_per_s")  # fmt: skip
SYMBOLS = {"E": "E", "A": "A", "B": "B", "alpha": "α", "beta": "β"}


def write_outputs(results: dict[str, Any], stem: Path) -> list[Path]:
    """`stem`.md (the tables with the command on top), `stem`.csv (one row per cell, unrounded) and
    `stem`.png (measured points against the fitted law)."""
    md, csv_path, png = stem.with_suffix(".md"), stem.with_suffix(".csv"), stem.with_suffix(".png")
    common.write_text(md, markdown(results, plot_name=png.name))
    common.write_text(csv_path, common.csv_text(CSV_COLUMNS, results["rows"]))
    plot_fit(results, png)
    return [md, csv_path, png]


def _si(x: float) -> str:
    """15456 -> 15.5k, 1311872 -> 1.31M (three significant digits)."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{suffix}"
    return f"{x:.3g}"


def _estimate(est: dict[str, Any], fmt: str) -> str:
    text = f"{est['value']:{fmt}}"
    return text if est["low"] is None else f"{text} [{est['low']:{fmt}}, {est['high']:{fmt}}]"


def markdown(results: dict[str, Any], *, plot_name: str = "") -> str:
    """The measured grid, the fitted law with CIs and the compute-optimal rows, with the command, the
    settings and the machine load."""
    cfg, fit, rows = results["config"], results["fit"], results["rows"]
    tokens = cfg["batch_size"] * cfg["seq_len"]
    lines = [
        "# Scaling law L(N, D) (laptop scale)" if cfg["device"] == "cpu" else "# Scaling law L(N, D)", "",
        f"Command: `{results['command']}`", "", results["base_sentence"], "",
        f"Every cell pretrains a fresh model of its shape on those token shards for its own budget: seed "
        f"{cfg['seed']}, AdamW at lr {cfg['lr']} (linear warmup over a tenth of the steps, then a cosine to "
        f"lr/10 at the cell's last step), {cfg['batch_size']} x {cfg['seq_len']} = {tokens} tokens per step, "
        f"FIM rate {cfg['fim_rate']}. L: next-token loss (nats/token) on up to {cfg['eval_batches']} x "
        f"{cfg['batch_size']} fixed held-out windows of {cfg['seq_len']} tokens (left to right, no FIM) after "
        "the last step. N: non-embedding parameters (the tied embedding/head excluded); D: tokens trained "
        "on; C ≈ 6·N·D.", "",
        "## Measured held-out loss (fitted value in parentheses)", "",
    ]  # fmt: skip
    budgets = sorted({(r["steps"], r["D"]) for r in rows})
    lines += ["| shape (dim x layers, heads/kv) | N (non-embedding) | params (total) | "
              + " | ".join(f"D = {_si(d)} ({s} steps)" for s, d in budgets) + " |",
              "|" + "---|" * (3 + len(budgets))]  # fmt: skip
    for shape in sorted({(r["N"], r["dim"], r["n_layers"], r["n_heads"], r["n_kv_heads"]) for r in rows}):
        mine = {r["steps"]: r for r in rows if (r["N"], r["dim"], r["n_layers"]) == shape[:3]}
        first = next(iter(mine.values()))
        cells = [f"{mine[s]['loss']:.3f} ({mine[s]['fit_loss']:.3f})" if s in mine else "-"
                 for s, _ in budgets]  # fmt: skip
        lines.append(f"| {shape[1]} x {shape[2]}, {shape[3]}/{shape[4]} | {_si(shape[0])} | "
                     f"{_si(first['params'])} | " + " | ".join(cells) + " |")  # fmt: skip
    lines += ["", "## Fitted law L(N, D) = E + A/N^α + B/D^β", "", _fit_sentence(fit, len(rows)), "",
              "| parameter | estimate (95% CI) |", "|---|---|"]  # fmt: skip
    for name, est in fit["params"].items():
        fmt = ".3f" if name in ("E", "alpha", "beta") else ".3g"
        lines.append(f"| {SYMBOLS[name]} | {_estimate(est, fmt)} |")
    lines += ["", "## Compute-optimal allocation", "",
              "N_opt(C) = G·(C/6)^(β/(α+β)) with G = (αA/(βB))^(1/(α+β)), D_opt = C/(6·N_opt); C is a multiple "
              "of the largest 6·N·D of the grid. CIs: the same bootstrap refits.", "",
              "| budget C (FLOPs) | N_opt (95% CI) | D_opt (95% CI) | D_opt / N_opt | predicted L (95% CI) |",
              "|---|---|---|---|---|"]  # fmt: skip
    for row in fit["optimal"]:
        lines.append(f"| {row['flops']:.3g} ({row['multiple']:g}x the grid's largest) | {_estimate(row['N'], '.3g')} | "
                     f"{_estimate(row['D'], '.3g')} | {row['tokens_per_param']:.3g} | {_estimate(row['loss'], '.3f')} |")  # fmt: skip
    load = results["load"]
    lines += ["", f"Limits: {len(rows)} points from models of {_si(min(r['N'] for r in rows))} to "
              f"{_si(max(r['N'] for r in rows))} non-embedding parameters and budgets of {_si(budgets[0][1])} to "
              f"{_si(budgets[-1][1])} tokens, one seed each: the fit is noisy at this scale (read the CIs, and "
              "expect B and β to be the loosest), exponents of models this small need not carry over to large "
              "ones, and C counts non-embedding FLOPs while here the vocabulary head costs as much again.", "",
              f"Total wall time {common.minutes_text(results['wall_s'])} on {results['cpus']} CPUs "
              f"({cfg['parallel']} cell(s) at a time, {cfg['threads']} torch thread(s) each); load average "
              f"(1, 5, 15 min) {load['start']} at the start, {load['end']} at the end."]  # fmt: skip
    if plot_name:
        lines += ["", f"![measured loss against the fitted law]({plot_name})"]
    return "\n".join(lines) + "\n"


def _fit_sentence(fit: dict[str, Any], points: int) -> str:
    """How the law was fitted and how well it fits, with the bound warnings."""
    text = (f"Fitted to the {points} cells: Huber loss (δ = {fit['huber_delta']:g}) of log L̂ - log L, "
            f"box-projected BFGS from each of {fit['starts']} grid starting points ({fit['explore']} iterations, "
            f"then the {fit['leaders']} lowest to convergence), the best kept. Fit quality: "
            f"RMSE of log L {fit['rmse_log']:.4f}, R² of L {fit['r2']:.4f}.")  # fmt: skip
    if fit["bootstrap"]:
        text += (f" 95% CIs: percentiles of {fit['bootstrap']} refits on cells resampled with replacement; "
                 f"{fit['bootstrap_at_bound']} of them ended at a bound of the parameter box (there the box, "
                 "not the data, sets a parameter, which widens the CIs).")  # fmt: skip
    if fit["at_bound"]:
        text += f" Warning: the full-data fit ended at a bound of {', '.join(fit['at_bound'])}."
    return text


def plot_fit(results: dict[str, Any], png: Path) -> Path:
    """Left: L against D per shape; right: L against N per budget; measured points and the fitted law's
    curves, on log-log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    from codefoundry.recipes.scaling_fit import Law

    rows = results["rows"]
    law = Law(**{k: v["value"] for k, v in results["fit"]["params"].items()})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    ds = np.geomspace(min(r["D"] for r in rows) / 1.5, max(r["D"] for r in rows) * 1.5, 100)
    ns = np.geomspace(min(r["N"] for r in rows) / 1.5, max(r["N"] for r in rows) * 1.5, 100)
    for i, n in enumerate(sorted({r["N"] for r in rows})):
        points = sorted((r["D"], r["loss"]) for r in rows if r["N"] == n)
        left.plot(*zip(*points, strict=True), "o", color=f"C{i % 10}", label=f"N = {_si(n)}")
        left.plot(ds, law.loss(n, ds), "-", color=f"C{i % 10}", alpha=0.7)
    for i, d in enumerate(sorted({r["D"] for r in rows})):
        points = sorted((r["N"], r["loss"]) for r in rows if r["D"] == d)
        right.plot(*zip(*points, strict=True), "s", color=f"C{i % 10}", label=f"D = {_si(d)}")
        right.plot(ns, law.loss(ns, d), "-", color=f"C{i % 10}", alpha=0.7)
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for ax, xlabel in ((left, "D (tokens trained on)"), (right, "N (non-embedding parameters)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out loss (nats/token)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    left.set_title("Loss against data, per model size (lines: fitted law)")
    right.set_title("Loss against model size, per budget (lines: fitted law)")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return png
