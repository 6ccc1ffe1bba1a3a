"""`codefoundry quickstart`: the whole chain on embedded defaults, cached, resumable and deterministic.

data (the interpreter's standard library) -> pretrain (a tiny model, next-token + FIM) -> sft (the
built-in and parametric training problems) -> rl (GRPO on parametric problems, rewards from the sandbox)
-> eval (base, SFT and RL models on parametric held-out, built-in held-out, HumanEval and FIM) -> safety
(secrets scan of the generated code) -> `OUT/results.json` and, when `codefoundry.report` is installed,
`report.html` / `report.md`.

Caching: each stage works in `OUT/<stage>/` and, once finished, writes `OUT/<stage>/done.json` with its
summary; a rerun skips every stage that has one and resumes the first that does not through the stage's
own checkpoints (`recipes.chain`), so a kill loses at most the work since the last checkpoint (every
`save_every` steps; 1 by default). `OUT/quickstart.json` records the config and plan; a rerun with a
different one stops with a message instead of mixing two runs.

Determinism: the step counts are a fixed function of `--minutes` (`plan`): each stage's share of the
budget divided by a nominal per-step cost measured once on a 2-core machine (`NOMINAL_STEP_S`), never by
the time the run actually takes. Data order, sampling seeds and problem draws are functions of the seed
and step, so a killed and resumed run gives the same numbers as an uninterrupted one with the same seed
on the same machine (tested). Limits: the wall time of a run on another machine differs from `--minutes`
in proportion to its speed; the numbers do not.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codefoundry.recipes import chain
from codefoundry.recipes.chain import DONE, StageContext

__all__ = ["NOMINAL_STEP_S", "Plan", "QuickstartConfig", "STAGES", "plan", "quickstart"]

# Seconds one step costs at the default sizes, measured on the shared 2-core development VM (load ~3,
# 2 torch threads):
# they turn the budget into step counts, so the counts never depend on the speed of this run.
NOMINAL_STEP_S = {"pretrain": 0.4, "sft": 0.3, "rl": 1.2}
# Per-run costs of the training stages beyond their steps (held-out evaluations, final FIM check).
OVERHEAD_S = {"pretrain": 10.0, "sft": 10.0, "rl": 40.0}
# Stages whose cost does not scale with --minutes, in nominal seconds (data build, the evaluations).
FIXED_S = {"data": 25.0, "eval": 120.0, "safety": 2.0}
# How the rest of the budget is shared among the training stages: RL gets most, and SFT little enough
# that its model still fails often on unseen problems (RL learns from groups that disagree).
SHARES = {"pretrain": 0.2, "sft": 0.12, "rl": 0.68}


@dataclass(frozen=True)
class QuickstartConfig:
    out: str = "runs/quickstart"
    minutes: float = 15.0  # the budget the step counts are planned for (on a 2-core machine)
    seed: int = 0
    # data
    sources: tuple[str, ...] = ()  # () = the standard library directory (site-packages excluded)
    decontaminate: tuple[str, ...] = ("humaneval", "mbpp", "builtin")
    vocab_size: int = 4096
    tokenizer_sample_mb: int = 8
    # model and training
    size: str = "tiny"
    seq_len: int = 256
    pretrain_batch: int = 16
    pretrain_lr: float = 3e-3
    pretrain_eval_batches: int = 8
    fim_rate: float = 0.5
    sft_batch: int = 16
    sft_parametric: int = 500  # parametric training problems for SFT; RL trains on the other 500
    sft_lr: float = 1e-2  # tiny models want a high rate: 5e-3 left the SFT model at 6% sampled pass@1
    estimator: str = "grpo"
    group_size: int = 8
    prompts_per_step: int = 16
    max_new_tokens: int = 32  # RL responses and parametric evaluations
    temperature: float = 1.0  # RL sampling, and the sampled parametric pass@1
    rl_lr: float = 5e-4  # 1e-3 lowered held-out pass@1 within 40 steps; 3e-4 moved it too slowly
    kl_coef: float = 0.0
    rl_eval_problems: int = 100  # the held-out pass@1 curve during RL
    rl_eval_samples: int = 2
    # evaluation
    eval_problems: int = 200  # parametric held-out problems
    eval_samples: int = 4  # samples per problem at `temperature`
    builtin_problems: int | None = None  # None = the whole built-in held-out split
    humaneval_problems: int = 20
    fim_examples: int = 50
    long_tokens: int = 128  # generation budget for built-in, HumanEval and stdlib FIM
    # step counts: None = planned from `minutes`
    pretrain_steps: int | None = None
    sft_steps: int | None = None
    rl_steps: int | None = None
    # how it runs (none of these changes a number)
    save_every: int = 1
    workers: int = 2  # data-build processes and sandbox workers
    threads: int = 2  # torch CPU threads (fixed: the float sums depend on it)
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("sources", "decontaminate"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        checks = {
            "minutes": self.minutes > 0,
            "group_size": self.group_size >= 2,
            "eval_problems": self.eval_problems >= 1,
            "eval_samples": self.eval_samples >= 1,
            "save_every": self.save_every >= 1,
            "workers": self.workers >= 1,
            "threads": self.threads >= 1,
            **{f"{s}_steps": getattr(self, f"{s}_steps") in (None,) or getattr(self, f"{s}_steps") >= 1
               for s in SHARES},
        }  # fmt: skip
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"quickstart: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    def identity(self) -> dict[str, Any]:
        """The fields that decide the results (where and how it runs left out)."""
        values = dataclasses.asdict(self)
        for key in ("out", "workers", "progress", "save_every"):
            values.pop(key)
        return values


@dataclass(frozen=True)
class Plan:
    pretrain_steps: int
    sft_steps: int
    rl_steps: int
    nominal_s: dict[str, float]  # each stage's expected cost on the reference machine

    def steps(self, stage: str) -> int | None:
        return getattr(self, f"{stage}_steps", None)


def plan(config: QuickstartConfig) -> Plan:
    """Step counts from the budget: what the fixed stages leave is shared by `SHARES` and divided by
    `NOMINAL_STEP_S`; a step count set in the config wins. A pure function of the config."""
    budget = config.minutes * 60.0
    spare = max(0.0, budget - sum(FIXED_S.values()) - sum(OVERHEAD_S.values()))
    steps = {}
    for stage, share in SHARES.items():
        given = getattr(config, f"{stage}_steps")
        steps[stage] = given if given is not None else max(1, int(share * spare / NOMINAL_STEP_S[stage]))
    nominal = {"data": FIXED_S["data"]}
    nominal.update({s: OVERHEAD_S[s] + steps[s] * NOMINAL_STEP_S[s] for s in SHARES})
    nominal.update({"eval": FIXED_S["eval"], "safety": FIXED_S["safety"]})
    return Plan(steps["pretrain"], steps["sft"], steps["rl"], nominal)


StageFn = Callable[[StageContext], dict[str, Any]]
STAGES: tuple[tuple[str, StageFn], ...] = (
    ("data", chain.run_data),
    ("pretrain", chain.run_pretrain),
    ("sft", chain.run_sft),
    ("rl", chain.run_rl),
    ("eval", chain.run_eval_stage),
    ("safety", chain.run_safety),
)


def quickstart(config: QuickstartConfig, *, command: str = "") -> dict[str, Any]:
    """Run (or finish) the chain in `config.out`; returns the results (also `OUT/results.json`)."""
    import torch

    from codefoundry.recipes.results import build_results, render

    torch.set_num_threads(config.threads)
    root = Path(config.out)
    the_plan = plan(config)
    _check_run_dir(root, config, the_plan)
    progress = ChainProgress(root, the_plan, enabled=config.progress)
    done: dict[str, dict[str, Any]] = {}
    try:
        for name, fn in STAGES:
            marker = root / name / DONE
            if marker.is_file():
                done[name] = json.loads(marker.read_text(encoding="utf-8"))
                progress.finish_stage(name, skipped=True)
                continue
            progress.start_stage(name)
            ctx = StageContext(config, the_plan, root, name, {k: v["summary"] for k, v in done.items()},
                               report=progress.report)  # fmt: skip
            started = time.perf_counter()
            summary = fn(ctx)
            record = {"stage": name, "summary": summary, "wall_s": round(time.perf_counter() - started, 2)}
            _write_json(marker, record)
            done[name] = record
            progress.finish_stage(name)
    finally:
        progress.close()
    results = build_results(root, config, the_plan, done, command=command or " ".join(sys.argv))
    results = json.loads(json.dumps(results))  # plain JSON types (tuples as lists), as the file holds them
    _write_json(root / "results.json", results)
    render(results, root)
    return results


def _check_run_dir(root: Path, config: QuickstartConfig, the_plan: Plan) -> None:
    """Record config and plan in OUT/quickstart.json, or check that a rerun uses the same ones."""
    stamp = root / "quickstart.json"
    mine = {"config": config.identity(), "plan": dataclasses.asdict(the_plan)}
    mine = json.loads(json.dumps(mine))  # tuples as lists, as they come back from the file
    if stamp.is_file():
        theirs = json.loads(stamp.read_text(encoding="utf-8"))
        if theirs != mine:
            diff = sorted(k for k in mine["config"] if theirs.get("config", {}).get(k) != mine["config"][k])
            raise ValueError(f"{root}: holds a quickstart run with other settings ({', '.join(diff) or 'plan'});"
                             " rerun with the same ones to resume, or pick another --out")  # fmt: skip
        return
    root.mkdir(parents=True, exist_ok=True)
    _write_json(stamp, mine)


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


class ChainProgress:
    """One tqdm bar for the whole chain, in nominal seconds: finished stages count in full, the running
    one by its own fraction (training stages: the last step in their metrics.jsonl, read once a second
    by a thread; the eval stage reports its fraction itself). The postfix names the stage."""

    def __init__(self, root: Path, the_plan: Plan, *, enabled: bool) -> None:
        self.root, self.plan, self.enabled = root, the_plan, enabled
        self.total = sum(the_plan.nominal_s.values())
        self.base = 0.0  # nominal seconds of the finished stages
        self.stage: str | None = None
        self.fraction = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=round(self.total), unit="s", desc="quickstart", dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")  # fmt: skip
            self._thread = threading.Thread(target=self._watch, name="cf-quickstart-progress", daemon=True)
            self._thread.start()

    def start_stage(self, name: str) -> None:
        with self._lock:
            self.stage, self.fraction = name, 0.0
        self._draw()

    def report(self, fraction: float) -> None:
        with self._lock:
            self.fraction = min(1.0, max(self.fraction, fraction))
        self._draw()

    def finish_stage(self, name: str, *, skipped: bool = False) -> None:
        with self._lock:
            self.base += self.plan.nominal_s.get(name, 0.0)
            self.stage, self.fraction = None, 0.0
        self._draw(done=f"{name} {'cached' if skipped else 'done'}")

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            stage = self.stage
            steps = self.plan.steps(stage) if stage else None
            if steps:
                step = _last_step(self.root / stage / "metrics.jsonl")
                self.report(step / steps)
            else:
                self._draw()

    def _draw(self, done: str = "") -> None:
        if self.bar is None:
            return
        with self._lock:
            value = self.base + (
                self.plan.nominal_s.get(self.stage, 0.0) * self.fraction if self.stage else 0
            )
            self.bar.n = min(round(value), self.bar.total)
            self.bar.set_postfix_str(f"stage={self.stage or done} {100 * self.fraction:.0f}%" if self.stage
                                     else done, refresh=False)  # fmt: skip
            self.bar.refresh()

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self._thread.join()
            self.bar.close()


def _last_step(path: Path) -> int:
    """The `step` of the last complete record of a metrics file (0 when there is none yet)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError):
            continue
    return 0
