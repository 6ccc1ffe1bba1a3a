"""`codefoundry recipe rl-estimators` on a tiny budget: a planted corpus for the base model, two estimator
arms of two RL steps, a few held-out problems. It checks the table (Markdown, CSV, PNG) and results, that
a rerun skips finished arms and a lost arm is redone with the same numbers, that running arms in two
processes gives the numbers of running them one by one, the YAML loader's errors, and the CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_kit import numbers, write_corpus

pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("pyarrow")
pytest.importorskip("yaml")

from codefoundry.recipes.recipe import RecipeConfigError, load_config, parse_overrides  # noqa: E402
from codefoundry.recipes.rl_estimators import (  # noqa: E402
    RLEstimatorsConfig,
    RLLengthConfig,
    RLRolloutsConfig,
    run_rl_estimators,
)

ARMS = ("grpo", "rloo")
TIMING = ("wall_s", "rl_wall_s", "eval_s")
REPO = Path(__file__).resolve().parents[2]


def tiny(out: Path, corpus: Path, **overrides) -> RLEstimatorsConfig:
    base = dict(
        sources=[str(corpus)], decontaminate=["builtin"], vocab_size=320, tokenizer_sample_mb=1, seq_len=160,
        pretrain_batch=4, pretrain_eval_batches=1, sft_batch=4, pretrain_steps=2, sft_steps=3, workers=1,
    )  # fmt: skip
    values = dict(
        out=str(out), estimators=ARMS, base=base, steps=2, group_size=2, prompts_per_step=2, max_new_tokens=8,
        eval_every=1, curve_problems=2, curve_samples=1, eval_problems=3, eval_samples=5, parallel=1,
        threads=1, workers=1, base_threads=1, save_every=1, progress=False,
    )  # fmt: skip
    return RLEstimatorsConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), seed=11)


@pytest.fixture(scope="module")
def run_a(corpus, tmp_path_factory) -> tuple[RLEstimatorsConfig, dict]:
    cfg = tiny(tmp_path_factory.mktemp("rle") / "a", corpus)
    return cfg, run_rl_estimators(cfg, command="test-command")


def test_two_arms_end_to_end_write_table_csv_and_plot(run_a):
    cfg, results = run_a
    root = Path(cfg.out)
    assert json.loads((root / "results.json").read_text())["rows"] == results["rows"]
    assert [r["arm"] for r in results["rows"]] == ["sft", *ARMS]
    for row in results["rows"]:
        assert row["problems"] == cfg.eval_problems and row["samples"] == cfg.eval_problems * cfg.eval_samples
        assert 0 <= row["pass@1_low"] <= row["pass@1"] <= row["pass@1_high"] <= 1
        assert row["pass@1"] <= row["pass@5"] <= 1  # pass@k grows with k on the same samples
        assert row["wall_s"] >= 0 and row["response_tokens"] >= 0
    for row in results["rows"][1:]:
        # the curve: step 0 (the SFT model) and every eval_every steps up to the last
        assert [step for step, _ in row["curve"]] == [0, 1, 2]
        assert row["steps_to_best"] in (0, 1, 2)
        assert row["curve_best"] == max(value for _, value in row["curve"])
        assert row["delta_low"] <= row["delta_pass@1"] <= row["delta_high"]
        assert row["delta_pass@1"] == pytest.approx(row["pass@1"] - results["rows"][0]["pass@1"])
    md = (root / "rl_estimators.md").read_text()
    assert md.splitlines()[2] == "Command: `test-command`"
    header = next(line for line in md.splitlines() if line.startswith("| estimator"))
    for column in ("pass@1 (95% CI)", "pass@5 (95% CI)", "Δ pass@1 vs SFT", "steps to best",
                   "mean response length", "wall time"):  # fmt: skip
        assert column in header
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + 1 + len(ARMS)
    with (root / "rl_estimators.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["arm"] for r in table] == ["sft", *ARMS]
    assert float(table[1]["pass@1"]) == results["rows"][1]["pass@1"]
    assert (root / "rl_estimators.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_finished_arms_and_redoes_a_lost_one(run_a):
    cfg, first = run_a
    arms = Path(cfg.out) / "arms"
    stamps = {a: (arms / a / "done.json").stat().st_mtime_ns for a in ("sft", *ARMS)}
    again = run_rl_estimators(cfg, command="test-command")
    assert {a: (arms / a / "done.json").stat().st_mtime_ns for a in stamps} == stamps  # nothing recomputed
    assert again["rows"] == first["rows"]
    # An arm whose marker is gone (killed during its final evaluation) evaluates again, same numbers.
    (arms / "rloo" / "done.json").unlink()
    redone = run_rl_estimators(cfg, command="test-command")
    assert (arms / "grpo" / "done.json").stat().st_mtime_ns == stamps["grpo"]
    assert numbers(redone["rows"], TIMING) == numbers(first["rows"], TIMING)


def test_other_settings_in_the_same_directory_are_refused(run_a):
    cfg, _ = run_a
    changed = RLEstimatorsConfig(**{**cfg.__dict__, "steps": 3})
    with pytest.raises(ValueError, match=r"other settings \(steps\)"):
        run_rl_estimators(changed)


def test_arms_in_two_processes_give_the_numbers_of_one_by_one(run_a, tmp_path):
    cfg, first = run_a
    parallel = RLEstimatorsConfig(**{**cfg.__dict__, "out": str(tmp_path / "b"), "parallel": 2,
                                     "base_run": str(Path(cfg.out) / "base")})  # fmt: skip
    # OUT/base of the first run lacks quickstart.json only if it was never a quickstart run: it is one.
    results = run_rl_estimators(parallel, command="test-command")
    assert numbers(results["rows"], TIMING) == numbers(first["rows"], TIMING)


def _shared(cfg: RLEstimatorsConfig, out: Path) -> dict:
    """The tiny run's settings without its estimator list, on the first run's base (read only)."""
    values = {k: v for k, v in cfg.__dict__.items() if k != "estimators"}
    return {**values, "out": str(out), "base": {}, "base_run": str(Path(cfg.out) / "base")}


def test_rollouts_arms_sample_their_own_group_sizes(run_a, tmp_path):
    cfg, first = run_a
    rollouts = RLRolloutsConfig(**_shared(cfg, tmp_path / "n"), rollouts=(2, 3))
    results = run_rl_estimators(rollouts, command="test-command")
    assert [r["arm"] for r in results["rows"]] == ["sft", "n2", "n3"]
    assert (
        numbers(results["rows"], TIMING)[0] == numbers(first["rows"], TIMING)[0]
    )  # the same SFT model and evaluation
    for n in (2, 3):
        records = [
            json.loads(line) for line in (tmp_path / "n" / "arms" / f"n{n}" / "rl" / "metrics.jsonl").open()
        ]
        train = [r for r in records if "reward_mean" in r]
        # every step graded prompts_per_step groups of n samples
        assert train and all(r["samples"] == cfg.prompts_per_step * n for r in train), train[0]
    md = (tmp_path / "n" / "rl_rollouts.md").read_text()
    assert "| rollouts per prompt |" in md and "| N = 3 |" in md.replace("| N = 3 | ", "| N = 3 |")
    assert "estimator reinforce_pp_baseline" in md


def test_length_arms_train_short_and_evaluate_at_one_budget(run_a, tmp_path):
    cfg, _ = run_a
    length = RLLengthConfig(**{**_shared(cfg, tmp_path / "l"), "eval_max_new_tokens": 8}, lengths=(2, 8))
    results = run_rl_estimators(length, command="test-command")
    short, full = results["rows"][1:]
    assert (short["arm"], full["arm"]) == ("len2", "len8")
    assert short["rl_response_tokens"] <= 2 < 8  # rollouts were cut at 2 tokens...
    assert short["rl_truncated"] > 0.5
    # ...but its evaluation had the common 8-token budget, like every other row
    assert results["config"]["eval_max_new_tokens"] == 8
    assert "| max response (tokens) |" in (tmp_path / "l" / "rl_length.md").read_text()


def test_yaml_fills_the_dataclass_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "rl.yaml"
    path.write_text("# codefoundry recipe rl-estimators\nlaptop:\n  steps: 5\n  estimators: [grpo, gae]\n"
                    "  lr: 1\ngpu:\n  steps: 50\n  device: cuda\n")  # fmt: skip
    laptop = load_config(RLEstimatorsConfig, path, "laptop", overrides=parse_overrides(["seed=3"]), out="x")
    assert (laptop.steps, laptop.estimators, laptop.lr, laptop.seed, laptop.out) == (
        5,
        ("grpo", "gae"),
        1.0,
        3,
        "x",
    )
    assert load_config(RLEstimatorsConfig, path, "gpu").device == "cuda"
    path.write_text("laptop:\n  steps: 5\n  stepz: 6\ngpu: {}\n")
    with pytest.raises(RecipeConfigError) as err:
        load_config(RLEstimatorsConfig, path, "laptop")
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "'stepz'" in message
    path.write_text("laptop:\n  steps: many\n")
    with pytest.raises(RecipeConfigError, match=r"rl.yaml \[laptop\]: key 'steps': expected int, got 'many'"):
        load_config(RLEstimatorsConfig, path, "laptop")
    path.write_text("laptop: {}\ncloud: {}\n")
    with pytest.raises(RecipeConfigError, match="unknown section 'cloud'"):
        load_config(RLEstimatorsConfig, path, "laptop")
    with pytest.raises(RecipeConfigError, match="override: unknown key 'nope'"):
        load_config(RLEstimatorsConfig, None, "laptop", overrides={"nope": 1})
    with pytest.raises(RecipeConfigError, match="invalid estimators"):
        load_config(RLEstimatorsConfig, None, "laptop", overrides={"estimators": ["grpo", "ppo2"]})


@pytest.mark.parametrize("name, cls", [("rl-estimators", RLEstimatorsConfig), ("rl-rollouts", RLRolloutsConfig),
                                       ("rl-length", RLLengthConfig)])  # fmt: skip
def test_committed_config_has_both_variants_and_starts_with_its_command(name, cls):
    path = REPO / "configs" / "recipes" / f"{name}.yaml"
    assert path.read_text().splitlines()[0].startswith(f"# codefoundry recipe {name}")
    for variant in ("laptop", "gpu"):
        assert len(load_config(cls, path, variant).arms()) >= 3


def test_cli_help_and_a_bad_key_in_one_line(tmp_path):
    cli = [sys.executable, "-c", "import sys; from codefoundry.cli import main; sys.exit(main())"]
    help_run = subprocess.run([*cli, "recipe", "rl-estimators", "--variant", "laptop", "--help"],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert help_run.returncode == 0, help_run.stderr
    assert "--variant" in help_run.stdout and "rl-estimators" in help_run.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("laptop:\n  stepz: 1\ngpu: {}\n")
    run = subprocess.run([*cli, "recipe", "rl-estimators", "--config", str(bad), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and "'stepz'" in lines[0], run.stderr
