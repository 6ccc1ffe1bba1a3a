"""`codefoundry recipe rl-estimators`: the survey's advantage-estimator comparison at laptop (or GPU) scale.

One base model, several RL arms that differ only in the estimator:

1. base: the quickstart's data -> pretrain -> SFT stages (`recipes.chain`), run once in `OUT/base/` with
   `base` as QuickstartConfig overrides, or taken read-only from a finished quickstart run (`base_run`).
2. one arm per estimator in `estimators`: `codefoundry rl` from the same SFT checkpoint, with the same
   seed, steps, group size, learning rate, training problems (the parametric half SFT did not see) and
   held-out curve (pass@1 on the first `curve_problems` parametric held-out problems every `eval_every`
   steps); then pass@1 and pass@5 on `eval_problems` held-out problems x `eval_samples` samples at
   `temperature` through the eval harness (unbiased pass@k, percentile-bootstrap 95% CI over problems).
   The SFT model gets the same final evaluation as the baseline row.
3. `OUT/rl_estimators.md` / `.csv` / `.png` (held-out pass@1 over RL steps per estimator) and
   `OUT/results.json`.

Caching and resume: an arm that finished wrote `OUT/arms/<name>/done.json` and a rerun skips it; an arm
cut short resumes its RL run from the last checkpoint (`save_every`) and restarts its final evaluation.
`OUT/recipe.json` records the config; a rerun with other result-deciding values stops with a message.

Parallelism: `parallel` arms run at once, each in its own process with `threads` torch threads and
`workers` sandbox workers, whatever `parallel` is, so the numbers do not depend on it (float sums depend
on the thread count). Limits: "steps to best" is the argmax of a curve sampled every `eval_every` steps
on `curve_problems` problems, so it is coarse and noisy at laptop scale; one seed per arm (no spread
over seeds); wall times depend on the machine and on what else runs on it (the load is recorded).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codefoundry.recipes.quickstart import QuickstartConfig

__all__ = ["ESTIMATORS", "RLEstimatorsConfig", "run_rl_estimators"]

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_passk", "gae")
LABELS = {"gae": "gae (PPO)", "sft": "SFT (no RL)"}
BASE_STAGES = ("data", "pretrain", "sft")
NAME = "rl_estimators"


@dataclass(frozen=True)
class RLEstimatorsConfig:
    out: str = "runs/rl-estimators"
    estimators: tuple[str, ...] = ESTIMATORS
    seed: int = 0
    # the base model: QuickstartConfig overrides for OUT/base, or an existing quickstart run to reuse
    base: dict[str, Any] = field(default_factory=dict)
    base_run: str = ""
    # each RL arm (the quickstart's RL settings unless changed)
    steps: int = 64
    group_size: int = 8
    prompts_per_step: int = 16
    max_new_tokens: int = 32
    temperature: float = 1.0  # RL sampling and the sampled evaluations
    lr: float = 5e-4
    kl_coef: float = 0.0
    eval_every: int = 8  # held-out pass@1 curve: steps between points (0 and the last step included)
    curve_problems: int = 100
    curve_samples: int = 2
    # the final held-out evaluation of every arm and of the SFT model
    eval_problems: int = 200
    eval_samples: int = 8  # n per problem; pass@5 needs n >= 5
    # how it runs (none of these changes a number)
    parallel: int = 2  # arms at once, each in its own process
    threads: int = 1  # torch threads per arm (fixed: it changes float sums)
    workers: int = 1  # sandbox workers per arm
    base_threads: int = 2  # torch threads of the base stages (run alone, before the arms)
    save_every: int = 8
    device: str = "cpu"
    progress: bool = True  # one bar over the arms (each arm's RL also logs OUT/arms/<name>/rl/metrics.jsonl)

    def __post_init__(self) -> None:
        object.__setattr__(self, "estimators", tuple(self.estimators))
        object.__setattr__(self, "base", dict(self.base))
        unknown = [e for e in self.estimators if e not in ESTIMATORS]
        checks = {
            "estimators": bool(self.estimators) and not unknown and len(set(self.estimators)) == len(self.estimators),
            "steps": self.steps >= 1, "group_size": self.group_size >= 2, "eval_every": self.eval_every >= 1,
            "curve_problems": self.curve_problems >= 1, "eval_problems": self.eval_problems >= 1,
            "eval_samples": self.eval_samples >= 5, "parallel": self.parallel >= 1, "threads": self.threads >= 1,
            "workers": self.workers >= 1, "save_every": self.save_every >= 1,
        }  # fmt: skip
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"rl-estimators: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}"
                             " (eval_samples must be >= 5 for pass@5)")  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """The values that decide the numbers (where and how it runs left out)."""
        values = dataclasses.asdict(self)
        for key in ("out", "parallel", "save_every", "base_threads", "progress"):
            values.pop(key)
        return json.loads(json.dumps(values))


# ------------------------------------------------------------------------------------------------ base
def _base_config(cfg: RLEstimatorsConfig) -> QuickstartConfig:
    """The QuickstartConfig of OUT/base: the recipe's seed and device, then the `base` values."""
    from codefoundry.recipes.quickstart import QuickstartConfig

    fields = {f.name for f in dataclasses.fields(QuickstartConfig)}
    unknown = sorted(set(cfg.base) - fields)
    if unknown:
        raise ValueError(f"rl-estimators: base: unknown QuickstartConfig key {unknown[0]!r}")
    values = {"seed": cfg.seed, "threads": cfg.base_threads, "device": cfg.device, **cfg.base}
    return QuickstartConfig(**{**values, "out": str(Path(cfg.out) / "base"), "progress": False})


def build_base(cfg: RLEstimatorsConfig) -> Path:
    """The quickstart's data, pretrain and SFT stages in OUT/base (each skipped once it has its done
    marker), or the finished run `base_run`; returns the run directory that holds `sft/checkpoint`."""
    from codefoundry.recipes import chain
    from codefoundry.recipes.quickstart import STAGES, plan

    if cfg.base_run:
        root = Path(cfg.base_run)
        missing = [s for s in BASE_STAGES if not (root / s / chain.DONE).is_file()]
        if missing:
            raise ValueError(
                f"{root}: base_run has no finished {missing[0]!r} stage ({missing[0]}/{chain.DONE})"
            )
        return root
    import torch

    qcfg = _base_config(cfg)
    root, the_plan = Path(qcfg.out), plan(qcfg)
    # The quickstart's own record of its settings: OUT/base is then a quickstart run that another
    # recipe can reuse as `base_run` (and `codefoundry quickstart --out OUT/base` could finish).
    stamp = {"config": qcfg.identity(), "plan": dataclasses.asdict(the_plan)}
    if not (root / "quickstart.json").is_file():
        _write_json(root / "quickstart.json", json.loads(json.dumps(stamp)))
    torch.set_num_threads(qcfg.threads)
    done: dict[str, dict[str, Any]] = {}
    for name, fn in STAGES:
        if name not in BASE_STAGES:
            continue
        marker = root / name / chain.DONE
        if not marker.is_file():
            started = time.perf_counter()
            ctx = chain.StageContext(qcfg, the_plan, root, name, dict(done))
            summary = fn(ctx)
            _write_json(
                marker, {"stage": name, "summary": summary, "wall_s": round(time.perf_counter() - started, 2)}
            )
        done[name] = json.loads(marker.read_text(encoding="utf-8"))["summary"]
    return root


def _rl_problems(cfg: RLEstimatorsConfig, base: Path) -> Path:
    """The RL training problems (the parametric half the base's SFT did not see) as JSONL, written once."""
    from codefoundry.recipes.chain import parametric_halves

    path = Path(cfg.out) / "rl_problems.jsonl"
    if path.is_file():
        return path
    if cfg.base_run:
        stamp = base / "quickstart.json"
        if not stamp.is_file():
            raise ValueError(
                f"{stamp}: base_run has no quickstart.json (which SFT problems it used is unknown)"
            )
        n_sft = json.loads(stamp.read_text(encoding="utf-8"))["config"]["sft_parametric"]
    else:
        n_sft = _base_config(cfg).sft_parametric
    rows = [{"task_id": p.task_id, "prompt": p.prompt, "entry_point": p.entry_point, "tests": list(p.tests),
             "canonical_solution": p.canonical_solution} for p in parametric_halves(n_sft)[1]]  # fmt: skip
    _write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------------ arms
def run_arm(cfg: RLEstimatorsConfig, name: str, policy: str, problems: str) -> dict[str, Any]:
    """One arm in `OUT/arms/<name>/`: RL with estimator `name` (or none for "sft"), then the final
    held-out evaluation; returns (and writes to done.json) its row of the table."""
    import torch

    torch.set_num_threads(cfg.threads)
    arm = Path(cfg.out) / "arms" / name
    marker = arm / "done.json"
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))
    row: dict[str, Any] = {"arm": name}
    checkpoint = policy
    if name != "sft":
        summary = _train(cfg, name, policy, problems, arm / "rl")
        checkpoint = summary["checkpoint"]
        row.update(_curve_facts(arm / "rl" / "metrics.jsonl"))
        row["rl_wall_s"] = round(summary["elapsed_s"], 1)
    row.update(_final_eval(cfg, checkpoint, arm / "eval"))
    row["wall_s"] = round(row.get("rl_wall_s", 0.0) + row["eval_s"], 1)  # RL time counts its resumed parts
    row = json.loads(json.dumps(row))  # as a rerun reads it back (tuples as lists)
    _write_json(marker, row)
    return row


def _train(cfg: RLEstimatorsConfig, estimator: str, policy: str, problems: str, out: Path) -> dict[str, Any]:
    from codefoundry.train.rl.trainer import RLConfig, rl
    from codefoundry.train.trainer_state import find_checkpoint

    summary_path = out / "summary.json"
    if summary_path.is_file():  # trained, but killed before its evaluation finished
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if summary.get("step") == cfg.steps:
            return summary
    rcfg = RLConfig(
        policy=policy, out=str(out), task=problems, eval_task="parametric", eval_problems=cfg.curve_problems,
        eval_every=cfg.eval_every, eval_samples=cfg.curve_samples, eval_temperature=cfg.temperature,
        estimator=estimator, group_size=cfg.group_size, prompts_per_step=cfg.prompts_per_step,
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, lr=cfg.lr, steps=cfg.steps,
        kl_coef=cfg.kl_coef, seed=cfg.seed, reward_workers=cfg.workers, save_every=cfg.save_every,
        resume=find_checkpoint(out) is not None, device=cfg.device, threads=cfg.threads, progress=False,
        tensorboard=False,
    )  # fmt: skip
    return rl(rcfg)


def _curve_facts(metrics: Path) -> dict[str, Any]:
    """The held-out curve (step, pass@1), its argmax step ("steps to best", the first one on ties) and
    the mean response length of the RL rollouts in tokens."""
    from codefoundry.train.metrics import read_metrics

    records = read_metrics(metrics)
    evals = {int(r["step"]): r["pass@1"] for r in records if "pass@1" in r}  # a resumed eval overwrites
    curve = sorted(evals.items())
    best = max(curve, key=lambda point: point[1]) if curve else (None, None)
    train = [r["response_len_mean"] for r in records if "response_len_mean" in r]
    return {"curve": curve, "steps_to_best": best[0], "curve_best": best[1],
            "rl_response_tokens": sum(train) / len(train) if train else None}  # fmt: skip


def _final_eval(cfg: RLEstimatorsConfig, checkpoint: str, out: Path) -> dict[str, Any]:
    """pass@1 and pass@5 with 95% CIs on the held-out parametric problems, per-problem pass rates (for
    paired differences) and the mean completion length in tokens of the checkpoint's tokenizer."""
    from codefoundry.eval import EvalConfig, run_eval
    from codefoundry.models import tokenizer as cft
    from codefoundry.train.metrics import read_metrics

    started = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)  # a cut-short evaluation starts over (same samples as unbroken)
    ecfg = EvalConfig(
        out=str(out), task="parametric", model=f"cf:{checkpoint}", n=cfg.eval_samples, ks=(1, 5),
        temperature=cfg.temperature, max_tokens=cfg.max_new_tokens, seed=cfg.seed, workers=cfg.workers,
        limit=cfg.eval_problems, progress=False,
    )  # fmt: skip
    res = run_eval(ecfg)
    ci = res["pass_at_k_ci95"]
    rows = read_metrics(out / "results.jsonl")
    per: dict[str, list[bool]] = {}
    for r in rows:
        per.setdefault(r["task_id"], []).append(bool(r["passed"]))
    tok = cft.load(checkpoint)
    lengths = [len(tok.encode(r["completion"]).ids) for r in rows]
    return {
        "pass@1": ci["pass@1"]["mean"], "pass@1_low": ci["pass@1"]["low"], "pass@1_high": ci["pass@1"]["high"],
        "pass@5": ci["pass@5"]["mean"], "pass@5_low": ci["pass@5"]["low"], "pass@5_high": ci["pass@5"]["high"],
        "per_problem": {t: sum(v) / len(v) for t, v in per.items()}, "problems": len(per),
        "samples": len(rows), "response_tokens": sum(lengths) / len(lengths) if lengths else None,
        "eval_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------- driver
def run_rl_estimators(cfg: RLEstimatorsConfig, *, command: str = "") -> dict[str, Any]:
    """Run (or finish) the comparison in `cfg.out`; returns the results (also OUT/results.json) after
    writing the table (OUT/rl_estimators.md, .csv) and the plot (OUT/rl_estimators.png)."""
    from codefoundry.recipes import chain

    root = Path(cfg.out)
    _check_run_dir(root, cfg)
    load_start = os.getloadavg()
    started = time.perf_counter()
    base = build_base(cfg)
    policy = str(chain.checkpoint_of(base, "sft"))
    problems = str(_rl_problems(cfg, base))
    arms = ["sft", *sorted(cfg.estimators, key=lambda e: e != "gae")]  # PPO is the slowest: start it first
    rows = _run_arms(cfg, arms, policy, problems)
    results = {
        "title": "RL advantage estimators on parametric problems (codefoundry recipe rl-estimators)",
        "command": command or " ".join(sys.argv),
        "config": dataclasses.asdict(cfg),
        "base": str(base),
        "rows": [rows["sft"], *(rows[e] for e in cfg.estimators)],
        "wall_s": round(time.perf_counter() - started, 1),
        "load": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "cpus": os.cpu_count(),
    }
    _add_deltas(results["rows"], seed=cfg.seed)
    _write_json(root / "results.json", results)
    results["outputs"] = [str(p) for p in write_outputs(results, root / NAME)]
    return results


def _run_arms(
    cfg: RLEstimatorsConfig, arms: list[str], policy: str, problems: str
) -> dict[str, dict[str, Any]]:
    """Every arm, `cfg.parallel` at a time, each in a fresh process (its torch thread count is its own);
    a bar counts finished arms (cached ones included)."""
    import multiprocessing

    from tqdm.auto import tqdm

    rows: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(arms), desc="rl-estimators arms", unit="arm", disable=not cfg.progress) as bar:
        if cfg.parallel == 1:
            for arm in arms:
                rows[arm] = run_arm(cfg, arm, policy, problems)
                bar.set_postfix_str(f"{arm} done")
                bar.update()
            return rows
        with ProcessPoolExecutor(cfg.parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_arm, cfg, arm, policy, problems): arm for arm in arms}
            for future in as_completed(futures):
                rows[futures[future]] = future.result()
                bar.set_postfix_str(f"{futures[future]} done")
                bar.update()
    return rows


def _add_deltas(rows: list[dict[str, Any]], *, seed: int) -> None:
    """Each RL row's pass@1 minus the SFT row's, as the mean of per-problem differences over the same
    problems with a percentile-bootstrap 95% CI (paired, so tighter than two separate CIs)."""
    from codefoundry.tasks.metrics import bootstrap_ci

    sft = rows[0]["per_problem"]
    for row in rows[1:]:
        common = sorted(set(sft) & set(row["per_problem"]))
        diffs = [row["per_problem"][t] - sft[t] for t in common]
        mean, low, high = bootstrap_ci(diffs, seed=seed) if diffs else (None, None, None)
        row.update({"delta_pass@1": mean, "delta_low": low, "delta_high": high})


def _check_run_dir(root: Path, cfg: RLEstimatorsConfig) -> None:
    """Record the config in OUT/recipe.json, or check that a rerun uses the same result-deciding values."""
    stamp = root / "recipe.json"
    mine = {"recipe": "rl-estimators", "config": cfg.identity()}
    if stamp.is_file():
        theirs = json.loads(stamp.read_text(encoding="utf-8"))
        if theirs != mine:
            old = theirs.get("config", {})
            diff = sorted(k for k in mine["config"] if old.get(k) != mine["config"][k])
            raise ValueError(f"{root}: holds an rl-estimators run with other settings ({', '.join(diff) or 'recipe'});"
                             " rerun with the same ones to resume, or pick another --out")  # fmt: skip
        return
    _write_json(stamp, mine)


def _write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- outputs
COLUMNS = ("estimator", "pass@1 (95% CI)", "pass@5 (95% CI)", "Δ pass@1 vs SFT (95% CI)", "steps to best",
           "mean response length (tokens)", "wall time")  # fmt: skip
CSV_COLUMNS = ("estimator", "pass@1", "pass@1_low", "pass@1_high", "pass@5", "pass@5_low", "pass@5_high",
               "delta_pass@1", "delta_low", "delta_high", "steps_to_best", "curve_best", "response_tokens",
               "rl_response_tokens", "wall_s", "problems", "samples")  # fmt: skip


def write_outputs(results: dict[str, Any], stem: Path) -> list[Path]:
    """`stem`.md (the table with the command on top), `stem`.csv (the same numbers, unrounded) and
    `stem`.png (held-out pass@1 over RL steps, one line per estimator)."""
    md, csv_path, png = stem.with_suffix(".md"), stem.with_suffix(".csv"), stem.with_suffix(".png")
    _write_text(md, markdown(results, plot_name=png.name))
    _write_text(csv_path, _csv(results["rows"]))
    plot_curves(results["rows"], png)
    return [md, csv_path, png]


def _ci(value: float | None, low: float | None, high: float | None, *, sign: bool = False) -> str:
    if value is None:
        return "-"
    fmt = "+.3f" if sign else ".3f"
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def markdown(results: dict[str, Any], *, plot_name: str = "") -> str:
    """The Markdown table in the layout of the survey's estimator comparison, with the command, the
    settings that make it comparable, and the machine load on top."""
    cfg = results["config"]
    lines = [
        "# RL advantage estimators (laptop scale)" if cfg["device"] == "cpu" else "# RL advantage estimators",
        "", f"Command: `{results['command']}`", "",
        _base_line(cfg, results["base"]),
        "",
        f"Every arm starts from that SFT checkpoint with seed {cfg['seed']}, "
        f"{cfg['steps']} RL steps x {cfg['prompts_per_step']} prompts x {cfg['group_size']} samples, "
        f"lr {cfg['lr']}, responses up to {cfg['max_new_tokens']} tokens at T={cfg['temperature']}. "
        f"pass@k: {cfg['eval_problems']} parametric held-out problems x {cfg['eval_samples']} samples "
        f"(unbiased estimator, 95% percentile-bootstrap CI over problems; Δ is paired over the same problems). "
        f"Steps to best: argmax of held-out pass@1 ({cfg['curve_problems']} problems x {cfg['curve_samples']} "
        f"samples) evaluated every {cfg['eval_every']} steps, step 0 = the SFT model. Response length: "
        "tokens per completion in the final evaluation. Wall time: RL (with its curve evaluations) plus "
        f"the final evaluation, {cfg['parallel']} arm(s) at a time, {cfg['threads']} torch thread(s) each.",
        "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
    ]  # fmt: skip
    for row in results["rows"]:
        name = LABELS.get(row["arm"], row["arm"])
        cells = [name, _ci(row["pass@1"], row["pass@1_low"], row["pass@1_high"]),
                 _ci(row["pass@5"], row["pass@5_low"], row["pass@5_high"]),
                 _ci(row.get("delta_pass@1"), row.get("delta_low"), row.get("delta_high"), sign=True),
                 "-" if row.get("steps_to_best") is None else str(row["steps_to_best"]),
                 f"{row['response_tokens']:.1f}", _minutes(row["wall_s"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    load = results["load"]
    lines += ["", f"Total wall time {_minutes(results['wall_s'])} on {results['cpus']} CPUs; load average "
              f"(1, 5, 15 min) {load['start']} at the start, {load['end']} at the end."]  # fmt: skip
    if plot_name:
        lines += ["", f"![held-out pass@1 over RL steps]({plot_name})"]
    return "\n".join(lines) + "\n"


def _base_line(cfg: dict[str, Any], base: str) -> str:
    """Where the base model came from, in one sentence."""
    if cfg["base_run"]:
        stamp = Path(base) / "quickstart.json"
        settings = json.loads(stamp.read_text(encoding="utf-8"))["config"] if stamp.is_file() else {}
        keys = ("minutes", "seed", "size", "sft_parametric")
        shown = ", ".join(f"{k}={settings[k]}" for k in keys if k in settings)
        return (f"Base model: the SFT checkpoint of the finished quickstart run `{base}` ({shown}; data -> "
                "pretrain -> SFT of `codefoundry quickstart`).")  # fmt: skip
    return (f"Base model: built in `{base}` by the quickstart's data -> pretrain -> SFT stages with "
            f"{cfg['base'] or 'its defaults'}.")  # fmt: skip


def _csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = {**row, "estimator": row["arm"]}
        writer.writerow(["" if values.get(c) is None else values[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def plot_curves(rows: list[dict[str, Any]], png: Path) -> Path:
    """Held-out pass@1 over RL steps, one line per estimator; the SFT model's final pass@1 as a dashed
    line (its curve point at step 0 uses fewer problems and samples)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, row in enumerate(rows):
        if row["arm"] == "sft":
            ax.axhline(row["pass@1"], color="black", linestyle="--", label="SFT (final eval)")
            continue
        steps, values = zip(*row["curve"], strict=True) if row.get("curve") else ((), ())
        ax.plot(
            steps,
            values,
            marker="o",
            markersize=3,
            color=f"C{i % 10}",
            label=LABELS.get(row["arm"], row["arm"]),
        )
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out pass@1")
    ax.set_title("Held-out parametric pass@1 during RL, per advantage estimator")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return png
