"""Three small gaps: an RL run whose metrics.jsonl holds a record damaged by hand still writes its summary
and curves; a problem file's optional string fields are type-checked with file and line; RFT's sampling
seeds give a problem the same samples with the cf: backend whatever `batch_problems` is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from tiny_kit import tiny_checkpoint  # noqa: E402

from codefoundry.tasks import parametric  # noqa: E402
from codefoundry.tasks.problem import Problem  # noqa: E402
from codefoundry.tasks.registry import ProblemFileError, load_problems_file, write_problems_file  # noqa: E402
from codefoundry.train.rft import RFTConfig, read_samples, rft  # noqa: E402
from codefoundry.train.rl.plots import plot_rl_curves  # noqa: E402
from codefoundry.train.rl.trainer import RLConfig, RLRun  # noqa: E402

GOOD_TRAIN = {"step": 1, "reward_mean": 0.5, "time_step_s": 2.0}
GOOD_EVAL = {"step": 1, "pass@1": 0.25, "low": 0.1, "high": 0.4}
DAMAGED = [
    {"step": 1, "reward_mean": 0.75},  # time_step_s deleted
    {"step": 1, "reward_mean": "high", "time_step_s": 1.0},  # not a number
    {"step": 1, "pass@1": 0.5, "low": None, "high": 0.6},
]


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("init"))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# -- 1. RL summary and curves over a hand-damaged metrics record ---------------------------------------------
def test_rl_curves_skip_damaged_records(tmp_path):
    metrics = write_jsonl(tmp_path / "metrics.jsonl", [GOOD_TRAIN, *DAMAGED, GOOD_EVAL])
    # before: a ConversionError drawing the None of `low` (a missing field: a KeyError)
    assert plot_rl_curves(metrics, tmp_path / "rl.png").stat().st_size > 0


def test_rl_resume_over_a_damaged_record_still_writes_the_summary(init_ckpt, tmp_path, capsys):
    problems = write_problems_file(
        tmp_path / "train.jsonl", parametric.generate(4, seed=1, families=("add_k",))
    )
    cfg = RLConfig(
        policy=str(init_ckpt), out=str(tmp_path / "run"), task=str(problems), eval_problems=0,
        steps=1, group_size=2, prompts_per_step=2, max_new_tokens=6, seed=0, threads=1, progress=False,
        tensorboard=False, reward_workers=2, save_every=1,
    )  # fmt: skip
    RLRun(cfg).train()
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as f:  # kept by the resume's truncation: step 1 <= the checkpoint's step
        f.write("".join(json.dumps(r) + "\n" for r in DAMAGED[:2]))
    capsys.readouterr()
    summary = RLRun(RLConfig(**{**cfg.__dict__, "steps": 2, "resume": True})).train()
    assert summary["step"] == 2 and json.loads((tmp_path / "run" / "summary.json").read_text())["step"] == 2
    assert (tmp_path / "run" / "rl_curves.png").is_file()
    assert isinstance(summary["mean_step_s"], float) and isinstance(summary["reward_mean_last"], float)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"codefoundry rl: warning: {metrics}: record 2 left out: time_step_s missing or not a number "
        "(and 1 more)"
    ]


WRONG = r"p\.jsonl:2: non-string field\(s\):"


# -- 2. optional string fields of a problem file -------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tests": ["assert True"], "canonical_solution": 5}, rf"{WRONG} canonical_solution \(int\)$"),
        ({"test": "def check(f): 0", "canonical_solution": ["x"]}, rf"{WRONG} canonical_solution \(list\)$"),
        # already refused (by the judge, when the problem is made): still one line naming file, line and field
        ({"tests": ["assert True"], "setup": None}, r"p\.jsonl:2: .*setup"),
    ],
)  # fmt: skip
def test_problem_file_optional_fields_must_be_strings(tmp_path, extra, message):
    good = {"task_id": "a", "prompt": "def f():\n", "entry_point": "f", "tests": ["assert True"]}
    bad = {"task_id": "b", "prompt": 'def f():\n    """doc"""\n', "entry_point": "f", **extra}
    path = write_jsonl(tmp_path / "p.jsonl", [good, bad])
    with pytest.raises(ProblemFileError, match=message):
        load_problems_file(path)


def test_problem_file_with_string_optional_fields_still_loads(tmp_path):
    rec = {"task_id": "a", "prompt": "def f():\n", "entry_point": "f", "tests": ["assert f() == 1"],
           "setup": "", "canonical_solution": "    return 1\n"}  # fmt: skip
    (p,) = load_problems_file(write_jsonl(tmp_path / "p.jsonl", [rec]))
    assert p.canonical_solution == "    return 1\n"


# -- 3. RFT seeds --------------------------------------------------------------------------------------------
PROBLEMS = [
    {"task_id": f"t/{n}", "prompt": f"def {n}(x):\n", "entry_point": n, "tests": [f"assert {n}(1) == 1"]}
    for n in ("ident", "same", "keep", "echo")
]  # fmt: skip


def sample(init_ckpt, problems: Path, out: Path, batch_problems: int) -> dict:
    cfg = RFTConfig(init=str(init_ckpt), out=str(out), problems=str(problems), n=2, temperature=1.0,
                    max_tokens=8, seed=7, batch_problems=batch_problems, workers=2, sample_only=True,
                    progress=False, device="cpu")  # fmt: skip
    rft(cfg)
    return {k: r["completion"] for k, r in read_samples(out / "samples.jsonl").items()}


def test_rft_cf_samples_do_not_depend_on_batch_problems_or_a_rerun(init_ckpt, tmp_path):
    problems = write_jsonl(tmp_path / "problems.jsonl", PROBLEMS)
    one = sample(init_ckpt, problems, tmp_path / "one", batch_problems=1)
    three = sample(init_ckpt, problems, tmp_path / "three", batch_problems=3)
    assert len(one) == 8 and len(set(one.values())) > 1  # sampled, not one repeated string
    assert three == one  # before, problem i of a chunk drew with seed + the chunk's first position
    # A rerun that has only the third problem left to draw draws what it drew before.
    path = tmp_path / "three" / "samples.jsonl"
    lines = [line for line in path.read_text().splitlines() if json.loads(line)["task_id"] != "t/keep"]
    path.write_text("".join(line + "\n" for line in lines))
    assert sample(init_ckpt, problems, tmp_path / "three", batch_problems=3) == one


@pytest.mark.parametrize("model", ["hf:some/model", "openai:m@http://localhost:8000/v1"])
def test_rft_other_backends_get_a_seed_per_chunk_from_its_first_task_id(model, tmp_path):
    """One call's samples seed torch's generator (hf) or ask for seed + k (openai): each chunk needs its own
    seed, far from the others, and a chunk starting with the same problem keeps it on a rerun."""
    from codefoundry.train.rft import chunk_seed  # new: before, the seed was seed + the chunk's position

    cfg = RFTConfig(init="ckpt", out=str(tmp_path), task="humaneval", model=model, seed=3)
    ps = [Problem(f"t/{i}", "def f():\n", "f", ("assert True",)) for i in range(50)]
    seeds = [chunk_seed(cfg, [p]) for p in ps]
    assert chunk_seed(cfg, ps[7:9]) == seeds[7] and chunk_seed(cfg, ps[7:]) == seeds[7]
    assert all(0 <= s < 2**30 for s in seeds)
    gaps = sorted(abs(a - b) for i, a in enumerate(seeds) for b in seeds[i + 1 :])
    assert gaps[0] > 1000  # seed + k for k < 1000 samples never reaches another chunk's seeds
    other = RFTConfig(init="ckpt", out=str(tmp_path), task="humaneval", model=model, seed=4)
    assert chunk_seed(other, ps[:1]) != seeds[0]
    cf = RFTConfig(init="ckpt", out=str(tmp_path), task="humaneval", seed=3)
    assert {chunk_seed(cf, [p]) for p in ps} == {3}  # cf: keys each sample by its prompt itself
