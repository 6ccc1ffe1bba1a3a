"""`codefoundry recipe sft-sensitivity` on a tiny budget: a planted corpus for the pretrained model, two
factors of two values around a centre (three cells, the centre shared), a few held-out problems. It checks
the tables (Markdown, CSV, PNG) and results, that the centre cell runs once, that a rerun skips finished
cells and a lost one is redone with the same numbers, the stamp, that cells in two processes give the
numbers of one by one, the one-line errors for bad factor values, and the SFT schedules themselves."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
from recipe_kit import numbers, write_corpus

pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("pyarrow")
pytest.importorskip("yaml")

from codefoundry.recipes.recipe import RecipeConfigError, load_config  # noqa: E402
from codefoundry.recipes.sft_sensitivity import (  # noqa: E402
    SCHEDULES,
    SFTSensitivityConfig,
    plan_cells,
    run_sft_sensitivity,
)
from codefoundry.train import sft as sft_module  # noqa: E402
from codefoundry.train.sft import SFTConfig, SFTRun, lr_at  # noqa: E402

TIMING = ("wall_s", "sft_s", "eval_s")
REPO = Path(__file__).resolve().parents[2]
CENTRE = "gb4_lr0.003_ep1_cosine_wu0.1"


class KilledAfterFirstSave(SFTRun):
    def save(self) -> None:
        super().save()
        raise KeyboardInterrupt


def tiny(out: Path, corpus: Path, **overrides) -> SFTSensitivityConfig:
    base = dict(
        sources=[str(corpus)], decontaminate=["builtin"], vocab_size=320, tokenizer_sample_mb=1, seq_len=160,
        pretrain_batch=4, pretrain_eval_batches=1, pretrain_steps=2, sft_parametric=8, workers=1,
    )  # fmt: skip
    values = dict(
        out=str(out), base=base, global_batch=4, lr=3e-3, epochs=1.0, schedule="cosine", warmup=0.1,
        grid={"global_batch": [2, 4], "schedule": ["cosine", "constant"]}, micro_batch=2, eval_problems=3,
        eval_samples=2, max_new_tokens=8, builtin_problems=2, long_tokens=8, parallel=1, threads=1, workers=1,
        base_threads=1, save_every=1, progress=False,
    )  # fmt: skip
    return SFTSensitivityConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), seed=12)


@pytest.fixture(scope="module")
def run_a(corpus, tmp_path_factory) -> tuple[SFTSensitivityConfig, dict]:
    cfg = tiny(tmp_path_factory.mktemp("sfts") / "a", corpus)
    return cfg, run_sft_sensitivity(cfg, command="test-command")


def test_grid_writes_tables_csv_and_plot(run_a):
    cfg, results = run_a
    root = Path(cfg.out)
    assert json.loads((root / "results.json").read_text())["rows"] == results["rows"]
    rows = {r["cell"]: r for r in results["rows"]}
    assert results["centre"] == CENTRE and set(rows) == {CENTRE, "gb2_lr0.003_ep1_cosine_wu0.1",
                                                         "gb4_lr0.003_ep1_constant_wu0.1"}  # fmt: skip
    sequences = results["sft_data"]["rows"]
    for row in rows.values():
        assert row["steps"] == max(1, math.ceil(1.0 * sequences / row["global_batch"]))
        summary = json.loads((root / "cells" / row["cell"] / "sft" / "summary.json").read_text())
        assert summary["train_sequences"] == sequences  # the epoch the recipe counted is the one SFT packed
        assert row["warmup_steps"] == int(0.1 * row["steps"])
        assert row["problems"] == cfg.eval_problems and row["samples"] == cfg.eval_problems * cfg.eval_samples
        assert 0 <= row["pass@1_low"] <= row["pass@1"] <= row["pass@1_high"] <= 1
        assert 0 <= row["builtin_pass@1"] <= 1 and row["builtin_problems"] == 2
        assert row["val_loss"] < row["initial_val_loss"] and row["train_loss"] > 0
    assert rows[CENTRE]["delta_pass@1"] is None
    for name in set(rows) - {CENTRE}:
        row = rows[name]
        assert row["delta_low"] <= row["delta_pass@1"] <= row["delta_high"]
        assert row["delta_pass@1"] == pytest.approx(row["pass@1"] - rows[CENTRE]["pass@1"])
    # batch 2 takes about twice the steps of batch 4 (same epochs); the constant schedule keeps the lr
    assert rows["gb2_lr0.003_ep1_cosine_wu0.1"]["steps"] >= 2 * rows[CENTRE]["steps"] - 1 >= 3
    metrics = root / "cells" / "gb4_lr0.003_ep1_constant_wu0.1" / "sft" / "metrics.jsonl"
    lrs = [record["lr"] for record in map(json.loads, metrics.read_text().splitlines()) if "lr" in record]
    assert lrs == pytest.approx([3e-3] * rows["gb4_lr0.003_ep1_constant_wu0.1"]["steps"])
    md = (root / "sft_sensitivity.md").read_text()
    assert md.splitlines()[2] == "Command: `test-command`"
    assert "## global batch" in md and "## scheduler" in md
    assert sum(line.startswith("| ") for line in md.splitlines()) == 2 * 3  # two tables: header + 2 rows
    assert md.count("(centre) |") == 2  # the centre row in both tables
    with (root / "sft_sensitivity.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["factor"], r["value"]) for r in table] == [("global_batch", "2"), ("global_batch", "4"),
                                                           ("schedule", "cosine"), ("schedule", "constant")]  # fmt: skip
    assert float(table[0]["pass@1"]) == rows["gb2_lr0.003_ep1_cosine_wu0.1"]["pass@1"]
    assert (root / "sft_sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_centre_cell_is_shared_not_run_twice(run_a):
    cfg, _ = run_a
    cells, tables = plan_cells(cfg)
    assert len(cells) == 3 and [CENTRE in names for _, names in tables] == [True, True]
    assert sorted(p.name for p in (Path(cfg.out) / "cells").iterdir()) == sorted(
        ["gb2_lr0.003_ep1_cosine_wu0.1", CENTRE, "gb4_lr0.003_ep1_constant_wu0.1"]
    )
    full = SFTSensitivityConfig(**{**cfg.__dict__, "mode": "full"})
    assert len(plan_cells(full)[0]) == 4  # 2 x 2, the centre among them


def test_rerun_skips_finished_cells_and_redoes_a_lost_one(run_a):
    cfg, first = run_a
    cells = Path(cfg.out) / "cells"
    stamps = {p.name: (p / "done.json").stat().st_mtime_ns for p in cells.iterdir()}
    again = run_sft_sensitivity(cfg, command="test-command")
    assert {p.name: (p / "done.json").stat().st_mtime_ns for p in cells.iterdir()} == stamps
    assert again["rows"] == first["rows"]
    # Killed during its evaluation: SFT finished (kept), the evaluation starts over.
    (cells / CENTRE / "done.json").unlink()
    # Killed half way through SFT (after its step-2 checkpoint of 4): SFT resumes there, the rest is redone.
    lost = cells / "gb2_lr0.003_ep1_cosine_wu0.1"
    settings = json.loads((lost / "sft" / "summary.json").read_text())["config"]
    shutil.rmtree(lost)
    with pytest.raises(KeyboardInterrupt):
        KilledAfterFirstSave(SFTConfig(**{**settings, "save_every": 2})).train()
    assert not (lost / "sft" / "summary.json").exists() and (lost / "sft" / "checkpoint").is_dir()
    redone = run_sft_sensitivity(cfg, command="test-command")
    assert (cells / "gb4_lr0.003_ep1_constant_wu0.1" / "done.json").stat().st_mtime_ns == stamps[
        "gb4_lr0.003_ep1_constant_wu0.1"
    ]
    assert numbers(redone["rows"], TIMING) == numbers(first["rows"], TIMING)


def test_other_settings_in_the_same_directory_are_refused(run_a):
    cfg, _ = run_a
    changed = SFTSensitivityConfig(**{**cfg.__dict__, "lr": 1e-3})
    with pytest.raises(ValueError, match=r"other settings \(lr\)"):
        run_sft_sensitivity(changed)


def test_cells_in_two_processes_give_the_numbers_of_one_by_one(run_a, tmp_path):
    cfg, first = run_a
    parallel = SFTSensitivityConfig(**{**cfg.__dict__, "out": str(tmp_path / "b"), "parallel": 2,
                                       "base_run": str(Path(cfg.out) / "base")})  # fmt: skip
    results = run_sft_sensitivity(parallel, command="test-command")
    assert numbers(results["rows"], TIMING) == numbers(first["rows"], TIMING)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (
            {"schedule": ["cosine", "cosnie"]},
            "grid: schedule value 'cosnie' is not one of cosine, linear, constant",
        ),
        ({"global_batch": [4, 0]}, "grid: global_batch value 0 is not a positive whole number"),
        ({"lr": [0.01, "fast"]}, "grid: lr value 'fast' is not a positive number"),
        ({"warmup": [0.1, 1.5]}, r"grid: warmup value 1.5 is not a fraction of the steps in \[0, 1\)"),
        ({"momentum": [0.9]}, "grid: unknown factor 'momentum'"),
        ({"epochs": [3, 3]}, "grid: epochs lists 3.0 twice"),
        ({"global_batch": [24]}, "global_batch 24 is not a multiple of micro_batch 16"),
    ],
)
def test_a_bad_factor_value_is_one_line_naming_it(tmp_path, grid, message):
    path = tmp_path / "sfts.yaml"
    path.write_text(json.dumps({"laptop": {"grid": grid}, "gpu": {}}))  # JSON is YAML
    with pytest.raises(RecipeConfigError, match=message) as err:
        load_config(SFTSensitivityConfig, path, "laptop")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_committed_config_has_both_variants_and_starts_with_its_command():
    path = REPO / "configs" / "recipes" / "sft-sensitivity.yaml"
    assert path.read_text().splitlines()[0].startswith("# codefoundry recipe sft-sensitivity")
    laptop = load_config(SFTSensitivityConfig, path, "laptop")
    assert len(plan_cells(laptop)[0]) == 9
    assert load_config(SFTSensitivityConfig, path, "gpu").device == "cuda"


def test_sft_schedules_after_the_warmup():
    kw = dict(lr=1.0, min_lr=0.1, warmup=10, steps=110)
    for schedule in ("cosine", "linear", "constant"):  # the warmup is the same for every schedule
        assert [lr_at(s, **kw, schedule=schedule) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(60, **kw) == lr_at(60, **kw, schedule="cosine") == pytest.approx(0.55)  # default: cosine
    assert lr_at(35, **kw, schedule="cosine") == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_at(35, **kw, schedule="linear") == pytest.approx(0.775)
    assert lr_at(110, **kw, schedule="linear") == pytest.approx(0.1)
    assert {lr_at(s, **kw, schedule="constant") for s in (10, 60, 109, 500)} == {1.0}
    assert SFTConfig(init="i", data="d", out="o").schedule == "cosine"
    assert sft_module.SCHEDULES == SCHEDULES  # the recipe's copy (it imports no torch) matches
    with pytest.raises(ValueError, match="SFTConfig.schedule: invalid value 'step'"):
        SFTConfig(init="i", data="d", out="o", schedule="step")
