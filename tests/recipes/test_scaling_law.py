"""`codefoundry recipe scaling-law` on a tiny budget: a planted corpus for the data, a 3 x 2 grid of
models of a few thousand parameters trained for 2 or 4 steps. It checks the table (Markdown, CSV, PNG),
that a rerun skips finished cells, that a lost or killed cell is redone or resumed with the same loss,
the stamp, that cells in two processes give the numbers of one by one, the fit against known laws and
against scipy's L-BFGS-B, the compute-optimal closed form against a numeric argmin, pretraining a custom
shape, and the config and CLI errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from recipe_kit import numbers, write_corpus

pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("pyarrow")
pytest.importorskip("yaml")

from codefoundry.recipes import scaling_fit as sf  # noqa: E402
from codefoundry.recipes.recipe import RecipeConfigError, load_config  # noqa: E402
from codefoundry.recipes.scaling_law import (  # noqa: E402
    ScalingLawConfig,
    _data_paths,
    cell_config,
    run_scaling_law,
)

SHAPES = ((16, 1, 2, 1), (32, 1, 2, 1), (32, 2, 4, 2))
STEPS = (2, 4)
TIMING = ("wall_s", "tokens_per_s")
REPO = Path(__file__).resolve().parents[2]


def tiny(out: Path, corpus: Path, **overrides) -> ScalingLawConfig:
    base = dict(
        sources=[str(corpus)], decontaminate=["builtin"], vocab_size=320, tokenizer_sample_mb=1, workers=1
    )
    values = dict(out=str(out), base=base, shapes=SHAPES, steps=STEPS, batch_size=2, seq_len=32, eval_batches=2,
                  bootstrap=20, parallel=1, threads=1, save_every=1, progress=False)  # fmt: skip
    return ScalingLawConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), seed=11)


@pytest.fixture(scope="module")
def run_a(corpus, tmp_path_factory) -> tuple[ScalingLawConfig, dict]:
    cfg = tiny(tmp_path_factory.mktemp("sl") / "a", corpus)
    return cfg, run_scaling_law(cfg, command="test-command")


def test_grid_end_to_end_writes_table_csv_and_plot(run_a):
    cfg, results = run_a
    root = Path(cfg.out)
    assert json.loads((root / "results.json").read_text())["rows"] == results["rows"]
    rows = results["rows"]
    assert [(r["dim"], r["n_layers"], r["steps"]) for r in rows] == [
        (s[0], s[1], n) for s in SHAPES for n in STEPS
    ]
    for row in rows:
        assert 0 < row["N"] < row["params"]  # the tied embedding is most of a model this small
        assert row["D"] == row["steps"] * 2 * 32 and row["flops"] == 6 * row["N"] * row["D"]
        assert 0 < row["loss"] < 10 and row["fit_loss"] > 0
        assert row["log_residual"] == pytest.approx(np.log(row["fit_loss"] / row["loss"]))
    fit = results["fit"]
    assert set(fit["params"]) == {"E", "A", "B", "alpha", "beta"} and fit["bootstrap"] == 20
    for est in fit["params"].values():
        assert est["low"] <= est["high"]
    assert [o["multiple"] for o in fit["optimal"]] == [1.0, 10.0]
    largest = max(r["flops"] for r in rows)
    for row in fit["optimal"]:
        assert (
            6 * row["N"]["value"] * row["D"]["value"]
            == pytest.approx(row["flops"])
            == row["multiple"] * largest
        )
    md = (root / "scaling_law.md").read_text()
    assert md.splitlines()[2] == "Command: `test-command`"
    header = next(line for line in md.splitlines() if line.startswith("| shape"))
    assert "N (non-embedding)" in header and "D = 128 (2 steps)" in header and "D = 256 (4 steps)" in header
    assert "| α |" in md and "| β |" in md and "Compute-optimal" in md and "noisy" in md
    with (root / "scaling_law.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["cell"] for r in table] == [r["cell"] for r in rows]
    assert float(table[0]["loss"]) == rows[0]["loss"]
    assert (root / "scaling_law.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_finished_cells_and_redoes_a_lost_one(run_a):
    cfg, first = run_a
    cells = Path(cfg.out) / "cells"
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in cells.glob("*/done.json")}
    assert len(stamps) == len(SHAPES) * len(STEPS)
    again = run_scaling_law(cfg, command="test-command")
    assert {p.parent.name: p.stat().st_mtime_ns for p in cells.glob("*/done.json")} == stamps
    assert again["rows"] == first["rows"] and again["fit"] == first["fit"]
    lost = first["rows"][3]["cell"]
    (cells / lost / "done.json").unlink()  # killed after training, before its marker
    redone = run_scaling_law(cfg, command="test-command")
    assert numbers(redone["rows"], TIMING) == numbers(first["rows"], TIMING)


def test_a_killed_cell_resumes_to_the_same_loss(run_a):
    from codefoundry.train.pretrain import pretrain

    cfg, first = run_a
    row = first["rows"][-1]
    cell = Path(cfg.out) / "cells" / row["cell"]
    shutil.rmtree(cell)
    shape, data = SHAPES[-1], _data_paths(Path(cfg.out) / "base")
    partial = pretrain(dataclasses.replace(cell_config(cfg, shape, STEPS[-1], data), time_limit_s=1e-9))
    assert partial["step"] == 1 and partial["stopped"] == "time_limit"  # a checkpoint at step 1 of 4
    resumed = run_scaling_law(cfg, command="test-command")
    assert numbers(resumed["rows"], TIMING) == numbers(first["rows"], TIMING)
    assert json.loads((cell / "train" / "summary.json").read_text())["steps"] == STEPS[-1]


def test_other_settings_in_the_same_directory_are_refused(run_a):
    cfg, _ = run_a
    with pytest.raises(ValueError, match=r"other settings \(steps\)"):
        run_scaling_law(dataclasses.replace(cfg, steps=(2, 3)))


def test_cells_in_two_processes_give_the_numbers_of_one_by_one(run_a, tmp_path):
    cfg, first = run_a
    parallel = dataclasses.replace(
        cfg, out=str(tmp_path / "b"), parallel=2, base_run=str(Path(cfg.out) / "base")
    )
    results = run_scaling_law(parallel, command="test-command")
    assert numbers(results["rows"], TIMING) == numbers(first["rows"], TIMING)
    assert results["fit"] == first["fit"]


# ------------------------------------------------------------------------------------- the fit itself
TRUE = sf.Law(E=1.7, A=300.0, B=2500.0, alpha=0.45, beta=0.55)


def grid_points(law: sf.Law, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1.5e4, 8e5, 5), np.geomspace(2.5e5, 2e6, 4)))
    loss = law.loss(n, d) * np.exp(np.random.default_rng(0).normal(0.0, noise, n.size))
    return n, d, loss


def test_the_fit_recovers_a_known_law_and_its_bootstrap_collapses_without_noise():
    n, d, loss = grid_points(TRUE)
    fit = sf.fit_law(n, d, loss)
    for name, value in TRUE.as_dict().items():
        assert getattr(fit.law, name) == pytest.approx(value, rel=1e-4), name
    assert fit.rmse_log < 1e-6 and fit.r2 == pytest.approx(1.0) and fit.at_bound == ()
    thetas, hits = sf.bootstrap_laws(n, d, loss, fit.theta, samples=10, seed=0)
    assert not hits.any()
    np.testing.assert_allclose(thetas[:, 3:], [[0.45, 0.55]] * 10, rtol=1e-3)


def test_the_fit_is_as_good_as_scipy_lbfgsb_on_noisy_points():
    optimize = pytest.importorskip("scipy.optimize")
    n, d, loss = grid_points(TRUE, noise=0.01)
    fit = sf.fit_law(n, d, loss)
    points = np.log(np.array([n, d, loss]))

    def f(theta):
        value, grad = sf.objective(theta[None], points, np.ones((1, n.size)), 1e-3)
        return value[0], grad[0]

    grid = sf.start_grid()
    scores = sf.objective(grid, points, np.ones((len(grid), n.size)), 1e-3)[0]
    best = min((optimize.minimize(f, x0, jac=True, method="L-BFGS-B", bounds=sf.BOUNDS.tolist(),
                                  options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000})
                for x0 in grid[np.argsort(scores)[:3]]), key=lambda r: r.fun)  # fmt: skip
    assert fit.objective <= best.fun * (1 + 1e-7)
    np.testing.assert_allclose(fit.theta, best.x, rtol=1e-3, atol=1e-3)


def test_compute_optimal_closed_form_matches_a_numeric_argmin():
    for flops in (1e12, 3e15, 1e19):
        n_opt, d_opt = TRUE.optimal(flops)
        assert 6 * n_opt * d_opt == pytest.approx(flops)
        ns = np.geomspace(n_opt / 100, n_opt * 100, 400_001)
        numeric = ns[np.argmin(TRUE.loss(ns, flops / (6 * ns)))]
        assert numeric == pytest.approx(n_opt, rel=1e-4)


# -------------------------------------------------------------------------------------- custom shapes
def test_pretrain_shape_builds_that_model_and_a_resume_must_keep_it(run_a):
    from codefoundry.models import checkpoint as ckpt
    from codefoundry.train.pretrain import PretrainConfig, build_model, pretrain

    cfg, first = run_a
    config = PretrainConfig(data="d", tokenizer="t", out="o", shape=[24, 3, 3, 1])
    assert config.shape == (24, 3, 3, 1)
    model = build_model(config, vocab_size=64)
    assert (model.cfg.dim, model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_kv_heads) == (24, 3, 3, 1)
    with pytest.raises(ValueError, match="PretrainConfig.shape"):
        PretrainConfig(data="d", tokenizer="t", out="o", shape=(24, 3, 0, 1))
    saved = ckpt.load_config(Path(cfg.out) / "cells" / first["rows"][-1]["cell"] / "train" / "checkpoint")
    assert (saved.dim, saved.n_layers, saved.n_heads, saved.n_kv_heads) == SHAPES[-1]
    data = _data_paths(Path(cfg.out) / "base")
    other = dataclasses.replace(
        cell_config(cfg, SHAPES[-1], STEPS[-1], data), shape=(16, 1, 2, 1), resume=True
    )
    with pytest.raises(ValueError, match=r"cannot resume with shape=\(16, 1, 2, 1\)"):
        pretrain(other)


def test_pretrain_cli_takes_a_shape(run_a, tmp_path, capsys):
    from codefoundry.cli import main
    from codefoundry.models import checkpoint as ckpt

    data = _data_paths(Path(run_a[0].out) / "base")
    argv = ["pretrain", "--data", data["shards"], "--tokenizer", data["tokenizer"], "--out", str(tmp_path / "p"),
            "--shape", "16,1,2,1", "--steps", "1", "--batch-size", "2", "--seq-len", "32", "--fim-rate", "0",
            "--eval-batches", "1", "--no-final-eval", "--no-progress"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    saved = ckpt.load_config(tmp_path / "p" / "checkpoint")
    assert (saved.dim, saved.n_layers, saved.n_heads, saved.n_kv_heads) == (16, 1, 2, 1)


# ---------------------------------------------------------------------------------------- config, CLI
def test_bad_grids_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"invalid shapes=.*shape \[30, 1, 4, 1\]: dim=30 is not a multiple"):
        ScalingLawConfig(shapes=((32, 1, 2, 1), (30, 1, 4, 1)))
    with pytest.raises(ValueError, match="fewer than the 5 points"):
        ScalingLawConfig(shapes=((32, 1, 2, 1), (64, 1, 2, 1)), steps=(10, 20))
    with pytest.raises(ValueError, match="invalid steps"):
        ScalingLawConfig(steps=(10, 10, 20))


def test_committed_config_has_both_variants_and_starts_with_its_command():
    path = REPO / "configs" / "recipes" / "scaling-law.yaml"
    assert path.read_text().splitlines()[0].startswith("# codefoundry recipe scaling-law")
    laptop, gpu = (load_config(ScalingLawConfig, path, v) for v in ("laptop", "gpu"))
    assert laptop == ScalingLawConfig() and laptop.device == "cpu" and gpu.device == "cuda"
    assert all(isinstance(s, tuple) for s in gpu.shapes)


def test_cli_refuses_a_bad_key_in_one_line(tmp_path):
    cli = [sys.executable, "-c", "import sys; from codefoundry.cli import main; sys.exit(main())"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("laptop:\n  stepz: [1, 2]\ngpu: {}\n")
    run = subprocess.run([*cli, "recipe", "scaling-law", "--config", str(bad), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and "'stepz'" in lines[0], run.stderr
    with pytest.raises(RecipeConfigError, match=r"key 'shapes': expected tuple"):
        load_config(ScalingLawConfig, None, "laptop", overrides={"shapes": 5})
