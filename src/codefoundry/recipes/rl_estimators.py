"""`codefoundry recipe rl-estimators`, `rl-rollouts` and `rl-length`: the survey's RL comparisons (its
section 8.4 tables: best step, Pass@1, Pass@5) at laptop (or GPU) scale.

One base model, several RL arms that differ in one setting only:

- `rl-estimators`: the advantage estimator (`estimators`);
- `rl-rollouts`: rollouts per prompt, i.e. the group size (`rollouts`), prompts per step fixed, so an arm
  with more rollouts samples (and grades) proportionally more per step, as in the survey;
- `rl-length`: the maximum response length in RL (`lengths`); every arm is evaluated with the same budget
  (`eval_max_new_tokens`), so an arm trained on short responses is not cut short at test time.

1. base: the quickstart's data -> pretrain -> SFT stages (`recipes.common.build_base`), run once in
   `OUT/base/` with `base` as QuickstartConfig overrides, or taken read-only from a finished quickstart
   run (`base_run`).
2. one arm per value: `codefoundry rl` from the same SFT checkpoint, with the same seed, steps, learning
   rate, training problems (the parametric half SFT did not see) and held-out curve (pass@1 on the first
   `curve_problems` parametric held-out problems every `eval_every` steps); then pass@1 and pass@5 on
   `eval_problems` held-out problems x `eval_samples` samples at `temperature` through the eval harness
   (unbiased pass@k, percentile-bootstrap 95% CI over problems). The SFT model gets the same final
   evaluation as the baseline row.
3. `OUT/<recipe>.md` / `.csv` / `.png` (held-out pass@1 over RL steps per arm) and `OUT/results.json`.

Caching and resume: an arm that finished wrote `OUT/arms/<arm>/done.json` and a rerun skips it; an arm
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from codefoundry.recipes import common

__all__ = ["ESTIMATORS", "RLEstimatorsConfig", "RLLengthConfig", "RLRolloutsConfig", "run_rl_estimators"]

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_passk", "gae")
LABELS = {"gae": "gae (PPO)", "sft": "SFT (no RL)"}


class Arm(NamedTuple):
    """One RL run of a comparison: its directory name, its label in the table, and the RL settings it
    changes (keys of `ArmSettings`)."""

    key: str
    label: str
    changes: dict[str, Any]


@dataclass(frozen=True)
class RLArmsConfig:
    """What every RL comparison shares; a subclass names the setting that varies (`arms`)."""

    RECIPE: ClassVar[str] = ""
    AXIS: ClassVar[str] = ""  # the first column of the table

    out: str = "runs/rl"
    seed: int = 0
    # the base model: QuickstartConfig overrides for OUT/base, or an existing quickstart run to reuse
    base: dict[str, Any] = field(default_factory=dict)
    base_run: str = ""
    # each RL arm (the quickstart's RL settings unless changed; an arm overrides the one it varies)
    estimator: str = "reinforce_pp_baseline"  # the survey's default for its length and rollout studies
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
    eval_max_new_tokens: int = 0  # response budget of every evaluation (curve and final); 0 = max_new_tokens
    # how it runs (none of these changes a number)
    parallel: int = 2  # arms at once, each in its own process
    threads: int = 1  # torch threads per arm (fixed: it changes float sums)
    workers: int = 1  # sandbox workers per arm
    base_threads: int = 2  # torch threads of the base stages (run alone, before the arms)
    save_every: int = 8
    device: str = "cpu"
    progress: bool = True  # one bar over the arms (each arm's RL also logs OUT/arms/<arm>/rl/metrics.jsonl)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", dict(self.base))
        checks = {
            "estimator": self.estimator in ESTIMATORS, "steps": self.steps >= 1, "group_size": self.group_size >= 2,
            "max_new_tokens": self.max_new_tokens >= 1, "eval_max_new_tokens": self.eval_max_new_tokens >= 0,
            "eval_every": self.eval_every >= 1, "curve_problems": self.curve_problems >= 1,
            "eval_problems": self.eval_problems >= 1, "eval_samples": self.eval_samples >= 5,
            "parallel": self.parallel >= 1, "threads": self.threads >= 1, "workers": self.workers >= 1,
            "save_every": self.save_every >= 1, **self._axis_checks(),
        }  # fmt: skip
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"{self.RECIPE}: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}"
                             " (eval_samples must be >= 5 for pass@5)")  # fmt: skip

    def _axis_checks(self) -> dict[str, bool]:
        return {}

    def arms(self) -> list[Arm]:
        raise NotImplementedError  # every recipe class names its arms

    def eval_tokens(self) -> int:
        return self.eval_max_new_tokens or self.max_new_tokens

    def identity(self) -> dict[str, Any]:
        """The values that decide the numbers (where and how it runs left out)."""
        return common.config_identity(self, ("out", "parallel", "save_every", "base_threads", "progress"))


def _distinct(values: tuple) -> bool:
    return bool(values) and len(set(values)) == len(values)


@dataclass(frozen=True)
class RLEstimatorsConfig(RLArmsConfig):
    """`rl-estimators`: one arm per advantage estimator (`estimator` is unused: each arm sets its own)."""

    RECIPE: ClassVar[str] = "rl-estimators"
    AXIS: ClassVar[str] = "estimator"

    out: str = "runs/rl-estimators"
    estimators: tuple[str, ...] = ESTIMATORS

    def _axis_checks(self) -> dict[str, bool]:
        object.__setattr__(self, "estimators", tuple(self.estimators))
        return {"estimators": _distinct(self.estimators) and all(e in ESTIMATORS for e in self.estimators)}

    def arms(self) -> list[Arm]:
        return [Arm(e, LABELS.get(e, e), {"estimator": e}) for e in self.estimators]


@dataclass(frozen=True)
class RLRolloutsConfig(RLArmsConfig):
    """`rl-rollouts`: one arm per group size (`group_size` is unused: each arm sets its own)."""

    RECIPE: ClassVar[str] = "rl-rollouts"
    AXIS: ClassVar[str] = "rollouts per prompt"

    out: str = "runs/rl-rollouts"
    rollouts: tuple[int, ...] = (2, 4, 8, 16)

    def _axis_checks(self) -> dict[str, bool]:
        object.__setattr__(self, "rollouts", tuple(self.rollouts))
        return {"rollouts": _distinct(self.rollouts) and all(n >= 2 for n in self.rollouts)}

    def arms(self) -> list[Arm]:
        return [Arm(f"n{n}", f"N = {n}", {"group_size": n}) for n in self.rollouts]


@dataclass(frozen=True)
class RLLengthConfig(RLArmsConfig):
    """`rl-length`: one arm per maximum RL response length (`max_new_tokens` is unused except as the
    evaluation budget when `eval_max_new_tokens` is 0: set that to at least the largest length)."""

    RECIPE: ClassVar[str] = "rl-length"
    AXIS: ClassVar[str] = "max response (tokens)"

    out: str = "runs/rl-length"
    lengths: tuple[int, ...] = (8, 16, 32, 64)
    eval_max_new_tokens: int = 64

    def _axis_checks(self) -> dict[str, bool]:
        object.__setattr__(self, "lengths", tuple(self.lengths))
        return {"lengths": _distinct(self.lengths) and all(n >= 1 for n in self.lengths)}

    def arms(self) -> list[Arm]:
        return [Arm(f"len{n}", str(n), {"max_new_tokens": n}) for n in self.lengths]


class ArmSettings(NamedTuple):
    """The RL settings of one arm: the config's, with the arm's changes."""

    estimator: str
    group_size: int
    max_new_tokens: int

    @classmethod
    def of(cls, cfg: RLArmsConfig, arm: Arm | None) -> ArmSettings:
        mine = cls(cfg.estimator, cfg.group_size, cfg.max_new_tokens)
        return mine._replace(**arm.changes) if arm is not None else mine

    def cost(self) -> float:
        """A rough relative cost, to start the slowest arms first (PPO also trains a value head)."""
        return self.group_size * self.max_new_tokens * (1.5 if self.estimator == "gae" else 1.0)


# ------------------------------------------------------------------------------------------------ base
def _base_config(cfg: RLArmsConfig):  # -> QuickstartConfig
    return common.base_config(cfg.out, cfg.base, seed=cfg.seed, threads=cfg.base_threads, device=cfg.device,
                              recipe=cfg.RECIPE)  # fmt: skip


def build_base(cfg: RLArmsConfig) -> Path:
    """The run directory holding the SFT checkpoint: OUT/base built (or finished) now, or `base_run`."""
    return common.build_base(None if cfg.base_run else _base_config(cfg), cfg.base_run)


def _rl_problems(cfg: RLArmsConfig, base: Path) -> Path:
    """The RL training problems (the parametric half the base's SFT did not see) as JSONL, written once."""
    from codefoundry.recipes.chain import parametric_halves

    path = Path(cfg.out) / "rl_problems.jsonl"
    if path.is_file():
        return path
    n_sft = common.sft_problem_count(base, None if cfg.base_run else _base_config(cfg))
    rows = [{"task_id": p.task_id, "prompt": p.prompt, "entry_point": p.entry_point, "tests": list(p.tests),
             "canonical_solution": p.canonical_solution} for p in parametric_halves(n_sft)[1]]  # fmt: skip
    common.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------------ arms
def run_arm(cfg: RLArmsConfig, arm: Arm | None, policy: str, problems: str) -> dict[str, Any]:
    """One arm in `OUT/arms/<arm.key>/`: RL with the arm's settings (None: no RL, the SFT model), then the
    final held-out evaluation; returns (and writes to done.json) its row of the table."""
    import torch

    torch.set_num_threads(cfg.threads)
    key = arm.key if arm is not None else "sft"
    out = Path(cfg.out) / "arms" / key
    marker = out / "done.json"
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))
    row: dict[str, Any] = {"arm": key, "label": arm.label if arm is not None else LABELS["sft"]}
    checkpoint = policy
    if arm is not None:
        summary = _train(cfg, ArmSettings.of(cfg, arm), policy, problems, out / "rl")
        checkpoint = summary["checkpoint"]
        row.update(_curve_facts(out / "rl" / "metrics.jsonl"))
        row["rl_wall_s"] = round(summary["elapsed_s"], 1)
    row.update(_final_eval(cfg, checkpoint, out / "eval"))
    row["wall_s"] = round(row.get("rl_wall_s", 0.0) + row["eval_s"], 1)  # RL time counts its resumed parts
    row = json.loads(json.dumps(row))  # as a rerun reads it back (tuples as lists)
    common.write_json(marker, row)
    return row


def _train(cfg: RLArmsConfig, arm: ArmSettings, policy: str, problems: str, out: Path) -> dict[str, Any]:
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
        eval_max_new_tokens=cfg.eval_tokens(), estimator=arm.estimator, group_size=arm.group_size,
        prompts_per_step=cfg.prompts_per_step, max_new_tokens=arm.max_new_tokens, temperature=cfg.temperature,
        lr=cfg.lr, steps=cfg.steps, kl_coef=cfg.kl_coef, seed=cfg.seed, reward_workers=cfg.workers,
        save_every=cfg.save_every, resume=find_checkpoint(out) is not None, device=cfg.device,
        threads=cfg.threads, progress=False, tensorboard=False,
    )  # fmt: skip
    return rl(rcfg)


def _curve_facts(metrics: Path) -> dict[str, Any]:
    """The held-out curve (step, pass@1), its argmax step ("steps to best", the first one on ties), the
    mean response length of the RL rollouts in tokens and the fraction of them cut at the length limit."""
    from codefoundry.train.metrics import read_metrics

    records = read_metrics(metrics)
    evals = {int(r["step"]): r["pass@1"] for r in records if "pass@1" in r}  # a resumed eval overwrites
    curve = sorted(evals.items())
    best = max(curve, key=lambda point: point[1]) if curve else (None, None)
    train = [r for r in records if "response_len_mean" in r]
    truncated = [r["truncated_frac"] for r in train if "truncated_frac" in r]
    return {"curve": curve, "steps_to_best": best[0], "curve_best": best[1],
            "rl_response_tokens": sum(r["response_len_mean"] for r in train) / len(train) if train else None,
            "rl_truncated": sum(truncated) / len(truncated) if truncated else None}  # fmt: skip


def _final_eval(cfg: RLArmsConfig, checkpoint: str, out: Path) -> dict[str, Any]:
    """pass@1 and pass@5 with 95% CIs on the held-out parametric problems, per-problem pass rates (for
    paired differences) and the mean completion length in tokens of the checkpoint's tokenizer."""
    from codefoundry.eval import EvalConfig, run_eval
    from codefoundry.models import tokenizer as cft
    from codefoundry.train.metrics import read_metrics

    started = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)  # a cut-short evaluation starts over (same samples as unbroken)
    ecfg = EvalConfig(
        out=str(out), task="parametric", model=f"cf:{checkpoint}", n=cfg.eval_samples, ks=(1, 5),
        temperature=cfg.temperature, max_tokens=cfg.eval_tokens(), seed=cfg.seed, workers=cfg.workers,
        limit=cfg.eval_problems, progress=False,
    )  # fmt: skip
    res = run_eval(ecfg)
    ci = res["pass_at_k_ci95"]
    rows = read_metrics(out / "results.jsonl")
    per = common.pass_rates(rows)
    tok = cft.load(checkpoint)
    lengths = [len(tok.encode(r["completion"]).ids) for r in rows]
    return {
        "pass@1": ci["pass@1"]["mean"], "pass@1_low": ci["pass@1"]["low"], "pass@1_high": ci["pass@1"]["high"],
        "pass@5": ci["pass@5"]["mean"], "pass@5_low": ci["pass@5"]["low"], "pass@5_high": ci["pass@5"]["high"],
        "per_problem": per, "problems": len(per),
        "samples": len(rows), "response_tokens": sum(lengths) / len(lengths) if lengths else None,
        "eval_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------- driver
def run_rl_estimators(cfg: RLArmsConfig, *, command: str = "") -> dict[str, Any]:
    """Run (or finish) the comparison `cfg` describes in `cfg.out`; returns the results (also
    OUT/results.json) after writing the table (OUT/<recipe>.md, .csv) and the plot (OUT/<recipe>.png)."""
    from codefoundry.recipes import chain

    root = Path(cfg.out)
    common.check_run_dir(root, cfg.RECIPE, cfg.identity())
    load_start = os.getloadavg()
    started = time.perf_counter()
    base = build_base(cfg)
    policy = str(chain.checkpoint_of(base, "sft"))
    problems = str(_rl_problems(cfg, base))
    arms = cfg.arms()
    rows = _run_arms(cfg, arms, policy, problems)
    results = {
        "recipe": cfg.RECIPE,
        "axis": cfg.AXIS,
        "title": f"RL comparison: {cfg.AXIS} on parametric problems (codefoundry recipe {cfg.RECIPE})",
        "command": command or " ".join(sys.argv),
        "config": dataclasses.asdict(cfg),
        "base": str(base),
        "base_line": common.base_sentence(base, reused=bool(cfg.base_run), overrides=cfg.base),
        "rows": [rows["sft"], *(rows[a.key] for a in arms)],
        "wall_s": round(time.perf_counter() - started, 1),
        "load": common.load_text(load_start),
        "cpus": os.cpu_count(),
    }
    _add_deltas(results["rows"], seed=cfg.seed)
    common.write_json(root / "results.json", results)
    results["outputs"] = [str(p) for p in write_outputs(results, root / cfg.RECIPE.replace("-", "_"))]
    return results


def _run_arms(cfg: RLArmsConfig, arms: list[Arm], policy: str, problems: str) -> dict[str, dict[str, Any]]:
    """The SFT row and every arm (the costliest first), `cfg.parallel` at a time."""
    jobs: list[Arm | None] = [None, *sorted(arms, key=lambda a: -ArmSettings.of(cfg, a).cost())]
    named = [(job.key if job is not None else "sft", (cfg, job, policy, problems)) for job in jobs]
    return common.run_cells(
        run_arm, named, parallel=cfg.parallel, desc=f"{cfg.RECIPE} arms", progress=cfg.progress
    )


def _add_deltas(rows: list[dict[str, Any]], *, seed: int) -> None:
    """Each RL row's pass@1 minus the SFT row's, paired over the same problems (`common.paired_delta`)."""
    for row in rows[1:]:
        mean, low, high = common.paired_delta(rows[0]["per_problem"], row["per_problem"], seed=seed)
        row.update({"delta_pass@1": mean, "delta_low": low, "delta_high": high})


# ---------------------------------------------------------------------------------------------- outputs
CSV_COLUMNS = ("arm", "label", "pass@1", "pass@1_low", "pass@1_high", "pass@5", "pass@5_low", "pass@5_high",
               "delta_pass@1", "delta_low", "delta_high", "steps_to_best", "curve_best", "response_tokens",
               "rl_response_tokens", "rl_truncated", "wall_s", "problems", "samples")  # fmt: skip


def write_outputs(results: dict[str, Any], stem: Path) -> list[Path]:
    """`stem`.md (the table with the command on top), `stem`.csv (the same numbers, unrounded) and
    `stem`.png (held-out pass@1 over RL steps, one line per arm)."""
    md, csv_path, png = stem.with_suffix(".md"), stem.with_suffix(".csv"), stem.with_suffix(".png")
    common.write_text(md, markdown(results, plot_name=png.name))
    common.write_text(csv_path, common.csv_text(CSV_COLUMNS, results["rows"]))
    plot_curves(results, png)
    return [md, csv_path, png]


def _setup(results: dict[str, Any]) -> str:
    """The paragraph under the table's command: what every arm shares and how each column is measured."""
    cfg, axis = results["config"], results["axis"]
    varies = {
        "estimator": "estimator",
        "rollouts per prompt": "group_size",
        "max response (tokens)": "max_new_tokens",
    }
    shared = {
        "estimator": f"estimator {cfg['estimator']}",
        "group_size": f"{cfg['group_size']} samples per prompt",
        "max_new_tokens": f"responses up to {cfg['max_new_tokens']} tokens",
    }
    shared.pop(varies[axis])
    eval_tokens = cfg["eval_max_new_tokens"] or cfg["max_new_tokens"]
    return (
        f"Every arm starts from that SFT checkpoint with seed {cfg['seed']}, {cfg['steps']} RL steps x "
        f"{cfg['prompts_per_step']} prompts, {', '.join(shared.values())}, lr {cfg['lr']}, sampling at "
        f"T={cfg['temperature']}; only the {axis} differs. pass@k: {cfg['eval_problems']} parametric held-out "
        f"problems x {cfg['eval_samples']} samples, up to {eval_tokens} tokens (unbiased estimator, 95% "
        "percentile-bootstrap CI over problems; Δ is paired over the same problems). Steps to best: argmax of "
        f"held-out pass@1 ({cfg['curve_problems']} problems x {cfg['curve_samples']} samples) evaluated every "
        f"{cfg['eval_every']} steps, step 0 = the SFT model. Response length: tokens per completion in the "
        "final evaluation; truncated: the fraction of RL rollouts cut at the length limit. Wall time: RL (with "
        f"its curve evaluations) plus the final evaluation, {cfg['parallel']} arm(s) at a time, "
        f"{cfg['threads']} torch thread(s) each."
    )


def markdown(results: dict[str, Any], *, plot_name: str = "") -> str:
    """The Markdown table in the layout of the survey's RL comparisons, with the command, the settings
    that make it comparable, and the machine load on top."""
    cfg = results["config"]
    scale = " (laptop scale)" if cfg["device"] == "cpu" else ""
    columns = (results["axis"], "pass@1 (95% CI)", "pass@5 (95% CI)", "Δ pass@1 vs SFT (95% CI)", "steps to best",
               "mean response length (tokens)", "RL rollouts truncated", "wall time")  # fmt: skip
    lines = [
        f"# RL comparison: {results['axis']}{scale}", "", f"Command: `{results['command']}`", "",
        results["base_line"], "", _setup(results), "",
        "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
    ]  # fmt: skip
    for row in results["rows"]:
        truncated = row.get("rl_truncated")
        cells = [row["label"], common.ci_text(row["pass@1"], row["pass@1_low"], row["pass@1_high"]),
                 common.ci_text(row["pass@5"], row["pass@5_low"], row["pass@5_high"]),
                 common.ci_text(row.get("delta_pass@1"), row.get("delta_low"), row.get("delta_high"), sign=True),
                 "-" if row.get("steps_to_best") is None else str(row["steps_to_best"]),
                 f"{row['response_tokens']:.1f}", "-" if truncated is None else f"{truncated:.1%}",
                 common.minutes_text(row["wall_s"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", common.timing_text(results)]
    if plot_name:
        lines += ["", f"![held-out pass@1 over RL steps]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, Any], png: Path) -> Path:
    """Held-out pass@1 over RL steps, one line per arm; the SFT model's final pass@1 as a dashed line
    (its curve point at step 0 uses fewer problems and samples)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, row in enumerate(results["rows"]):
        if row["arm"] == "sft":
            ax.axhline(row["pass@1"], color="black", linestyle="--", label="SFT (final eval)")
            continue
        steps, values = zip(*row["curve"], strict=True) if row.get("curve") else ((), ())
        ax.plot(steps, values, marker="o", markersize=3, color=f"C{i % 10}", label=row["label"])
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out pass@1")
    ax.set_title(f"Held-out parametric pass@1 during RL, per {results['axis']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=results["axis"])
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return png
