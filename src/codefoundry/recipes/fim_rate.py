"""`codefoundry recipe fim-rate`: what a fill-in-the-middle rate in pretraining costs left-to-right and
buys in infilling, at laptop (or GPU) scale.

1. data: the quickstart's data stage (the interpreter's standard library, tokenized), built once in
   `OUT/base/` with `base` as QuickstartConfig overrides, or read from a finished quickstart run
   (`base_run`; only its data stage is used).
2. one cell per rate in `rates`: `codefoundry pretrain` from scratch with that `fim_rate` and everything
   else the same (seed, model size, steps, batch, learning rate, `spm_rate`), in `OUT/cells/rate-R/`;
   then, from its final checkpoint:
   - left-to-right held-out loss: next-token loss on the pretrain's fixed held-out windows (plain text,
     no FIM; `batch_size * eval_batches` windows of `seq_len` tokens), its curve every `eval_every` steps,
     and at the end the loss of each window, for a paired bootstrap CI of the difference between rates;
   - FIM on stdlib functions: the bodies (1..15 lines) of `fim_examples` held-out standard-library
     functions, drawn with the seed (the same functions for every rate), as PSM prompts. FIM loss: the
     teacher-forced loss of the first `fim_tokens` tokens of the real body and its end token (continuous,
     so it separates rates where exact match is still 0); exact match: the greedy middle of up to
     `fim_tokens` tokens equals the body (trailing whitespace aside). 95% percentile-bootstrap CIs over
     the functions, and paired ones for the differences from the first rate;
   - built-in infills: one line of each built-in held-out problem's solution masked (the quickstart's
     FIM check), greedy; exact match and the pass rate of the filled program in the sandbox;
   - syntax-valid fraction (left-to-right): a body sampled at T=0.8 after the header of each of the first
     `syntax_examples` of those functions, counted valid when `ast.parse` accepts the function.
3. `OUT/fim_rate.md` / `.csv` / `.png` (L2R loss curves per rate, FIM loss against L2R loss, and the
   exact-match bars) and
   `OUT/results.json`; each cell's per-example verdicts and the middles it wrote stay in its directory.

Caching and resume: a finished cell wrote `OUT/cells/rate-R/done.json` and a rerun skips it; a cell cut
short resumes its pretraining from the last checkpoint (`save_every`) and restarts its evaluation
(greedy decoding and seeded sampling: the same numbers). `OUT/recipe.json` records the settings; a rerun
with other result-deciding values stops with a message.

Parallelism: `parallel` cells run at once, each in its own process with `threads` torch threads however
many run, so the numbers do not depend on `parallel` (float sums depend on the thread count). Limits: one
seed per rate (no spread over pretraining seeds: the CIs are over held-out examples only); strict exact
match misses a correct body written differently, and a laptop-scale model rarely writes one at all (the
FIM loss is the measure that moves there); FIM is evaluated in PSM order only, though training used SPM
too; a rate-0 model never saw the FIM sentinels, so its FIM numbers are a floor, not a measurement of
skill; wall times depend on the machine and its load (recorded).
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

from codefoundry.recipes.common import (
    base_config,
    base_sentence,
    build_base,
    check_run_dir,
    ci_text,
    config_identity,
    csv_text,
    load_text,
    minutes_text,
    paired_delta,
    run_cells,
    timing_text,
    write_json,
    write_text,
)

__all__ = ["FIMRateConfig", "cell_name", "run_fim_rate"]

NAME = "fim_rate"
RECIPE = "fim-rate"
BASE_STAGES = ("data",)
SYNTAX_TEMPERATURE = 0.8  # as the pretrain's own final check samples bodies


@dataclass(frozen=True)
class FIMRateConfig:
    out: str = "runs/fim-rate"
    rates: tuple[float, ...] = (0.0, 0.5, 0.9)
    seed: int = 0
    # the data: QuickstartConfig overrides for OUT/base (its data stage only), or a finished run to reuse
    base: dict[str, Any] = field(default_factory=dict)
    base_run: str = ""
    # each pretraining run (the quickstart's model and optimizer settings unless changed)
    size: str = "tiny"
    seq_len: int = 256
    steps: int = 800
    batch_size: int = 16
    lr: float = 3e-3
    spm_rate: float = 0.5  # of the FIM examples, the share laid out suffix-prefix-middle
    eval_every: int = 100  # held-out loss curve: steps between points (the last step included)
    eval_batches: int = 8  # held-out windows = batch_size * eval_batches
    # the evaluation of every final checkpoint
    fim_examples: int = 200  # held-out stdlib functions
    fim_tokens: int = 64  # the most tokens of a written body
    builtin_problems: int | None = None  # None = the whole built-in held-out split
    builtin_tokens: int = 32
    syntax_examples: int = 100  # 0 = no syntax-valid check
    # how it runs (none of these changes a number)
    parallel: int = 3  # cells at once, each in its own process
    threads: int = 1  # torch threads per cell (fixed: it changes float sums)
    workers: int = 1  # sandbox workers per cell (built-in infills)
    base_threads: int = 2  # torch threads of the data stage (run alone, before the cells)
    save_every: int = 50
    device: str = "cpu"
    progress: bool = True  # one bar over the cells (each pretraining also logs its metrics.jsonl)

    def __post_init__(self) -> None:
        from codefoundry.models.config import SIZES

        object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        object.__setattr__(self, "base", dict(self.base))
        rates_ok = bool(self.rates) and len(set(self.rates)) == len(self.rates)
        checks = {
            "rates": rates_ok and all(0.0 <= r <= 1.0 for r in self.rates), "spm_rate": 0.0 <= self.spm_rate <= 1.0,
            "size": self.size in SIZES, "steps": self.steps >= 1, "batch_size": self.batch_size >= 1, "seq_len": self.seq_len >= 16,
            "lr": self.lr > 0, "eval_every": self.eval_every >= 1, "eval_batches": self.eval_batches >= 1,
            "fim_examples": self.fim_examples >= 1, "fim_tokens": self.fim_tokens >= 1,
            "builtin_problems": self.builtin_problems is None or self.builtin_problems >= 1,
            "builtin_tokens": self.builtin_tokens >= 1, "syntax_examples": self.syntax_examples >= 0,
            "parallel": self.parallel >= 1, "threads": self.threads >= 1, "workers": self.workers >= 1,
            "base_threads": self.base_threads >= 1, "save_every": self.save_every >= 1,
        }  # fmt: skip
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            hint = " (FIM rates are probabilities in [0, 1], each listed once)" if "rates" in bad else ""
            raise ValueError(f"{RECIPE}: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}{hint}"
                             + (f"; known sizes: {', '.join(SIZES)}" if "size" in bad else ""))  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """The values that decide the numbers (where and how it runs left out)."""
        return config_identity(self, ("out", "parallel", "workers", "save_every", "base_threads", "progress"))


def cell_name(rate: float) -> str:
    """`rate-0`, `rate-0.5`, `rate-0.9`: the cell's directory under OUT/cells."""
    return f"rate-{rate:g}"


# ----------------------------------------------------------------------------------------------- cells
def run_cell(cfg: FIMRateConfig, rate: float, data: dict[str, Any]) -> dict[str, Any]:
    """One rate in `OUT/cells/rate-R/`: pretraining at FIM rate `rate`, then the evaluation of its final
    checkpoint; returns (and writes to done.json) its row of the table with the per-example verdicts."""
    import torch

    torch.set_num_threads(cfg.threads)
    cell = Path(cfg.out) / "cells" / cell_name(rate)
    marker = cell / "done.json"
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))
    summary = _pretrain(cfg, rate, data, cell / "pretrain")
    row: dict[str, Any] = {"rate": rate, "pretrain_val_loss": summary["val_loss"],
                           "unigram_loss": summary["unigram_loss"],
                           "curve": _curve(Path(summary["metrics"])), "params": summary["params"],
                           "tokens": summary["tokens"], "pretrain_s": round(summary["elapsed_s"], 1)}  # fmt: skip
    row.update(_evaluate(cfg, Path(summary["checkpoint"]), data, cell, dtype=summary["dtype"]))
    row["wall_s"] = round(row["pretrain_s"] + row["eval_s"], 1)  # the pretraining counts its resumed parts
    row = json.loads(json.dumps(row))  # as a rerun reads it back (tuples as lists)
    write_json(marker, row)
    return row


def _pretrain(cfg: FIMRateConfig, rate: float, data: dict[str, Any], out: Path) -> dict[str, Any]:
    from codefoundry.train.pretrain import SUMMARY, PretrainConfig, pretrain
    from codefoundry.train.trainer_state import find_checkpoint

    done = out / SUMMARY
    if done.is_file():  # trained, but killed before its evaluation finished
        summary = json.loads(done.read_text(encoding="utf-8"))
        if summary.get("step") == cfg.steps:
            return summary
    pcfg = PretrainConfig(
        data=data["shards"], tokenizer=data["tokenizer"], out=str(out), size=cfg.size, steps=cfg.steps,
        batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr, fim_rate=rate, spm_rate=cfg.spm_rate,
        seed=cfg.seed, eval_every=cfg.eval_every, eval_batches=cfg.eval_batches, save_every=cfg.save_every,
        log_every=10, resume=find_checkpoint(out) is not None, device=cfg.device, progress=False,
        final_eval=False,  # this recipe's own evaluation below uses more functions
    )  # fmt: skip
    return pretrain(pcfg)


def _curve(metrics: Path) -> list[tuple[int, float]]:
    """(step, held-out loss) of every evaluation the pretraining logged; a resumed one overwrites."""
    from codefoundry.train.metrics import read_metrics

    points = {int(r["step"]): r["val_loss"] for r in read_metrics(metrics) if r.get("val_loss") is not None}
    return sorted(points.items())


def _evaluate(
    cfg: FIMRateConfig, checkpoint: Path, data: dict[str, Any], cell: Path, *, dtype: str = "float32"
) -> dict[str, Any]:
    """Left-to-right loss per held-out window (under the autocast `dtype` the pretraining evaluated in);
    FIM loss and exact match on stdlib functions, FIM on the built-in problems; the syntax-valid fraction
    of sampled bodies. The middles written go to `cell/completions.jsonl`; per-example values under
    "per_example" (for the paired differences)."""
    from codefoundry.models import checkpoint as ckpt
    from codefoundry.models import infill_eval
    from codefoundry.models import tokenizer as cft
    from codefoundry.recipes.chain import fim_evaluation
    from codefoundry.train.data import DataConfig, PretrainData

    started = time.perf_counter()
    net, tok = ckpt.load(checkpoint, device=cfg.device), cft.load(checkpoint)
    held = PretrainData(DataConfig(data["shards"], seq_len=cfg.seq_len, fim_rate=0.0, seed=cfg.seed), tok)
    losses = _window_losses(net, held.val_batches(cfg.batch_size, cfg.eval_batches), dtype=dtype)
    # the functions fim_evaluation draws (same texts, limit and seed), for the loss and the syntax check
    functions = infill_eval.heldout_functions(held.val_texts(), limit=cfg.fim_examples, seed=cfg.seed)
    if not losses or not functions:
        what = f"held-out windows of {cfg.seq_len} tokens" if not losses else "held-out functions to infill"
        raise ValueError(f"{data['shards']}: no {what}")
    fim = fim_evaluation(
        checkpoint, data["shards"], seq_len=cfg.seq_len, seed=cfg.seed, stdlib_examples=cfg.fim_examples,
        stdlib_tokens=cfg.fim_tokens, builtin_problems=cfg.builtin_problems, builtin_tokens=cfg.builtin_tokens,
        workers=cfg.workers, device=cfg.device,
    )  # fmt: skip
    middle = _middle_losses(net, tok, functions, tokens=cfg.fim_tokens)
    exact = {r["name"]: r["exact"] for r in fim["stdlib"]}
    row: dict[str, Any] = {
        "val_loss": sum(losses) / len(losses),  # the mean over windows: the pretraining's held-out loss
        **_mean_ci("fim_loss", list(middle.values()), cfg.seed),
        **_mean_ci("fim_exact_match", [float(v) for v in exact.values()], cfg.seed),
        "fim_first_line": sum(r["first_line"] for r in fim["stdlib"]) / len(exact), "fim_examples": len(exact),
        "builtin_exact_match": fim["builtin_exact_match"], "builtin_pass": fim["builtin_pass"],
        "builtin_examples": fim["builtin_examples"], "syntax_valid": None, "syntax_examples": 0,
    }  # fmt: skip
    if cfg.syntax_examples:
        syntax = infill_eval.syntax_valid_fraction(
            net, tok, functions[: cfg.syntax_examples], n=1, temperature=SYNTAX_TEMPERATURE, seed=cfg.seed,
            max_new_tokens=cfg.fim_tokens,
        )  # fmt: skip
        row.update({"syntax_valid": syntax["syntax_valid"], "syntax_examples": syntax["n"]})
    row["per_example"] = {"window_loss": losses, "fim_loss": middle, "fim_exact_match": exact,
                          "builtin": {r["name"]: r["exact"] for r in fim["builtin"]}}  # fmt: skip
    records = [{"set": part, **r} for part in ("stdlib", "builtin") for r in fim[part]]
    write_text(cell / "completions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    row["eval_s"] = round(time.perf_counter() - started, 1)
    return row


def _mean_ci(key: str, values: list[float], seed: int) -> dict[str, float]:
    """`key`, `key_low`, `key_high`: the mean and its 95% percentile-bootstrap CI over the examples."""
    from codefoundry.tasks.metrics import bootstrap_ci

    mean, low, high = bootstrap_ci(values, seed=seed)
    return {key: mean, f"{key}_low": low, f"{key}_high": high}


def _window_losses(net: Any, batches: list, *, dtype: str = "float32") -> list[float]:
    """The mean next-token loss (nats/token) of each held-out window, in order; their mean is the
    pretraining's held-out loss (every window has `seq_len` targets) when `dtype` is the autocast dtype
    its summary names ("bfloat16" where the hardware multiplies bf16 natively, else "float32")."""
    import torch
    import torch.nn.functional as F

    from codefoundry.train.pretrain import autocast

    device = net.embed.weight.device
    amp = None if dtype == "float32" else getattr(torch, dtype)
    losses: list[float] = []
    with torch.no_grad(), autocast(device, amp):
        for inputs, targets in batches:
            logits = net(inputs.to(device)).logits  # (B, T, V)
            ce = F.cross_entropy(
                logits.float().transpose(1, 2), targets.to(device), reduction="none"
            )  # (B, T)
            losses += ce.double().mean(dim=1).tolist()
    return losses


def _middle_losses(net: Any, tok: Any, functions: list, *, tokens: int) -> dict[str, float]:
    """Teacher-forced FIM loss per function: the mean next-token loss (nats/token) of the first `tokens`
    of its real body and the <|endoftext|> that ends a middle in training, after the PSM prompt
    `<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>` (encoded as `models.completion` encodes it); P keeps
    its end and S its start (the prefix first, `completion._fit`), so that prompt and scored tokens fit the
    model's context."""
    import torch
    import torch.nn.functional as F

    from codefoundry.models.completion import fim_prompt_ids
    from codefoundry.models.tokenizer import EOT, special_id

    eot = special_id(tok, EOT)
    device, cap = net.embed.weight.device, net.cfg.max_seq_len
    losses: dict[str, float] = {}
    with torch.no_grad():
        for f in functions:
            target = [*tok.encode(f.middle, add_special_tokens=False).ids, eot][: min(tokens, cap - 3)]
            room = cap - 3 - len(target) + 1  # the last target token is never an input
            prompt = fim_prompt_ids(tok, f.prefix, f.suffix, budget=room + 3)  # + the 3 sentinels
            ids = torch.tensor([prompt + target[:-1]], device=device)  # (1, T)
            logits = net(ids).logits[0, len(prompt) - 1 :]  # (len(target), V): each predicts one target
            losses[f.name] = F.cross_entropy(logits.float(), torch.tensor(target, device=device)).item()
    return losses


# ----------------------------------------------------------------------------------------------- driver
def _data(cfg: FIMRateConfig) -> tuple[Path, dict[str, Any]]:
    """The base run directory and its data stage's summary (token shards and tokenizer)."""
    from codefoundry.recipes import chain

    qcfg = None
    if not cfg.base_run:
        qcfg = base_config(cfg.out, cfg.base, seed=cfg.seed, threads=cfg.base_threads, device=cfg.device,
                           recipe=RECIPE)  # fmt: skip
    root = build_base(qcfg, cfg.base_run, stages=BASE_STAGES)
    return root, json.loads((root / "data" / chain.DONE).read_text(encoding="utf-8"))["summary"]


def run_fim_rate(cfg: FIMRateConfig, *, command: str = "") -> dict[str, Any]:
    """Run (or finish) the comparison in `cfg.out`; returns the results (also OUT/results.json) after
    writing the table (OUT/fim_rate.md, .csv) and the plot (OUT/fim_rate.png)."""
    root = Path(cfg.out)
    check_run_dir(root, RECIPE, cfg.identity())
    load_start = os.getloadavg()
    started = time.perf_counter()
    base, data = _data(cfg)
    rows = _run_cells(cfg, data)
    ordered = [rows[r] for r in cfg.rates]
    _add_deltas(ordered, seed=cfg.seed)
    results = {
        "title": "FIM rate in pretraining: left-to-right loss vs infilling (codefoundry recipe fim-rate)",
        "command": command or " ".join(sys.argv),
        "config": dataclasses.asdict(cfg),
        "base": str(base),
        "rows": [{k: v for k, v in row.items() if k != "per_example"} for row in ordered],
        "wall_s": round(time.perf_counter() - started, 1),
        "load": load_text(load_start),
        "cpus": os.cpu_count(),
    }
    results = json.loads(json.dumps(results))
    write_json(root / "results.json", results)
    results["outputs"] = [str(p) for p in write_outputs(results, root / NAME)]
    return results


def _run_cells(cfg: FIMRateConfig, data: dict[str, Any]) -> dict[float, dict[str, Any]]:
    """Every cell, `cfg.parallel` at a time, the highest rates first (their batches cost the most to build)."""
    order = sorted(cfg.rates, reverse=True)
    jobs = [(cell_name(rate), (cfg, rate, data)) for rate in order]
    rows = run_cells(run_cell, jobs, parallel=cfg.parallel, desc=f"{RECIPE} cells", progress=cfg.progress)
    return {rate: rows[cell_name(rate)] for rate in order}


def _add_deltas(rows: list[dict[str, Any]], *, seed: int) -> None:
    """Each row's L2R held-out loss, FIM loss and stdlib FIM exact match minus the first row's, as means of
    paired differences (the same windows, the same functions) with percentile-bootstrap 95% CIs."""
    ref = rows[0]["per_example"]
    for row in rows[1:]:
        mine = row["per_example"]
        windows = (
            dict(enumerate(map(float, ref["window_loss"]))),
            dict(enumerate(map(float, mine["window_loss"]))),
        )
        pairs = {"loss": windows}
        for key in ("fim_loss", "fim_exact_match"):
            pairs[key] = (
                {k: float(v) for k, v in ref[key].items()},
                {k: float(v) for k, v in mine[key].items()},
            )
        for key, (theirs, ours) in pairs.items():
            mean, low, high = paired_delta(theirs, ours, seed=seed)
            row.update({f"delta_{key}": mean, f"delta_{key}_low": low, f"delta_{key}_high": high})


# ---------------------------------------------------------------------------------------------- outputs
CSV_COLUMNS = ("fim_rate", "val_loss", "delta_loss", "delta_loss_low", "delta_loss_high", "fim_loss",
               "fim_loss_low", "fim_loss_high", "delta_fim_loss", "delta_fim_loss_low", "delta_fim_loss_high",
               "fim_exact_match", "fim_exact_match_low", "fim_exact_match_high", "delta_fim_exact_match",
               "delta_fim_exact_match_low", "delta_fim_exact_match_high", "fim_first_line", "fim_examples",
               "builtin_exact_match", "builtin_pass", "builtin_examples", "syntax_valid", "syntax_examples",
               "unigram_loss", "params", "tokens", "pretrain_s", "eval_s", "wall_s")  # fmt: skip


def write_outputs(results: dict[str, Any], stem: Path) -> list[Path]:
    """`stem`.md (the table with the command on top), `stem`.csv (the same numbers, unrounded) and
    `stem`.png (held-out loss over pretraining steps, FIM loss against L2R loss, exact match)."""
    md, csv_path, png = stem.with_suffix(".md"), stem.with_suffix(".csv"), stem.with_suffix(".png")
    write_text(md, markdown(results, plot_name=png.name))
    write_text(csv_path, csv_text(CSV_COLUMNS, ({**r, "fim_rate": r["rate"]} for r in results["rows"])))
    plot(results["rows"], png)
    return [md, csv_path, png]


def _ci(row: dict[str, Any], key: str, **fmt: Any) -> str:
    return ci_text(row.get(key), row.get(f"{key}_low"), row.get(f"{key}_high"), **fmt)


def markdown(results: dict[str, Any], *, plot_name: str = "") -> str:
    """The table with the command, the settings that make it comparable and the machine load."""
    cfg, rows = results["config"], results["rows"]
    ref, first = f"vs rate {rows[0]['rate']:g} (95% CI)", rows[0]
    columns = ("FIM rate", "L2R held-out loss", f"Δ L2R loss {ref}", "FIM loss (95% CI)", f"Δ FIM loss {ref}",
               "FIM exact match (95% CI)", f"Δ exact match {ref}", "built-in infill exact / pass",
               "syntax-valid", "wall time")  # fmt: skip
    syntax = (f" Syntax-valid (left-to-right): one body sampled at T={SYNTAX_TEMPERATURE} after the header of "
              f"each of the first {first['syntax_examples']} of those functions, parsed with `ast`."
              if cfg["syntax_examples"] else "")  # fmt: skip
    lines = [
        "# FIM rate: left-to-right loss vs infilling" + (" (laptop scale)" if cfg["device"] == "cpu" else ""),
        "", f"Command: `{results['command']}`", "",
        base_sentence(Path(results["base"]), reused=bool(cfg["base_run"]), overrides=cfg["base"], stages=BASE_STAGES),
        "",
        f"One pretraining run per FIM rate, all else equal: model `{cfg['size']}` ({first['params']:,} parameters), "
        f"seed {cfg['seed']}, {cfg['steps']} steps x {cfg['batch_size']} x {cfg['seq_len']} tokens, lr {cfg['lr']}, "
        f"{cfg['spm_rate']:g} of the FIM examples in SPM order. L2R held-out loss: next-token loss (nats/token) "
        f"of the final model on {cfg['batch_size'] * cfg['eval_batches']} fixed held-out windows of plain text "
        f"(no FIM). FIM: the bodies (1-15 lines) of {first['fim_examples']} held-out standard-library functions, "
        "the same for every rate, as PSM prompts; FIM loss: the teacher-forced loss (nats/token, mean over "
        f"functions) of the first {cfg['fim_tokens']} tokens of the real body and its end token; exact match: "
        f"the greedy middle of up to {cfg['fim_tokens']} tokens equals the body (trailing whitespace aside). "
        f"Built-in infill: one line masked in each of {first['builtin_examples']} built-in held-out solutions, "
        f"greedy, exact match and the filled program's pass rate in the sandbox.{syntax} CIs: 95% percentile "
        "bootstrap over windows or functions; every Δ is paired over the same ones. Wall time: pretraining plus "
        f"evaluation, {cfg['parallel']} cell(s) at a time, {cfg['threads']} torch thread(s) each.",
        "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
    ]  # fmt: skip
    for row in rows:
        cells = [f"{row['rate']:g}", f"{row['val_loss']:.4f}", _ci(row, "delta_loss", sign=True, digits=4),
                 _ci(row, "fim_loss"), _ci(row, "delta_fim_loss", sign=True), _ci(row, "fim_exact_match"),
                 _ci(row, "delta_fim_exact_match", sign=True),
                 f"{row['builtin_exact_match']:.3f} / {row['builtin_pass']:.3f}", ci_text(row["syntax_valid"]),
                 minutes_text(row["wall_s"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", timing_text(results)]
    if plot_name:
        lines += ["", f"![L2R loss curves, FIM loss against L2R loss, exact match per FIM rate]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], png: Path) -> Path:
    """Left: held-out L2R loss over pretraining steps, one line per rate. Middle: FIM loss against L2R
    loss of the final models (the trade-off; 95% CIs of the FIM loss). Right: stdlib FIM exact match (with
    its CI), built-in infill exact match and pass rate, bars per rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.5))
    for i, row in enumerate(rows):
        label, color = f"FIM rate {row['rate']:g}", f"C{i % 10}"
        steps, losses = zip(*row["curve"], strict=True) if row["curve"] else ((), ())
        left.plot(steps, losses, marker="o", markersize=3, color=color, label=label)
        spread = [[row["fim_loss"] - row["fim_loss_low"]], [row["fim_loss_high"] - row["fim_loss"]]]
        middle.errorbar([row["val_loss"]], [row["fim_loss"]], yerr=spread, fmt="o", capsize=3, color=color,
                        label=label)  # fmt: skip
    left.set(
        xlabel="pretraining step", ylabel="held-out next-token loss (nats/token)", title="L2R held-out loss"
    )
    middle.set(xlabel="L2R held-out loss (nats/token)", ylabel="FIM loss on stdlib bodies (nats/token)",
               title="FIM loss against L2R loss (final models)")  # fmt: skip
    width = 0.27
    for j, (key, label) in enumerate((("fim_exact_match", "stdlib FIM exact match"),
                                      ("builtin_exact_match", "built-in infill exact match"),
                                      ("builtin_pass", "built-in infill pass"))):  # fmt: skip
        values = [row[key] for row in rows]
        errors = None
        if key == "fim_exact_match":
            errors = [[r[key] - r[f"{key}_low"] for r in rows], [r[f"{key}_high"] - r[key] for r in rows]]
        xs = [i + (j - 1) * width for i in range(len(rows))]
        right.bar(xs, values, width, yerr=errors, capsize=3, color=f"C{j + 3}", label=label)
    right.set_xticks(range(len(rows)), [f"{row['rate']:g}" for row in rows])
    highest = max(max(r["fim_exact_match_high"], r["builtin_exact_match"], r["builtin_pass"]) for r in rows)
    right.set_ylim(0, max(0.05, 1.15 * highest))  # all-zero bars still show a readable axis
    right.set(xlabel="FIM rate", ylabel="fraction", title="Infilling by the final models")
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return png
