"""Session 35 review of training: a warmup as long as the run refused, a top-k above the number of experts
refused instead of lowered, a batch with no counted target adding 0 to the loss instead of NaN, and a
Ctrl-C under torchrun stopping every rank after the same step."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

import torch.nn.functional as F  # noqa: E402

from codefoundry.cli import main as cli_main  # noqa: E402
from codefoundry.models import checkpoint as ckpt  # noqa: E402
from codefoundry.models.config import config_for_size  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402
from codefoundry.train import budget  # noqa: E402
from codefoundry.train import metrics as M  # noqa: E402
from codefoundry.train import pretrain as P  # noqa: E402
from codefoundry.train import sft as S  # noqa: E402
from codefoundry.train import sft_data as D  # noqa: E402
from codefoundry.train.trainer_state import TRAINER_STATE, param_digest  # noqa: E402

VOCAB = 96


def small(corpus, tok_dir, out, **overrides) -> P.PretrainConfig:
    base = dict(
        data=str(corpus), tokenizer=str(tok_dir), out=str(out), size="tiny", steps=1, batch_size=2,
        seq_len=16, log_every=1, eval_every=0, save_every=0, eval_batches=1, progress=False,
        final_eval=False, device="cpu",
    )  # fmt: skip
    return P.PretrainConfig(**{**base, **overrides})


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------ warmup vs steps
@pytest.mark.parametrize(("warmup", "steps"), [(10, 10), (50, 10)])
def test_a_warmup_of_all_the_steps_or_more_is_one_line_before_anything_loads(warmup, steps):
    # Accepted, the learning rate climbed for the whole run and never reached its peak (or reached it at
    # the last step): the cosine never ran. The check comes before the tokenizer and data are looked at.
    cfg = P.PretrainConfig(data="no-data", tokenizer="no-tok", out="o", steps=steps, warmup=warmup)
    with pytest.raises(
        ValueError, match=rf"^PretrainConfig\.warmup: warmup={warmup} must be below steps={steps}:"
    ):
        P.pretrain(cfg)


def test_the_command_line_names_warmup_and_steps_in_one_line(tmp_path, capsys):
    argv = ["pretrain", "--data", "d", "--tokenizer", "t", "--out", str(tmp_path / "o"), "--steps", "100",
            "--warmup", "100", "--time-budget-s", "60"]  # fmt: skip
    assert cli_main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert "warmup=100 must be below steps=100 (with --time-budget-s, the most it may run)" in err, err


def test_a_time_budget_may_still_end_the_run_where_the_warmup_ends(corpus, tok_dir, tmp_path):
    # A guard: the budget fits the steps only after the warmup, and a spent budget fits them to the step it
    # is at, so steps == warmup there. Checked in __post_init__, the fitted config would be refused mid-run.
    cfg = small(corpus, tok_dir, tmp_path, steps=1000, warmup=budget.FIT_AFTER, time_budget_s=1e-3)
    summary = P.pretrain(cfg)
    assert summary["stopped"] == "completed" and summary["step"] == summary["steps"] == budget.FIT_AFTER


def test_sft_refuses_a_warmup_of_all_its_steps():
    with pytest.raises(ValueError, match=r"^SFTConfig\.warmup: warmup=4 must be below steps=4:"):
        S.SFTConfig(init="i", data="d", out="o", steps=4, warmup=4)
    S.SFTConfig(init="i", data="d", out="o", steps=4, warmup=3)
    S.SFTConfig(init="i", data="d", out="o", warmup=500)  # steps from epochs: SFTRun checks it


def test_sft_refuses_a_warmup_of_all_the_steps_its_epochs_make(tmp_path):
    from tiny_kit import tiny_checkpoint

    init = tiny_checkpoint(tmp_path)
    data = tmp_path / "greet.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"greet {n}", "completion": f"hi {n}"}) + "\n" for n in "abcdefgh")
    )
    cfg = S.SFTConfig(init=str(init), data=str(data), out=str(tmp_path / "o"), seq_len=32, batch_size=2,
                      eval_fraction=0.0, warmup=500, progress=False, device="cpu")  # fmt: skip
    with pytest.raises(
        ValueError, match=r"^SFTConfig\.warmup: warmup=500 must be below the \d+ steps of epochs=1:"
    ):
        S.SFTRun(cfg)


# ---------------------------------------------------------------------------- MoE top-k vs experts
def test_a_top_k_above_the_experts_is_refused_not_lowered():
    # config_for_size lowered top_k to the number of experts: `--moe 2 --moe-top-k 4` trained top-2.
    with pytest.raises(ValueError, match=r"moe\.top_k must be in \[1, n_experts=2\], got 4"):
        config_for_size("tiny", VOCAB, moe_experts=2, moe_top_k=4)
    assert config_for_size("tiny", VOCAB, moe_experts=2, moe_top_k=2).moe.top_k == 2
    with pytest.raises(
        ValueError, match=r"^PretrainConfig\.moe_top_k: 4 experts per token, but moe_experts=2"
    ):
        P.PretrainConfig(data="d", tokenizer="t", out="o", moe_experts=2, moe_top_k=4)
    with pytest.raises(ValueError, match=r"^PretrainConfig\.moe_top_k: invalid value 0"):
        P.PretrainConfig(data="d", tokenizer="t", out="o", moe_experts=2, moe_top_k=0)
    P.PretrainConfig(data="d", tokenizer="t", out="o", moe_top_k=4)  # dense: the option is unused


def test_the_command_line_reports_a_top_k_above_the_experts_in_one_line(tmp_path, capsys):
    argv = ["pretrain", "--data", "d", "--tokenizer", "t", "--out", str(tmp_path), "--moe", "2",
            "--moe-top-k", "3"]  # fmt: skip
    assert cli_main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(
        "codefoundry pretrain: PretrainConfig.moe_top_k: 3 experts per token, but moe_experts=2"
    )


# ------------------------------------------------------------------------ batches with no target
def tiny_model(**changes) -> Transformer:
    torch.manual_seed(0)
    return Transformer(config_for_size("tiny", VOCAB, max_seq_len=32, **changes))


def batch(n: int = 12, rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (rows, n), generator=g)
    return ids, torch.cat([ids[:, 1:], torch.full((rows, 1), -100)], dim=1)


@pytest.mark.parametrize("logits", [False, True])  # the fused head + loss, and the logits' path
def test_a_batch_with_every_target_ignored_has_zero_loss_and_zero_gradient(logits):
    # F.cross_entropy's mean (and transformers' causal-LM loss) is 0/0 = NaN here: one such micro-batch
    # made a step's loss NaN and, through the optimizer, every weight.
    model = tiny_model(mtp_depth=2)
    ids, _ = batch()
    ignored = torch.full_like(ids, -100)
    assert torch.isnan(F.cross_entropy(torch.randn(24, VOCAB), ignored.flatten(), ignore_index=-100))
    out = model(ids, ignored, logits=logits)
    assert float(out.loss.detach()) == 0.0 and all(float(v) == 0.0 for v in out.parts.values()), out.parts
    out.loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_an_mtp_depth_with_no_target_adds_zero_and_the_others_train():
    # Targets only at the first two positions (an SFT row whose reply is short): depth 2 predicts from
    # position 2 on, where every target is ignored; its CE was NaN, so the whole loss was.
    model = tiny_model(mtp_depth=2)
    ids, targets = batch()
    targets[:, 2:] = -100
    out = model(ids, targets, logits=False)
    assert float(out.parts["mtp_2"]) == 0.0 and float(out.parts["mtp_1"]) > 0, out.parts
    loss = float(out.loss.detach())
    assert loss == pytest.approx(float(out.parts["ntp"]) + 0.3 * float(out.parts["mtp_1"]) / 2)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.mtp[0].proj.weight.grad.abs().sum() > 0


def test_the_mean_over_counted_targets_is_unchanged():
    # The mean is now a sum over a clamped count: where targets exist it is still F.cross_entropy's mean.
    model = tiny_model()
    ids, targets = batch()
    targets[0, 3:7] = -100
    with torch.no_grad():
        h = model.norm(model(ids, logits=False).hidden)
        ref = F.cross_entropy(model.lm_head(h).flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert float(model(ids, targets, logits=False).loss.detach()) == pytest.approx(float(ref), rel=1e-5)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', not 'none'"):
        model.head_loss(h, targets, reduction="none")


def test_a_pretraining_step_with_an_empty_micro_batch_stays_finite():
    # pretrain.accumulate averages the micro-batches' means; the empty one now adds 0, not NaN.
    model = tiny_model(mtp_depth=1, moe_experts=2)
    ids, targets = batch()
    cpu = torch.device("cpu")
    stats = P.accumulate(model, [(ids, torch.full_like(ids, -100)), (ids, targets)], device=cpu)
    assert all(torch.isfinite(v) for v in stats.values()), stats
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()
    alone = P.accumulate(model, [(ids, targets)], device=cpu)
    assert float(stats["ntp"]) == pytest.approx(float(alone["ntp"]) / 2, rel=1e-5)


def test_an_sft_step_with_a_micro_batch_of_no_response_token_adds_nothing():
    # A guard: SFT sums the CE over response tokens and divides by the step's count, so an empty
    # micro-batch adds 0 (a mean per micro-batch would have made it NaN).
    model = tiny_model(mtp_depth=1)
    ids, targets = batch()
    full = D.collate([[D.Example(ids=ids[0].numpy(), train=(ids[0] >= 0).numpy())]], pad_id=0)
    empty = D.collate([[D.Example(ids=ids[1].numpy(), train=(ids[1] < 0).numpy())]], pad_id=0)
    assert empty.n_targets == 0 and full.n_targets == 11
    cpu = torch.device("cpu")
    both = S.accumulate(model, [empty, full], device=cpu)
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    alone = S.accumulate(model, [full], device=cpu)
    assert both == alone and all(torch.isfinite(g).all() for g in grads)


# -------------------------------------------------------------------------- Ctrl-C under torchrun
def test_a_first_ctrl_c_sets_the_flag_and_a_second_interrupts_at_once(capsys):
    from codefoundry.train.distributed import interrupts_stop_after_the_step

    with interrupts_stop_after_the_step(announce=False) as interrupted:
        assert not interrupted()
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupted()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert capsys.readouterr().err == ""  # not rank 0: only rank 0 says so
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


VOTER = """
import os, sys
import torch.distributed as dist
from codefoundry.train.distributed import StopVote
dist.init_process_group("gloo")
rank = dist.get_rank()
vote = StopVote(dist.get_world_size())
print(vote(rank == 1, False), vote(False, rank == 0), vote(False, False), flush=True)
dist.destroy_process_group()
"""


def test_the_stop_vote_is_every_rank_s_max(tmp_path):
    # Rank 1 alone saw a Ctrl-C, then rank 0 alone passed its time limit: both ranks get both.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": "2"}  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", VOTER],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o.strip() for o, _ in outs] == ["(True, False) (False, True) (False, False)"] * 2, outs


# The command each rank runs: `codefoundry pretrain`, its exit status kept per rank (torchrun does not
# report its workers' statuses once a signal has ended it).
RANK_MAIN = """
import os, sys
from pathlib import Path
from codefoundry.cli import main
rc = main(sys.argv[1:])
Path(os.environ["RC_DIR"], "rank" + os.environ["RANK"]).write_text(str(rc))
sys.exit(rc)
"""


def torchrun(tmp_path: Path, name: str, args: list[str]) -> tuple[subprocess.Popen, Path]:
    """Start `codefoundry pretrain ARGS` on two CPU ranks, torchrun leading a process group of its own (as
    a terminal's foreground job: a Ctrl-C goes to the group)."""
    script = tmp_path / "rank_main.py"
    script.write_text(RANK_MAIN)
    rc_dir = tmp_path / f"rc_{name}"
    rc_dir.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "pretrain", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RC_DIR": str(rc_dir)}
    log = (tmp_path / f"{name}.log").open("w")  # a file, not a pipe: nothing blocks on a full pipe
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, rc_dir


def ranks_exit(rc_dir: Path) -> list[str]:
    return sorted(p.read_text() for p in rc_dir.iterdir())


@pytest.mark.slow
def test_a_ctrl_c_under_torchrun_stops_every_rank_after_the_same_step(corpus, tok_dir, tmp_path):
    # Each rank saw the signal on its own step: one stopped and left the other waiting in the next
    # step's gradient all-reduce (or torchrun killed both, keeping nothing since the last checkpoint).
    # Now the ranks vote each step, rank 0 writes the checkpoint, summary and plot, and each exits 130.
    out = tmp_path / "run"
    args = ["--data", str(corpus), "--tokenizer", str(tok_dir), "--out", str(out), "--size", "tiny",
            "--batch-size", "2", "--seq-len", "32", "--log-every", "1", "--eval-every", "0", "--save-every",
            "0", "--eval-batches", "1", "--device", "cpu", "--no-progress"]  # fmt: skip
    proc, rc_dir = torchrun(tmp_path, "first", [*args, "--steps", "100000"])
    metrics, deadline = out / M.METRICS, time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().count('"loss"') >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    log = (tmp_path / "first.log").read_text()
    # torch 2.13's torchrun re-raises the signal (its SignalException) and exits 1 after its workers.
    assert proc.returncode == 1, log
    assert ranks_exit(rc_dir) == ["130", "130"], log
    assert log.count("stopping after this step") == 1 and "forcefully" not in log, log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "interrupted" and 3 <= summary["step"] < 100000, summary
    digests = summary["rank_param_digests"]
    assert digests[0] == digests[1] == param_digest(ckpt.load(out / "checkpoint"))
    state = torch.load(out / "checkpoint" / TRAINER_STATE, map_location="cpu", weights_only=True)
    assert state["step"] == summary["step"] and (out / "loss.png").is_file()

    proc, rc_dir = torchrun(tmp_path, "resumed", [*args, "--steps", str(summary["step"] + 2), "--resume"])
    assert proc.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()
    assert ranks_exit(rc_dir) == ["0", "0"]
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["stopped"] == "completed" and resumed["step"] == summary["step"] + 2, resumed
    steps = [r["step"] for r in M.read_metrics(metrics) if "loss" in r]
    assert steps == list(range(1, summary["step"] + 3))
