"""`codefoundry recipe fim-rate` on a tiny budget: a planted corpus for the data, two FIM rates of a few
pretraining steps, a few held-out functions and built-in problems. It checks the table (Markdown, CSV, PNG)
and results, that a rerun skips finished cells and a lost evaluation is redone with the same numbers, that
a run SIGKILLed inside a cell finishes with the numbers of an uninterrupted one, that cells in two
processes give the numbers of cells one by one, the stamp's refusal of other settings, and the one-line
errors for a FIM rate outside [0, 1]."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from recipe_kit import numbers, write_corpus

pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("pyarrow")
pytest.importorskip("yaml")

from codefoundry.recipes.fim_rate import FIMRateConfig, cell_name, run_fim_rate  # noqa: E402
from codefoundry.recipes.recipe import RecipeConfigError, load_config  # noqa: E402

RATES = (0.0, 0.9)
TIMING = ("wall_s", "pretrain_s", "eval_s")
REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "import sys; from codefoundry.cli import main; sys.exit(main())"]


def tiny(out: Path, corpus: Path, **overrides) -> FIMRateConfig:
    base = dict(sources=[str(corpus)], decontaminate=["builtin"], vocab_size=320, tokenizer_sample_mb=1,
                workers=1)  # fmt: skip
    values = dict(
        out=str(out), rates=RATES, base=base, size="tiny", seq_len=128, steps=4, batch_size=4, eval_every=2,
        eval_batches=1, fim_examples=4, fim_tokens=8, builtin_problems=2, builtin_tokens=8, syntax_examples=2,
        parallel=1, threads=1, workers=1, base_threads=1, save_every=1, progress=False,
    )  # fmt: skip
    return FIMRateConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), seed=13)


@pytest.fixture(scope="module")
def run_a(corpus, tmp_path_factory) -> tuple[FIMRateConfig, dict]:
    cfg = tiny(tmp_path_factory.mktemp("fim") / "a", corpus)
    return cfg, run_fim_rate(cfg, command="test-command")


def cell(cfg: FIMRateConfig, rate: float) -> Path:
    return Path(cfg.out) / "cells" / cell_name(rate)


def test_two_rates_end_to_end_write_table_csv_and_plot(run_a):
    cfg, results = run_a
    root = Path(cfg.out)
    assert json.loads((root / "results.json").read_text())["rows"] == results["rows"]
    rows = results["rows"]
    assert [r["rate"] for r in rows] == list(RATES)
    for row in rows:
        # the loss curve: every eval_every steps up to the last, whose point is the table's loss (there
        # computed in one sum over the windows, here as the mean of per-window losses)
        assert [step for step, _ in row["curve"]] == [2, 4]
        assert row["curve"][-1][1] == row["pretrain_val_loss"]
        assert row["val_loss"] == pytest.approx(row["pretrain_val_loss"], rel=1e-5)
        per = json.loads((cell(cfg, row["rate"]) / "done.json").read_text())["per_example"]
        assert len(per["window_loss"]) >= 1 and len(per["fim_exact_match"]) == row["fim_examples"]
        assert 0 <= row["fim_exact_match_low"] <= row["fim_exact_match"] <= row["fim_exact_match_high"] <= 1
        assert 0 < row["fim_loss_low"] <= row["fim_loss"] <= row["fim_loss_high"]
        assert sorted(per["fim_loss"]) == sorted(per["fim_exact_match"])  # the same functions
        assert row["fim_examples"] >= 1 and row["builtin_examples"] == cfg.builtin_problems
        assert 0 <= row["builtin_exact_match"] <= 1 and 0 <= row["builtin_pass"] <= 1
        assert 0 <= row["syntax_valid"] <= 1 and row["syntax_examples"] >= 1
        assert row["wall_s"] >= row["pretrain_s"] > 0
        lines = (cell(cfg, row["rate"]) / "completions.jsonl").read_text().splitlines()
        assert len(lines) == row["fim_examples"] + row["builtin_examples"]
    # paired differences over the same windows and functions: their means are the differences of means
    assert rows[1]["delta_loss"] == pytest.approx(rows[1]["val_loss"] - rows[0]["val_loss"], abs=1e-5)
    for key in ("fim_loss", "fim_exact_match"):
        assert rows[1][f"delta_{key}"] == pytest.approx(rows[1][key] - rows[0][key])
    for key in ("delta_loss", "delta_fim_loss", "delta_fim_exact_match"):
        assert rows[1][f"{key}_low"] <= rows[1][key] <= rows[1][f"{key}_high"]
        assert rows[0].get(key) is None
    md = (root / "fim_rate.md").read_text()
    assert md.splitlines()[2] == "Command: `test-command`"
    header = next(line for line in md.splitlines() if line.startswith("| FIM rate"))
    for column in ("L2R held-out loss", "Δ L2R loss vs rate 0 (95% CI)", "FIM loss (95% CI)", "Δ FIM loss vs rate 0",
                   "FIM exact match (95% CI)", "Δ exact match vs rate 0", "built-in infill exact / pass",
                   "syntax-valid", "wall time"):  # fmt: skip
        assert column in header
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + len(RATES)  # header and rows
    with (root / "fim_rate.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [float(r["fim_rate"]) for r in table] == list(RATES)
    assert float(table[1]["val_loss"]) == rows[1]["val_loss"]
    assert (root / "fim_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_finished_cells_and_redoes_a_lost_evaluation(run_a):
    cfg, first = run_a
    stamps = {r: (cell(cfg, r) / "done.json").stat().st_mtime_ns for r in RATES}
    again = run_fim_rate(cfg, command="test-command")
    assert {r: (cell(cfg, r) / "done.json").stat().st_mtime_ns for r in RATES} == stamps  # nothing recomputed
    assert again["rows"] == first["rows"]
    # A cell whose marker is gone (killed during its evaluation) evaluates again, with the same numbers.
    (cell(cfg, 0.9) / "done.json").unlink()
    redone = run_fim_rate(cfg, command="test-command")
    assert (cell(cfg, 0.0) / "done.json").stat().st_mtime_ns == stamps[0.0]
    assert numbers(redone["rows"], TIMING) == numbers(first["rows"], TIMING)


def test_other_settings_in_the_same_directory_are_refused(run_a):
    cfg, _ = run_a
    with pytest.raises(ValueError, match=r"other settings \(steps\)"):
        run_fim_rate(FIMRateConfig(**{**asdict(cfg), "steps": 5}))


def test_cells_in_two_processes_give_the_numbers_of_one_by_one(run_a, tmp_path):
    cfg, first = run_a
    parallel = FIMRateConfig(**{**asdict(cfg), "out": str(tmp_path / "b"), "parallel": 2,
                                "base_run": str(Path(cfg.out) / "base")})  # fmt: skip
    results = run_fim_rate(parallel, command="test-command")
    assert numbers(results["rows"], TIMING) == numbers(first["rows"], TIMING)


def test_a_killed_cell_resumes_to_the_numbers_of_an_uninterrupted_run(run_a, tmp_path):
    """A subprocess runs the same settings; it is SIGKILLed once the first cell's pretraining has saved a
    checkpoint (before the cell finished), then the run is finished in this process."""
    cfg, first = run_a
    config = {**asdict(cfg), "out": str(tmp_path / "killed"), "base_run": str(Path(cfg.out) / "base")}
    script = ("import json, sys\nfrom codefoundry.recipes.fim_rate import FIMRateConfig, run_fim_rate\n"
              "run_fim_rate(FIMRateConfig(**json.loads(sys.argv[1])), command='test-command')\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(config)], env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    killed = FIMRateConfig(**config)
    state = cell(killed, max(RATES)) / "pretrain" / "checkpoint" / "trainer_state.pt"  # the first cell to run
    try:
        deadline = time.monotonic() + 300
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before a checkpoint: {proc.stderr.read().decode()[-500:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (cell(killed, max(RATES)) / "done.json").exists()
    resumed = run_fim_rate(killed, command="test-command")
    assert numbers(resumed["rows"], TIMING) == numbers(first["rows"], TIMING)


def test_a_rate_outside_0_1_is_a_one_line_error(tmp_path):
    for rates in ((0.0, 1.5), (-0.1,), (0.5, 0.5), ()):
        with pytest.raises(ValueError, match=r"fim-rate: invalid rates=") as err:
            FIMRateConfig(rates=rates)
        assert "\n" not in str(err.value)
    path = tmp_path / "fim.yaml"
    path.write_text("laptop:\n  rates: [0, 0.5, 2]\ngpu: {}\n")
    where = r"fim\.yaml \[laptop\]: fim-rate: invalid rates=\(0\.0, 0\.5, 2\.0\)"
    with pytest.raises(RecipeConfigError, match=where):
        load_config(FIMRateConfig, path, "laptop")
    run = subprocess.run([*CLI, "recipe", "fim-rate", "--config", str(path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "rates=(0.0, 0.5, 2.0)" in lines[0], run.stderr
    assert not (tmp_path / "o").exists()  # nothing was started


def test_committed_config_has_both_variants_and_starts_with_its_command():
    path = REPO / "configs" / "recipes" / "fim-rate.yaml"
    assert path.read_text().splitlines()[0].startswith("# codefoundry recipe fim-rate")
    for variant in ("laptop", "gpu"):
        config = load_config(FIMRateConfig, path, variant)
        assert config.rates == (0.0, 0.5, 0.9)
