"""`codefoundry eval`'s sampling flags and an unloadable model: one line, exit 2, no traceback."""

from __future__ import annotations

import pytest

from codefoundry.cli import main


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min-p", "2"], "--min-p must be in [0, 1], got 2.0"),
        (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
        (["--temperature", "-1"], "--temperature must be >= 0, got -1.0"),
        (["--max-tokens", "0"], "--max-tokens must be >= 1, got 0"),
    ],
)
def test_a_bad_sampling_flag_is_refused_before_the_model_is_loaded(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    rc = main(
        ["eval", "--task", "humaneval", "--model", f"cf:{tmp_path / 'none'}", "--out", str(out), *flags]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"codefoundry eval: {message}"
    assert not out.exists()  # refused before anything was written


def test_a_model_that_does_not_load_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["eval", "--task", "humaneval", "--model", f"cf:{tmp_path / 'none'}", "--out", str(out),
               "--limit", "1", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"codefoundry eval: cf:{tmp_path / 'none'}: no such checkpoint directory"
