"""Session 34 review of pretraining: command-line errors as one line, shards that are not .npy files,
resumes that change what the checkpoint cannot see in the config (the tokenizer, the data's content, the
number of ranks, a dropped time budget), and exact resume with every option on."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from codefoundry.cli import main as cli_main  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.train import data as D  # noqa: E402
from codefoundry.train import metrics as M  # noqa: E402
from codefoundry.train.pretrain import PretrainConfig, pretrain  # noqa: E402
from codefoundry.train.pretrain import main as pretrain_main  # noqa: E402


def small(corpus, tok_dir, out, **overrides) -> PretrainConfig:
    base = dict(
        data=str(corpus), tokenizer=str(tok_dir), out=str(out), size="tiny", steps=1, batch_size=2,
        seq_len=32, log_every=1, eval_every=0, save_every=0, eval_batches=1, progress=False,
        final_eval=False, device="cpu",
    )  # fmt: skip
    return PretrainConfig(**{**base, **overrides})


def resume_warning(err: str) -> str:
    lines = [line for line in err.splitlines() if "will not reproduce" in line]
    assert len(lines) <= 1, err
    return lines[0] if lines else ""


# ------------------------------------------------------------------------- errors as one line
@pytest.mark.parametrize(("option", "value"), [("--betas", "0.9"), ("--shape", "64,2,2")])
def test_cli_pretrain_a_tuple_of_the_wrong_length_is_one_line(tmp_path, capsys, option, value):
    # argparse reads the numbers, PretrainConfig's type check refuses the length with a TypeError, which
    # the command let through as a traceback.
    argv = ["pretrain", "--data", "d", "--tokenizer", "t", "--out", str(tmp_path), option, value]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"codefoundry pretrain: PretrainConfig.{option[2:]}: expected"), err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("field", "value"),
    [("mtp_weight", -1.0), ("mtp_weight", float("nan")), ("peak_tflops", 0.0), ("peak_tflops", float("nan")),
     ("lr", float("inf"))],
)  # fmt: skip
def test_pretrain_config_refuses_weights_and_rates_no_run_can_use(field, value):
    # Accepted, a negative MTP weight trained the MTP heads to be wrong (the loss falls without bound), a
    # peak of 0 failed only once the data was opened (on rank 0 alone under DDP, naming no config), a NaN
    # peak made every MFU NaN, and an infinite learning rate made the first step NaN.
    with pytest.raises(ValueError, match=rf"^PretrainConfig\.{field}: invalid value"):
        PretrainConfig(data="d", tokenizer="t", out="o", mtp_depth=1, **{field: value})


def test_module_entry_point_reports_bad_data_in_one_line(corpus, tok_dir, tmp_path, capsys):
    # `python -m codefoundry.train.pretrain --json CFG` is what torchrun launches: a config that reads
    # but names an empty data directory ended in a traceback on every rank.
    (tmp_path / "empty").mkdir()
    spec = tmp_path / "cfg.json"
    spec.write_text(json.dumps(asdict(small(tmp_path / "empty", tok_dir, tmp_path / "run"))))
    assert pretrain_main(["--json", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err == f"{tmp_path / 'empty'}: no *.npy token shards and no source files with suffixes ('.py',)\n"


def test_an_empty_npy_shard_is_named_in_one_line(tmp_path):
    # A zero-byte shard (a data build killed before it wrote) raised numpy's bare EOFError, "No data left
    # in file", naming no file, and the command printed a traceback.
    shard = tmp_path / "shard_00000.npy"
    shard.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"^{shard}: not a \.npy file"):
        D.open_shard(shard)


def test_a_shard_that_is_not_npy_gets_no_advice_to_unpickle_it(tmp_path):
    # numpy falls back to pickle for a file without its magic string, and then advises
    # `allow_pickle=`: advice to execute whatever the file holds.
    shard = tmp_path / "shard_00000.npy"
    shard.write_text("id,token\n1,2\n")
    with pytest.raises(ValueError, match=rf"^{shard}: not a \.npy file") as e:
        D.open_shard(shard)
    assert "pickle" not in str(e.value)


def test_a_truncated_shard_is_still_named(tmp_path):
    shard = tmp_path / "shard_00000.npy"
    np.save(shard, np.arange(1000, dtype=np.uint16))
    shard.write_bytes(shard.read_bytes()[:600])
    with pytest.raises(ValueError, match=rf"^{shard}: "):
        D.open_shard(shard)


def test_a_directory_of_one_file_trains_on_it_whatever_its_name(corpus, tok_dir, tmp_path):
    # A lone file whose name hashes below `holdout` was held out whole, leaving "the training stream has
    # 0 tokens, fewer than seq_len + 1": about one file name in fifty could not be trained on alone.
    # (Shards already keep a lone document for training.)
    name = next(f"m{i}.py" for i in range(10_000) if D.holdout_score(f"m{i}.py") < 0.02)
    (tmp_path / "one").mkdir()
    shutil.copyfile(corpus / "textwrap.py", tmp_path / "one" / name)
    data = D.PretrainData(D.DataConfig(str(tmp_path / "one"), seq_len=32), cft.load(tok_dir))
    assert data.n_train_tokens > 0 and data.n_val_tokens == 0


# ------------------------------------------------------------- resumes that change the unseen
def test_resume_refuses_another_tokenizer_of_the_same_size(corpus, tok_dir, tmp_path):
    # Only the vocabulary's size was compared: a tokenizer trained on other files, with as many tokens,
    # resumed silently, every embedding row now standing for another token.
    cfg = small(corpus, tok_dir, tmp_path / "run")
    pretrain(cfg)
    files = [p for p in cft.default_corpus() if p.parent.name.startswith("python")][40:46]
    other = tmp_path / "other_tok"
    cft.train(files, vocab_size=512, out=other)
    assert cft.load(other).get_vocab_size() == cft.load(tok_dir).get_vocab_size()
    with pytest.raises(ValueError, match="tokenizer") as e:
        pretrain(replace(cfg, tokenizer=str(other), resume=True, steps=2))
    assert "\n" not in str(e.value) and str(other) in str(e.value)
    assert pretrain(replace(cfg, resume=True, steps=2))["step"] == 2  # the same one, from a copy, resumes


def test_resume_refuses_a_checkpoint_whose_model_this_version_builds_otherwise(corpus, tok_dir, tmp_path):
    # A top-1 MoE checkpoint written before its gate became the router's probability (norm_topk_prob): the
    # same options now build another model, and the weights went on under other arithmetic.
    cfg = small(corpus, tok_dir, tmp_path / "run", moe_experts=2, moe_top_k=1)
    pretrain(cfg)
    config = tmp_path / "run" / "checkpoint" / "config.json"
    written = json.loads(config.read_text())
    assert written["moe"]["norm_topk_prob"] is False
    written["moe"]["norm_topk_prob"] = True
    config.write_text(json.dumps(written))
    with pytest.raises(ValueError, match=r"cannot resume: its model has moe=.*this run builds moe=") as e:
        pretrain(replace(cfg, resume=True, steps=2))
    assert "\n" not in str(e.value)


def test_resume_says_when_the_data_directory_changed(corpus, tok_dir, tmp_path, capsys):
    # The data was compared by its path alone: files added or removed under the same directory changed
    # the stream every step reads, and the resume went on as if it were exact.
    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    cfg = small(data, tok_dir, tmp_path / "run", steps=2)
    pretrain(cfg)
    pretrain(replace(cfg, resume=True))
    assert resume_warning(capsys.readouterr().err) == ""  # unchanged data: nothing to say
    (data / "textwrap.py").unlink()
    pretrain(replace(cfg, resume=True))
    line = resume_warning(capsys.readouterr().err)
    assert "data" in line and "changed" in line, line


def test_resume_of_a_budgeted_run_without_its_budget_says_so(corpus, tok_dir, tmp_path, capsys):
    from codefoundry.train import budget

    # Dropping --time-budget-s on resume trains to the steps asked (1000) instead of the fitted count
    # (FIT_AFTER): another schedule, and nothing said.
    cfg = small(corpus, tok_dir, tmp_path / "run", steps=1000, warmup=1, time_budget_s=1e-3, log_every=100)
    first = pretrain(cfg)
    assert first["steps"] == budget.FIT_AFTER
    capsys.readouterr()
    pretrain(replace(cfg, resume=True, time_budget_s=None, steps=budget.FIT_AFTER + 1))
    line = resume_warning(capsys.readouterr().err)
    assert "time_budget_s=None (was 0.001)" in line, line


def test_resume_of_a_two_rank_run_on_one_rank_says_the_world_size_changed(corpus, tok_dir, tmp_path, capsys):
    # Each rank draws its own batches and a step sees world_size of them: a run resumed on fewer ranks
    # trains on other data, and nothing in the config says so.
    cfg = small(corpus, tok_dir, tmp_path / "run")
    spec = tmp_path / "cfg.json"
    spec.write_text(json.dumps(asdict(cfg)))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "codefoundry.train.pretrain", "--json", str(spec),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    capsys.readouterr()
    pretrain(replace(cfg, resume=True, steps=2))
    line = resume_warning(capsys.readouterr().err)
    assert "world_size=1 (was 2)" in line, line


# --------------------------------------------------------------------- exact resume, all options
class Killed(Exception):
    pass


def test_exact_resume_mid_accumulation_with_fim_mtp_moe_and_muon(corpus, tok_dir, tmp_path, monkeypatch):
    # A guard, not a bug found: every option that keeps state or draws data on, the run stopped inside
    # the step after a checkpoint, between its two micro-batches.
    opts = dict(steps=4, save_every=2, eval_every=3, grad_accum=2, fim_rate=1.0, mtp_depth=1, moe_experts=4,
                optimizer="muon")  # fmt: skip
    whole = pretrain(small(corpus, tok_dir, tmp_path / "whole", **opts))
    cut = small(corpus, tok_dir, tmp_path / "cut", **opts)
    batch = D.PretrainData.batch

    def dies_at_step_2_micro_1(self, step, micro, batch_size):
        if (step, micro) == (2, 1):
            raise Killed
        return batch(self, step, micro, batch_size)

    monkeypatch.setattr(D.PretrainData, "batch", dies_at_step_2_micro_1)
    with pytest.raises(Killed):
        pretrain(cut)
    monkeypatch.setattr(D.PretrainData, "batch", batch)
    resumed = pretrain(replace(cut, resume=True))
    a, b = M.read_metrics(tmp_path / "whole" / M.METRICS), M.read_metrics(tmp_path / "cut" / M.METRICS)
    keys = ("step", "loss", "ntp", "mtp", "aux", "grad_norm", "lr", "val_loss")
    assert [[r.get(k) for k in keys] for r in b] == [[r.get(k) for k in keys] for r in a]
    assert resumed["param_digest"] == whole["param_digest"]


# ------------------------------------------------------------------------------------------ Ctrl-C
def test_a_ctrl_c_stops_after_the_step_with_a_checkpoint_and_summary_and_the_run_resumes(
    corpus, tok_dir, tmp_path
):
    # A Ctrl-C ended the run where it was: nothing since the last checkpoint was kept, and no summary or
    # plot was written. Now the first one stops after the step, as a time limit does.
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "codefoundry.cli", "pretrain", "--data", str(corpus), "--tokenizer",
           str(tok_dir), "--out", str(out), "--size", "tiny", "--steps", "100000", "--batch-size", "2",
           "--seq-len", "32", "--log-every", "1", "--eval-every", "0", "--save-every", "0", "--eval-batches",
           "1", "--device", "cpu", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = out / M.METRICS
    deadline = time.monotonic() + 120
    while (
        not (metrics.is_file() and metrics.read_text().count('"loss"') >= 3) and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "stopping after this step" in stderr and "Traceback" not in stderr, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "interrupted" and 3 <= summary["step"] < 100000, summary
    assert (out / "loss.png").is_file() and summary["val_loss"] is not None
    assert summary["step"] == trainer_step(out / "checkpoint")
    resumed = pretrain(small(corpus, tok_dir, out, steps=summary["step"] + 2))
    assert resumed["stopped"] == "completed" and resumed["step"] == summary["step"] + 2, resumed


def trainer_step(checkpoint: Path) -> int:
    import torch

    from codefoundry.train.trainer_state import TRAINER_STATE

    return int(torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=True)["step"])
