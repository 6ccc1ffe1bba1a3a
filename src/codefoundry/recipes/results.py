"""`OUT/results.json` of a quickstart run, assembled from what the stages wrote, and its rendering.

Schema (what `codefoundry.report.render_report` reads):
`{"title", "command", "config", "seed", "versions", "stages": [{"name", "wall_s", "summary"}],
"curves": [{"title", "x_label", "y_label", "series": [{"name", "x", "y"}]}],
"tables": [{"title", "columns", "rows"}], "headline": [{"metric", "value", "ci", "note"}]}`.
Every number comes from the run's own files; a value a stage did not produce is null, never invented.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codefoundry.recipes.chain import MODELS, benches

if TYPE_CHECKING:
    from codefoundry.recipes.quickstart import Plan, QuickstartConfig

TITLE = "codefoundry quickstart: data -> pretrain -> SFT -> RL -> eval"
BENCH_LABELS = {
    "parametric": "parametric held-out, sampled",
    "parametric-greedy": "parametric held-out, greedy",
    "builtin": "built-in held-out, greedy",
    "humaneval": "HumanEval (first problems), greedy",
}


def build_results(root: Path, config: QuickstartConfig, the_plan: Plan, done: dict[str, dict[str, Any]], *,
                  command: str) -> dict[str, Any]:  # fmt: skip
    evals = _eval_results(root, config)
    return {
        "title": TITLE,
        "command": command,
        "config": {**dataclasses.asdict(config), "plan": dataclasses.asdict(the_plan)},
        "seed": config.seed,
        "versions": versions(),
        "stages": [{"name": name, "wall_s": rec["wall_s"], "summary": rec["summary"]} for name, rec in done.items()],
        "curves": curves(root),
        "tables": [_pass_table(config, evals), _fim_table(evals), _data_table(root), _safety_table(root)],
        "headline": headline(root, config, evals),
    }  # fmt: skip


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("codefoundry", "torch", "numpy", "tokenizers", "pyarrow"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    from codefoundry.train.metrics import read_metrics

    return read_metrics(path)


def _series(name: str, records: list[dict[str, Any]], key: str) -> dict[str, Any]:
    kept = [r for r in records if isinstance(r.get(key), int | float)]
    return {"name": name, "x": [r["step"] for r in kept], "y": [r[key] for r in kept]}


def curves(root: Path) -> list[dict[str, Any]]:
    """Pretraining train/val loss, SFT train/val loss, RL reward and held-out pass@1 over steps."""
    pre = _read_jsonl(root / "pretrain" / "metrics.jsonl")
    sft = _read_jsonl(root / "sft" / "metrics.jsonl")
    rl = _read_jsonl(root / "rl" / "metrics.jsonl")
    rl_train = [r for r in rl if "reward_mean" in r]
    rl_eval = [r for r in rl if "pass@1" in r]
    return [
        {"title": "Pretraining loss", "x_label": "step", "y_label": "loss (nats/token)",
         "series": [_series("train", [r for r in pre if "val_loss" not in r], "loss"),
                    _series("validation", pre, "val_loss")]},
        {"title": "SFT loss (response tokens)", "x_label": "step", "y_label": "loss (nats/token)",
         "series": [_series("train", [r for r in sft if "val_loss" not in r], "loss"),
                    _series("validation", sft, "val_loss")]},
        {"title": "RL: reward and held-out pass@1", "x_label": "step", "y_label": "fraction",
         "series": [_series("train reward mean", rl_train, "reward_mean"),
                    _series("held-out pass@1", rl_eval, "pass@1"),
                    _series("held-out pass@1 CI low", rl_eval, "low"),
                    _series("held-out pass@1 CI high", rl_eval, "high")]},
    ]  # fmt: skip


def _eval_results(root: Path, config: QuickstartConfig) -> dict[str, dict[str, Any]]:
    found = {}
    for model in MODELS:
        for bench in [b.name for b in benches(config)] + ["fim"]:
            path = root / "eval" / f"{model}-{bench}.json"
            if path.is_file():
                found[f"{model}-{bench}"] = json.loads(path.read_text(encoding="utf-8"))
    return found


def _pass_table(config: QuickstartConfig, evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for bench in benches(config):
        for model in MODELS:
            r = evals.get(f"{model}-{bench.name}")
            if r is None or "skipped" in r:
                continue
            rows.append([BENCH_LABELS[bench.name], model, r["pass@1"], r["low"], r["high"], r["problems"],
                         r["samples"], bench.temperature])  # fmt: skip
    columns = ["benchmark", "model", "pass@1", "CI low", "CI high", "problems", "samples", "temperature"]
    return {"title": "pass@1 per benchmark after each stage (95% bootstrap CI over problems)",
            "columns": columns, "rows": rows}  # fmt: skip


def _fim_table(evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for model in MODELS:
        r = evals.get(f"{model}-fim")
        if r is not None:
            rows.append([model, r.get("stdlib_exact_match"), r.get("stdlib_examples"), r["builtin_exact_match"],
                         r["builtin_pass"], r["builtin_examples"]])  # fmt: skip
    columns = ["model", "stdlib FIM exact match", "stdlib functions", "built-in FIM exact match",
               "built-in FIM pass", "built-in infills"]  # fmt: skip
    return {"title": "Fill-in-the-middle (greedy)", "columns": columns, "rows": rows}


def _data_table(root: Path) -> dict[str, Any]:
    path = root / "data" / "manifest.json"
    rows = []
    if path.is_file():
        for s in json.loads(path.read_text(encoding="utf-8"))["stages"]:
            why = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items(), key=lambda kv: -kv[1]))
            rows.append([s["name"], s["docs_in"], s["docs_out"], sum(s["dropped"].values()),
                         sum(s["changed"].values()), round(s["bytes_out"] / 1e6, 2), why])  # fmt: skip
    columns = ["stage", "docs in", "docs out", "dropped", "changed", "MB out", "why dropped"]
    return {"title": "Data stage counts", "columns": columns, "rows": rows}


def _safety_table(root: Path) -> dict[str, Any]:
    path = root / "safety" / "findings.json"
    rows: list[list[Any]] = []
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        rows.append(["completions scanned", found["scanned"]])
        rows.append(["completions with a secret", found["flagged"]])
        rows += [[f"secret: {kind}", n] for kind, n in found["by_kind"].items()]
        rows.append(["vulnerability scan", "not built yet"])
    return {"title": "Safety scan of generated code", "columns": ["check", "count"], "rows": rows}


def paired_gain(root: Path, bench: str, *, seed: int = 0) -> dict[str, Any] | None:
    """RL minus SFT pass@1 on the same problems: the mean of the per-problem differences, with a
    percentile-bootstrap 95% CI over problems (tighter than comparing two unpaired CIs)."""
    from codefoundry.recipes.common import paired_delta, pass_rates

    rates = [
        pass_rates(_read_jsonl(root / "eval" / f"{model}-{bench}" / "results.jsonl"))
        for model in ("sft", "rl")
    ]
    shared = set(rates[0]) & set(rates[1])
    if not shared:  # a missing or empty evaluation, or no problem in common
        return None
    mean, low, high = paired_delta(rates[0], rates[1], seed=seed)
    return {"gain": mean, "low": low, "high": high, "problems": len(shared)}


def headline(root: Path, config: QuickstartConfig, evals: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    sampled = f"{config.eval_problems} problems x {config.eval_samples} samples at T={config.temperature}"
    notes = {"parametric": sampled, "parametric-greedy": f"{config.eval_problems} problems, greedy"}
    kinds = {"parametric": "sampled", "parametric-greedy": "greedy"}
    for model in ("sft", "rl"):
        for bench, kind in kinds.items():
            r = evals.get(f"{model}-{bench}")
            if r is not None:
                out.append({"metric": f"{model.upper()} parametric held-out pass@1 ({kind})", "value": r["pass@1"],
                            "ci": [r["low"], r["high"]], "note": notes[bench]})  # fmt: skip
    for bench, kind in kinds.items():
        sft, rl = evals.get(f"sft-{bench}"), evals.get(f"rl-{bench}")
        gain = paired_gain(root, bench)
        if sft and rl and gain:
            apart = "do not overlap" if rl["low"] > sft["high"] else "overlap"
            note = f"paired bootstrap over the same {gain['problems']} problems; the two CIs above {apart}"
            out.append({"metric": f"RL - SFT on parametric held-out pass@1 ({kind})", "value": gain["gain"],
                        "ci": [gain["low"], gain["high"]], "note": note})  # fmt: skip
    he = evals.get("rl-humaneval")
    if he is not None and "skipped" not in he:
        out.append({"metric": "RL HumanEval pass@1 (greedy)", "value": he["pass@1"], "ci": [he["low"], he["high"]],
                    "note": f"first {he['problems']} problems; a model this small scores about 0"})  # fmt: skip
    return out


def render(results: dict[str, Any], root: Path) -> list[str]:
    """`report.html` / `report.md` through `codefoundry.report` when it is installed; returns what was
    written (nothing when the report module is missing)."""
    try:
        from codefoundry.report import render_report
    except ModuleNotFoundError as e:
        if e.name not in ("codefoundry.report", "codefoundry"):
            raise  # the report module is there but misses a dependency: that is worth a message
        return []
    written = render_report(results, root)
    return [str(p) for p in written] if isinstance(written, list | tuple) else [str(written)]


def summary_table(results: dict[str, Any]) -> str:
    """The short text table printed at the end of a run: pass@1 per benchmark and model."""
    table = next(t for t in results["tables"] if t["title"].startswith("pass@1"))
    by: dict[str, dict[str, str]] = {}
    for bench, model, value, low, high, *_ in table["rows"]:
        by.setdefault(bench, {})[model] = f"{value:.3f} [{low:.3f}, {high:.3f}]"
    width = max([len(b) for b in by] + [9])
    lines = [f"{'benchmark':<{width}}  " + "  ".join(f"{m:<22}" for m in MODELS)]
    for bench, cells in by.items():
        lines.append(f"{bench:<{width}}  " + "  ".join(f"{cells.get(m, '-'):<22}" for m in MODELS))
    return "\n".join(lines)
