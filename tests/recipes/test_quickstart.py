"""The quickstart chain end to end on a tiny budget: a planted corpus instead of the standard library,
a few steps per stage, a few problems per benchmark. It checks the results.json schema, that a rerun
skips finished stages, that a stage whose done-marker is gone resumes and reproduces the same numbers,
and that a run SIGKILLed mid-SFT and resumed ends with the numbers of an uninterrupted run."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from recipe_kit import write_corpus

pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("pyarrow")

from codefoundry.recipes import QuickstartConfig, plan, quickstart  # noqa: E402
from codefoundry.recipes.quickstart import STAGES  # noqa: E402

TIMING = ("wall_s", "mean_step_s", "seconds", "elapsed_s")


def tiny_config(out: Path, corpus: Path, **overrides) -> QuickstartConfig:
    values = dict(
        out=str(out), sources=(str(corpus),), decontaminate=("builtin",), vocab_size=320,
        tokenizer_sample_mb=1, size="tiny", seq_len=160, pretrain_batch=4, pretrain_eval_batches=1,
        sft_batch=4, group_size=2, prompts_per_step=2, max_new_tokens=8, rl_eval_problems=2,
        rl_eval_samples=1, eval_problems=3, eval_samples=2, builtin_problems=2, humaneval_problems=1,
        fim_examples=2, long_tokens=16, pretrain_steps=2, sft_steps=3, rl_steps=2, workers=1, threads=1,
        progress=False,
    )  # fmt: skip
    return QuickstartConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), seed=7)


@pytest.fixture(scope="module")
def run_a(corpus, tmp_path_factory) -> tuple[QuickstartConfig, dict]:
    out = tmp_path_factory.mktemp("qs") / "a"
    cfg = tiny_config(out, corpus)
    return cfg, quickstart(cfg, command="test")


def numbers(results: dict) -> dict:
    """Everything a run computed, without timings or paths."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMING and "checkpoint" not in k}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    summaries = [{k: v for k, v in s["summary"].items() if k not in ("tokenizer", "shards")}
                 for s in results["stages"]]  # fmt: skip
    return strip({"curves": results["curves"], "tables": results["tables"], "headline": results["headline"],
                  "stages": summaries})  # fmt: skip


def test_plan_is_a_function_of_the_budget_only():
    base = plan(QuickstartConfig())
    assert base == plan(QuickstartConfig(out="elsewhere", workers=1, progress=False))
    longer = plan(QuickstartConfig(minutes=30))
    assert longer.rl_steps > base.rl_steps and longer.pretrain_steps > base.pretrain_steps
    assert plan(QuickstartConfig(rl_steps=5)).rl_steps == 5
    with pytest.raises(ValueError, match="quickstart: invalid minutes"):
        QuickstartConfig(minutes=0)


def test_chain_runs_end_to_end_and_results_match_the_schema(run_a):
    cfg, results = run_a
    root = Path(cfg.out)
    assert json.loads((root / "results.json").read_text()) == results
    assert set(results) == {"title", "command", "config", "seed", "versions", "stages", "curves", "tables",
                            "headline"}  # fmt: skip
    assert isinstance(results["title"], str) and results["command"] == "test" and results["seed"] == cfg.seed
    assert [s["name"] for s in results["stages"]] == [name for name, _ in STAGES]
    for stage in results["stages"]:
        assert isinstance(stage["wall_s"], float)
        assert all(isinstance(v, int | float | str) for v in stage["summary"].values()), stage["name"]
        assert (root / stage["name"] / "done.json").is_file()
    for curve in results["curves"]:
        assert set(curve) == {"title", "x_label", "y_label", "series"}
        for s in curve["series"]:
            assert set(s) == {"name", "x", "y"} and len(s["x"]) == len(s["y"])
    by_title = {c["title"]: c for c in results["curves"]}
    assert len(by_title["Pretraining loss"]["series"][0]["x"]) == cfg.pretrain_steps
    assert by_title["RL: reward and held-out pass@1"]["series"][0]["x"] == [1, 2]
    for table in results["tables"]:
        assert set(table) == {"title", "columns", "rows"}
        assert all(len(row) == len(table["columns"]) for row in table["rows"])
        assert all(v is None or isinstance(v, int | float | str) for row in table["rows"] for v in row)
    passes = results["tables"][0]["rows"]
    assert {(r[0], r[1]) for r in passes} >= {
        ("parametric held-out, sampled", m) for m in ("base", "sft", "rl")
    }
    assert all(0 <= r[3] <= r[2] <= r[4] <= 1 for r in passes)
    for h in results["headline"]:
        assert set(h) == {"metric", "value", "ci", "note"}
        assert h["ci"] is None or len(h["ci"]) == 2
    safety = results["stages"][-1]["summary"]
    # 3 models x (3 problems x 2 samples + 3 greedy + 2 built-in + 1 HumanEval) completions scanned.
    assert safety["completions_scanned"] == 3 * (6 + 3 + 2 + 1)


def test_rerun_skips_done_stages(run_a):
    cfg, results = run_a
    root = Path(cfg.out)
    markers = {name: (root / name / "done.json").stat().st_mtime_ns for name, _ in STAGES}
    again = quickstart(cfg, command="test")
    assert {name: (root / name / "done.json").stat().st_mtime_ns for name, _ in STAGES} == markers
    assert again["stages"] == results["stages"] and numbers(again) == numbers(results)


def test_other_settings_in_the_same_directory_are_refused(run_a):
    cfg, _ = run_a
    with pytest.raises(ValueError, match="other settings .*rl_steps"):
        quickstart(tiny_config(Path(cfg.out), Path(cfg.sources[0]), rl_steps=3))


def test_a_stage_without_its_marker_resumes_to_the_same_numbers(run_a):
    """RL's marker and everything after it deleted: RL resumes from its (final) checkpoint, the RL model is
    evaluated again from scratch, and every number comes out the same. In place, since a run directory
    holds absolute paths (it cannot be moved); the rerun leaves it complete again."""
    cfg, results = run_a
    root = Path(cfg.out)
    for stage in ("rl", "eval", "safety"):
        (root / stage / "done.json").unlink()
    for path in (root / "eval").glob("rl-*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    resumed = quickstart(cfg, command="test")
    assert (root / "rl" / "done.json").is_file() and (root / "eval" / "rl-parametric.json").is_file()
    assert numbers(resumed) == numbers(results)


def test_cli_registers_quickstart():
    from codefoundry import cli_recipes

    parser = argparse.ArgumentParser(prog="codefoundry")
    argv = ["quickstart", "--out", "somewhere", "--minutes", "2", "--seed", "3"]
    cli_recipes.register(parser.add_subparsers(dest="stage", required=True), argv)
    args = parser.parse_args(argv)
    assert (args.out, args.minutes, args.seed, args.no_progress) == ("somewhere", 2.0, 3, False)
    assert parser.parse_args(["quickstart"]).out == "runs/quickstart"


def test_killed_run_resumes_to_the_numbers_of_an_uninterrupted_one(run_a, tmp_path):
    """A subprocess runs the same config; it is SIGKILLed once SFT has saved its first checkpoint (mid-
    stage: SFT has 3 steps and saves each), then the run is finished in this process."""
    cfg, results = run_a
    out = tmp_path / "killed"
    config = asdict(tiny_config(out, Path(cfg.sources[0])))
    script = ("import json, sys\nfrom codefoundry.recipes import QuickstartConfig, quickstart\n"
              "quickstart(QuickstartConfig(**json.loads(sys.argv[1])), command='test')\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(config)], env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    state = out / "sft" / "checkpoint" / "trainer_state.pt"
    try:
        deadline = time.monotonic() + 300
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before SFT saved: {proc.stderr.read().decode()[-500:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "sft" / "done.json").exists()
    resumed = quickstart(tiny_config(out, Path(cfg.sources[0])), command="test")
    assert numbers(resumed) == numbers(results)
