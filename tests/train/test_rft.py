"""Rejection-sampling fine-tuning end to end with a replay backend: the sandbox decides what is kept
(only passing, distinct completions), the sample file resumes without redrawing, a task from the
registry works, and the kept data fine-tunes a tiny checkpoint; plus the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from tiny_kit import tiny_checkpoint  # noqa: E402

from codefoundry.cli import main as cli_main  # noqa: E402
from codefoundry.train.rft import RFTConfig, read_samples, rft  # noqa: E402

PROBLEMS = [
    ("t/add", "def add(a, b):\n", "add", ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]),
    ("t/neg", "def neg(x):\n", "neg", ["assert neg(3) == -3"]),
    ("t/up", "def up(s):\n", "up", ["assert up('ab') == 'AB'"]),
]
# Three samples per prompt: right, wrong, right again (a duplicate); "up" is never solved.
ANSWERS = {
    "t/add": ["    return a + b\n", "    return a - b\n", "    return a + b\n"],
    "t/neg": ["    return x\n", "    return -x\n", "    return 0 - x\n"],
    "t/up": ["    return s\n", "    return s.lower()\n", "    return None\n"],
}
PASSED = {"t/add": [True, False, True], "t/neg": [False, True, True], "t/up": [False, False, False]}


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("init"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("files")
    problems, replay = root / "problems.jsonl", root / "replay.jsonl"
    problems.write_text("".join(
        json.dumps({"task_id": t, "prompt": p, "entry_point": e, "tests": tests}) + "\n"
        for t, p, e, tests in PROBLEMS
    ))  # fmt: skip
    replay.write_text("".join(
        json.dumps({"prompt": p, "completion": c}) + "\n" for t, p, _, _ in PROBLEMS for c in ANSWERS[t]
    ))  # fmt: skip
    return problems, replay


def small(init_ckpt, out, **overrides) -> RFTConfig:
    base = dict(init=str(init_ckpt), out=str(out), n=3, seq_len=128, batch_size=2, steps=2, lr=1e-3,
                batch_problems=2, workers=2, progress=False, device="cpu")  # fmt: skip
    return RFTConfig(**{**base, **overrides})


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_only_passing_distinct_samples_are_kept_and_fine_tuned(init_ckpt, files, tmp_path):
    problems, replay = files
    summary = rft(small(init_ckpt, tmp_path, problems=str(problems), model=f"replay:{replay}"))
    samples = read_samples(tmp_path / "samples.jsonl")
    assert {k: [samples[(k, j)]["passed"] for j in range(3)] for k in PASSED} == PASSED
    kept = rows(tmp_path / "rft_data.jsonl")
    assert [(r["task_id"], r["completion"]) for r in kept] == [
        ("t/add", "    return a + b\n"),  # the duplicate pass is kept once
        ("t/neg", "    return -x\n"),
        ("t/neg", "    return 0 - x\n"),
    ]
    assert all(r["prompt"] == dict((t, p) for t, p, _, _ in PROBLEMS)[r["task_id"]] for r in kept)
    c = summary["counts"]
    assert (c["samples"], c["passed"], c["problems_solved"], c["kept"]) == (9, 4, 2, 3)
    s = summary["sft"]
    assert s["step"] == 2 and s["train_data"]["examples"] == 3 and s["config"]["prompt_format"] == "plain"
    assert Path(s["checkpoint"], "model.safetensors").is_file()


def test_the_sample_file_resumes_without_redrawing(init_ckpt, files, tmp_path):
    problems, replay = files
    cfg = small(init_ckpt, tmp_path, problems=str(problems), model=f"replay:{replay}", sample_only=True)
    first = rft(cfg)
    full = (tmp_path / "samples.jsonl").read_text()
    # A kill mid-write: the last problem's records gone and a torn line left behind.
    lines = full.splitlines(keepends=True)
    (tmp_path / "samples.jsonl").write_text("".join(lines[:-3]) + lines[-3][:20])
    again = rft(cfg)  # draws only t/up again (the replay serves it from its start)
    assert again["counts"] == first["counts"]
    assert read_samples(tmp_path / "samples.jsonl").keys() == read_samples_text(full).keys()
    # Nothing missing: a backend with no recordings is never asked.
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    (tmp_path / "rft_config.json").unlink()
    assert rft(small(init_ckpt, tmp_path, problems=str(problems), model=f"replay:{empty}", sample_only=True))
    with pytest.raises(ValueError, match="recorded with n=3, this run has n=2"):
        rft(small(init_ckpt, tmp_path, problems=str(problems), model=f"replay:{empty}", n=2))


def read_samples_text(text: str) -> dict:
    return {(r["task_id"], r["sample"]): r for r in map(json.loads, text.splitlines())}


def test_a_registry_task_with_canonical_answers_all_pass(init_ckpt, tmp_path):
    from codefoundry.tasks.registry import load_task

    problems = load_task("parametric-train")[:2]
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps({"prompt": p.prompt, "completion": p.canonical_solution}) + "\n"
                              for p in problems))  # fmt: skip
    cfg = small(init_ckpt, tmp_path / "out", task="parametric-train", limit=2, n=1, model=f"replay:{replay}",
                sample_only=True)  # fmt: skip
    summary = rft(cfg)
    assert summary["counts"]["passed"] == 2 and summary["sft"] is None


def test_cli_rft_smoke_and_errors(init_ckpt, files, tmp_path, capsys):
    problems, replay = files
    argv = ["rft", "--init", str(init_ckpt), "--out", str(tmp_path), "--problems", str(problems),
            "--model", f"replay:{replay}", "--n", "3", "--steps", "1", "--seq-len", "128", "--batch-size", "2",
            "--workers", "2", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "9 samples of 3 problems: 4 passed (2 problems solved); 3 kept" in out and "step 1/1" in out
    assert cli_main(["rft", "--init", str(init_ckpt), "--out", str(tmp_path / "x")]) == 2
    assert "give exactly one of task or problems" in capsys.readouterr().err
    assert cli_main(["rft", "--init", str(init_ckpt), "--out", str(tmp_path / "y"), "--task", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("seconds", [0.0, float("inf"), float("nan"), 1e9])
def test_a_cpu_limit_the_sandbox_cannot_take_is_refused_before_any_sampling(seconds, tmp_path):
    # Built after a chunk was sampled, an out-of-range Limits used to raise only then, losing the samples.
    with pytest.raises(ValueError, match=r"RFTConfig.cpu_seconds: invalid value"):
        RFTConfig(init="ckpt", out=str(tmp_path), task="humaneval", cpu_seconds=seconds)
