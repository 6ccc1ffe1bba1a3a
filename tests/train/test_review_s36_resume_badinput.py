"""Bad input to `codefoundry pretrain --resume` left by a killed or damaged run: a checkpoint whose weights
were deleted, a metrics.jsonl with a line that is not UTF-8 or not a record, a record whose step is not a
number, a metrics.jsonl that is a directory. Each is one line on stderr naming the file (and line) and
what is wrong, exit status 2, no traceback, and the run directory as it was; a torn last line, whatever
its bytes, is what a killed writer leaves and is skipped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from codefoundry.cli import main
from codefoundry.train import metrics as M


def pretrain_argv(corpus: Path, tok_dir: Path, out: Path, steps: int) -> list[str]:
    return [
        "pretrain", "--data", str(corpus), "--tokenizer", str(tok_dir), "--out", str(out),
        "--size", "tiny", "--steps", str(steps), "--seq-len", "32", "--batch-size", "2", "--warmup", "1",
        "--eval-every", "0", "--no-progress", "--no-final-eval",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(corpus, tok_dir, tmp_path_factory) -> Path:
    """A run directory of 2 steps (checkpoint, metrics.jsonl), built once; tests damage copies of it."""
    out = tmp_path_factory.mktemp("s36") / "run"
    assert main(pretrain_argv(corpus, tok_dir, out, steps=2)) == 0
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def resume(capsys, corpus, tok_dir, out: Path) -> tuple[int, str]:
    """(exit status, stderr) of resuming `out` for one more step; the output of the fixture is dropped."""
    capsys.readouterr()
    code = main([*pretrain_argv(corpus, tok_dir, out, steps=3), "--resume"])
    err = capsys.readouterr().err
    # the resume's note that steps changed comes first; the error, when there is one, is the last line
    return code, err.splitlines()[-1] if err else ""


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in [out / M.METRICS, *sorted((out / "checkpoint").iterdir())]}


def test_resume_with_the_weights_deleted_names_the_weights(run, corpus, tok_dir, capsys):
    (run / "checkpoint" / "model.safetensors").unlink()
    code, err = resume(capsys, corpus, tok_dir, run)
    assert code == 2
    assert err == f"codefoundry pretrain: {run / 'checkpoint'}: nothing to resume (no model.safetensors)"


@pytest.mark.parametrize(
    ("line", "what"),
    [
        (b"\xff\xfe {}\n", ":{n}: not UTF-8 (byte 1 of the line)"),  # a stray byte: was no file named
        (b"[1, 2]\n", ":{n}: not a JSON object (a list)"),  # was a traceback (AttributeError)
        (b'{"step": "x"}\n', ": record {n} has step 'x', not a number"),  # was a traceback (TypeError)
    ],
)
def test_resume_over_a_bad_metrics_line_is_one_line_and_keeps_the_run(
    run, corpus, tok_dir, capsys, line, what
):
    n = len((run / M.METRICS).read_bytes().splitlines()) + 1  # the bad line's number, and its record's
    with (run / M.METRICS).open("ab") as f:
        f.write(line)
    before = snapshot(run)
    code, err = resume(capsys, corpus, tok_dir, run)
    assert code == 2
    assert err == f"codefoundry pretrain: {run / M.METRICS}{what.format(n=n)}"
    assert snapshot(run) == before


def test_resume_with_metrics_jsonl_a_directory_is_one_line(run, corpus, tok_dir, capsys):
    (run / M.METRICS).unlink()
    (run / M.METRICS).mkdir()
    code, err = resume(capsys, corpus, tok_dir, run)
    assert code == 2
    assert err == f"codefoundry pretrain: {run / M.METRICS}: Is a directory"  # was IsADirectoryError


def test_resume_after_a_torn_non_utf8_last_line_keeps_every_record(run, corpus, tok_dir, capsys):
    kept = (run / M.METRICS).read_bytes()
    with (run / M.METRICS).open("ab") as f:
        f.write(b'{"step": 3, "note": "\xc3')  # killed in the middle of a character and of the line
    code, err = resume(capsys, corpus, tok_dir, run)
    assert code == 0, err
    after = (run / M.METRICS).read_bytes()
    assert after.startswith(kept)
    assert [r["step"] for r in M.read_metrics(run / M.METRICS)][-2:] == [3, 3]  # the step and its eval


def test_read_metrics_skips_a_torn_last_line_that_is_not_utf8(tmp_path):
    path = tmp_path / M.METRICS
    path.write_bytes(b'{"step": 1}\n{"step": 2, "x": "\xe2\x82')
    assert M.read_metrics(path) == [{"step": 1}]  # was UnicodeDecodeError
