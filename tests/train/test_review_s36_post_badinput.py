"""Bad input to the post-training commands (`codefoundry sft`, `rft`, `rl`) and the loaders they use: a
resume over a torn trainer_state.pt or torn weights, or a metrics.jsonl that is a directory; a base
checkpoint whose config.json is not JSON; data and problem files with a byte that is not UTF-8 past the
first 8 KiB, a torn gzip stream, a problem its own checks refuse; an RFT samples.jsonl record that lacks a
field, a damaged rft_config.json; option values no run can use. Each is one line naming the file (and line
or record) and what is wrong, exit status 2, no traceback, and the run directory as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from tiny_kit import tiny_checkpoint  # noqa: E402

from codefoundry.cli import main  # noqa: E402
from codefoundry.jsonl import RecordError, iter_records  # noqa: E402
from codefoundry.tasks import parametric  # noqa: E402
from codefoundry.tasks.registry import ProblemFileError, load_problems_file, write_problems_file  # noqa: E402
from codefoundry.train import rft as R  # noqa: E402
from codefoundry.train import sft_data as D  # noqa: E402
from codefoundry.train.rl.trainer import RLConfig  # noqa: E402
from codefoundry.train.sft import SFTConfig  # noqa: E402


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint, SFT records, training problems, and a 1-step SFT run and RL run (checkpoints
    saved), built once; tests damage copies of the runs."""
    root = tmp_path_factory.mktemp("s36post")
    init = tiny_checkpoint(root)
    data = root / "greet.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"greet {n}", "completion": f"hello {n}!"}) + "\n"
                            for n in ["ada", "bob", "cy", "dee"] * 5))  # fmt: skip
    problems = root / "train.jsonl"
    write_problems_file(problems, parametric.generate(4, seed=3, families=("add_k",)))
    kit = {"init": init, "data": data, "problems": problems, "sft": root / "sft", "rl": root / "rl"}
    assert main(sft_argv(kit, kit["sft"], steps=1)) == 0
    assert main(rl_argv(kit, kit["rl"], steps=1)) == 0
    return kit


def sft_argv(kit, out: Path, steps: int) -> list[str]:
    return ["sft", "--init", str(kit["init"]), "--data", str(kit["data"]), "--out", str(out), "--steps",
            str(steps), "--seq-len", "64", "--batch-size", "2", "--warmup", "0", "--no-progress", "--device",
            "cpu"]  # fmt: skip


def rl_argv(kit, out: Path, steps: int) -> list[str]:
    return ["rl", "--policy", str(kit["init"]), "--task", str(kit["problems"]), "--out", str(out), "--steps",
            str(steps), "--eval-problems", "0", "--group-size", "2", "--prompts-per-step", "2",
            "--max-new-tokens", "4", "--threads", "1", "--reward-workers", "1", "--no-progress",
            "--no-tensorboard", "--device", "cpu"]  # fmt: skip


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


DAMAGE = {
    # a kill or a disk error tore them; they were tracebacks (RuntimeError, SafetensorError)
    "trainer_state.pt": lambda run: (run / "checkpoint" / "trainer_state.pt").write_bytes(b"PK\x03\x04torn"),
    "model.safetensors": lambda run: (run / "checkpoint" / "model.safetensors").write_bytes(b"\x10\x00torn"),
}


@pytest.mark.parametrize("stage", ["sft", "rl"])
@pytest.mark.parametrize("torn", sorted(DAMAGE))
def test_resume_over_a_torn_checkpoint_file_is_one_line_and_keeps_the_run(kit, tmp_path, capsys, stage, torn):
    run = tmp_path / "run"
    shutil.copytree(kit[stage], run)
    DAMAGE[torn](run)
    before = snapshot(run)
    argv = sft_argv(kit, run, steps=2) if stage == "sft" else rl_argv(kit, run, steps=2)
    err = one_line_error(capsys, [*argv, "--resume"])
    assert err.startswith(f"codefoundry {stage}: {run / 'checkpoint' / torn}: cannot read the ")
    assert snapshot(run) == before


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_resume_with_metrics_jsonl_a_directory_is_one_line(kit, tmp_path, capsys, stage):
    run = tmp_path / "run"
    shutil.copytree(kit[stage], run)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()  # was IsADirectoryError, a traceback
    argv = sft_argv(kit, run, steps=2) if stage == "sft" else rl_argv(kit, run, steps=2)
    assert (
        one_line_error(capsys, [*argv, "--resume"])
        == f"codefoundry {stage}: {run / 'metrics.jsonl'}: Is a directory"
    )


@pytest.mark.parametrize("text", [b'{"dim": \n', b"\xff\xfe{}"])
def test_an_init_whose_config_json_is_not_json_names_it(kit, tmp_path, capsys, text):
    init = tmp_path / "init"
    shutil.copytree(kit["init"], init)
    (init / "config.json").write_bytes(text)  # the message named no file
    err = one_line_error(capsys, sft_argv({**kit, "init": init}, tmp_path / "out", steps=1))
    assert err.startswith(f"codefoundry sft: {init / 'config.json'}: not a JSON config (")


def big_jsonl_with_a_bad_byte(path: Path, record: dict) -> int:
    """2000 good lines (far past the decoder's 8 KiB chunk), then one with a stray byte; its line number."""
    good = "".join(json.dumps({**record, "n": i}) + "\n" for i in range(2000)).encode()
    path.write_bytes(good + b'{"x": "\xff"}\n')
    return 2001


def test_sft_data_not_utf8_past_the_first_chunk_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    line = big_jsonl_with_a_bad_byte(path, {"prompt": "p", "completion": "c"})
    # it said "not UTF-8 text (invalid start byte at byte 7488)": no line, and an offset into a chunk
    with pytest.raises(D.SFTDataError, match=rf"^{path}:{line}: not UTF-8 \(byte 8 of the line\)$"):
        D.read_records(path)


def test_jsonl_records_not_utf8_past_the_first_chunk_names_the_line(tmp_path):
    path = tmp_path / "problems.jsonl"
    line = big_jsonl_with_a_bad_byte(path, {"task_id": "t"})  # the reader of problem files, samples, ...
    with pytest.raises(RecordError, match=rf"^{path}:{line}: not UTF-8 \(byte 8 of the line\)$"):
        list(iter_records(path))


def test_a_torn_gzip_problem_file_is_one_line(tmp_path):
    path = tmp_path / "problems.jsonl.gz"
    path.write_bytes(b"not gzip")  # was BadGzipFile, a traceback
    with pytest.raises(RecordError, match=rf"^{path}: cannot read \(Not a gzipped file"):
        load_problems_file(path)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"setup": 5}, "Judge.setup must be a str, got int"),
        ({"tests": []}, "Judge.tests is empty"),
        ({"tests": [1, 2]}, "Judge.tests must be a tuple of str"),  # was run as the tests "1" and "2"
        ({"entry_point": "not a name"}, "Judge.entry_point must be the name"),
    ],
)
def test_a_problem_its_own_checks_refuse_is_named_by_file_and_line(kit, tmp_path, change, why):
    lines = kit["problems"].read_text().splitlines(keepends=True)
    record = {**json.loads(lines[0]), "task_id": "z", **change}
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(lines) + json.dumps(record) + "\n")
    with pytest.raises(ProblemFileError, match=rf"^{path}:{len(lines) + 1}: problem 'z': {why}"):
        load_problems_file(path)


def test_rft_samples_record_lacking_a_field_names_the_file_and_record(tmp_path):
    path = tmp_path / R.SAMPLES
    good = {"task_id": "t", "sample": 0, "prompt": "p", "completion": "c", "passed": False, "fraction": 0.0,
            "status": "failed"}  # fmt: skip
    path.write_text(
        json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "passed"}) + "\n"
    )
    # it was a KeyError: "codefoundry rft: passed"
    with pytest.raises(ValueError, match=rf"^{path}: record 2 lacks passed \(or has the wrong type\)$"):
        R.read_samples(path)


def test_rft_damaged_config_names_the_file(tmp_path):
    (tmp_path / R.CONFIG).write_text("{")
    cfg = R.RFTConfig(init="ckpt", out=str(tmp_path), problems="p.jsonl")
    with pytest.raises(ValueError, match=rf"^{tmp_path / R.CONFIG}: not a JSON config \("):
        R.check_config(cfg, tmp_path)


@pytest.mark.parametrize(
    "field",
    [
        {"lr": float("inf")},  # trained to NaN weights and saved them
        {"weight_decay": float("nan")},  # torch's "Invalid weight_decay value: nan"
        {"entropy_coef": float("nan")},  # trained silently
        {"format_penalty": float("nan")},
        {"temperature": float("inf")},  # generate's error, after the setup
        {"eval_temperature": float("nan")},
        {"threads": -1},  # torch's "set_num_threads expects a positive integer"
        {"reward_workers": -1},  # "workers must be >= 1": no field named
        {"group_size": 1, "dynamic_sampling": True},  # every group dropped: no step trained
    ],
)
def test_rl_option_values_no_run_can_use_name_the_field(field):
    name = next(iter(field))
    with pytest.raises(ValueError, match=rf"^RLConfig\.{name}: invalid value"):
        RLConfig(policy="p", out="o", **field)


@pytest.mark.parametrize("field", [{"lr": float("inf")}, {"weight_decay": float("inf")}])
def test_sft_infinite_rates_name_the_field(field):
    name = next(iter(field))
    with pytest.raises(ValueError, match=rf"^SFTConfig\.{name}: invalid value inf"):
        SFTConfig(init="i", data="d", out="o", **field)


@pytest.mark.parametrize(("stage", "record"), [("sft", '"loss"'), ("rl", '"reward_mean"')])
def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_a_summary(kit, tmp_path, stage, record):
    # With --save-every 0 (sft's default; rl saved every 50 steps) a Ctrl-C lost every step since the
    # last checkpoint: no checkpoint, no summary. The signal goes to the process group, as a terminal's
    # Ctrl-C does (rl's sandbox workers get it too).
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    argv = sft_argv(kit, out, steps=100_000) if stage == "sft" else rl_argv(kit, out, steps=100_000)
    command = [sys.executable, "-m", "codefoundry.cli", *argv, "--save-every", "0"]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count(record) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "interrupted" and 2 <= summary["step"] < 100_000
    state = torch.load(out / "checkpoint" / "trainer_state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == summary["step"] and f"step {summary['step']}/100000" in stdout
