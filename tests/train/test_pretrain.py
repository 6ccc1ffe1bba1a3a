"""The pretraining loop on CPU with a tiny model: learning, the optimizer's groups and schedule, gradient
accumulation, exact resume after a real SIGKILL, metrics/TensorBoard/plot outputs, MoE and MTP, errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from codefoundry.models import checkpoint as ckpt  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.models.config import config_for_size  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402
from codefoundry.train import metrics as M  # noqa: E402
from codefoundry.train.data import DataConfig, PretrainData  # noqa: E402
from codefoundry.train.pretrain import (  # noqa: E402
    PretrainConfig,
    accumulate,
    amp_dtype,
    build_model,
    build_optimizer,
    lr_at,
    param_groups,
    pretrain,
)
from codefoundry.train.trainer_state import param_digest  # noqa: E402

# One thread everywhere (this process and the subprocesses): the shared 2-core machine is often busy, and
# two threads contending for one core are many times slower; it also keeps the runs' arithmetic the same.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def small(corpus, tok_dir, out, **overrides) -> PretrainConfig:
    base = dict(
        data=str(corpus), tokenizer=str(tok_dir), out=str(out), size="tiny", steps=4, batch_size=4,
        seq_len=64, log_every=1, eval_every=0, save_every=0, eval_batches=2, progress=False,
        final_eval=False,
    )  # fmt: skip
    return PretrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def dense_run(corpus, tok_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dense")
    cfg = small(corpus, tok_dir, out, steps=30, eval_every=10, save_every=15, log_every=2)
    return cfg, pretrain(cfg)


def train_records(out) -> list[dict]:
    return [r for r in M.read_metrics(Path(out) / M.METRICS) if "loss" in r]


def test_loss_decreases_and_beats_a_uniform_guess(dense_run):
    cfg, summary = dense_run
    losses = [r["loss"] for r in train_records(cfg.out)]
    assert abs(losses[0] - torch.log(torch.tensor(512.0)).item()) < 0.3  # init: about uniform
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5
    assert summary["val_loss"] < losses[0] and summary["unigram_loss"] > 0
    assert summary["step"] == 30 and summary["stopped"] == "completed"
    assert summary["tokens"] == 30 * 4 * 64


def test_outputs_metrics_tensorboard_plot_and_summary(dense_run, tmp_path):
    cfg, summary = dense_run
    out = Path(cfg.out)
    records = M.read_metrics(out / M.METRICS)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train] == list(range(2, 31, 2))
    assert [r["step"] for r in evals] == [10, 20, 30]
    for key in ("tokens", "loss", "ntp", "lr", "grad_norm", "tokens_per_s", "mfu", "elapsed_s"):
        assert all(key in r for r in train), key
    assert summary["peak_flops_source"].startswith("measured") and 0 < summary["mfu"] < 1
    assert json.loads((out / "summary.json").read_text())["val_loss"] == summary["val_loss"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = {p.name for p in (out / "checkpoint").iterdir()}
    assert saved >= {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt"}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/val_loss"} <= tags
    assert [e.step for e in acc.Scalars("eval/val_loss")] == [10, 20, 30]

    png = M.plot_curves({"a": out / M.METRICS, "b": out / M.METRICS}, tmp_path / "cmp.png", x="step")
    assert png.stat().st_size > 1000


def test_checkpoint_loads_and_matches_the_trained_weights(dense_run):
    cfg, summary = dense_run
    model = ckpt.load(Path(cfg.out) / "checkpoint")
    assert param_digest(model) == summary["param_digest"]


def test_weight_decay_groups_exclude_norms_and_biases():
    model = Transformer(config_for_size("tiny", 512, qkv_bias=True, mtp_depth=1))
    decay, no_decay = param_groups(model.parameters(), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert "embed.weight" in decayed and "layers.0.attn.qkv.weight" in decayed  # the tied head is embed
    assert "layers.0.attn.qkv.bias" in kept and "norm.weight" in kept and "mtp.0.hidden_norm.weight" in kept
    assert all(n.endswith(("norm.weight", "bias")) for n in kept)
    assert len(decayed) + len(kept) == len(list(model.parameters()))
    cfg = PretrainConfig(data="x", tokenizer="x", out="x")
    assert build_optimizer(model, cfg, torch.device("cpu")).defaults["foreach"] is True


def test_lr_schedule_warmup_then_cosine_to_min_lr():
    cfg = PretrainConfig(data="x", tokenizer="x", out="x", steps=110, warmup=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(4, cfg) == pytest.approx(5e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3) and lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(5.5e-4)  # half way through the cosine
    assert lr_at(110, cfg) == pytest.approx(1e-4) and lr_at(500, cfg) == pytest.approx(1e-4)
    after = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    auto = PretrainConfig(data="x", tokenizer="x", out="x", steps=30, lr=3e-3)
    assert auto.min_lr == pytest.approx(3e-4) and auto.warmup == 3


def test_grad_accumulation_equals_one_big_batch(corpus, tok_dir):
    cfg = small(corpus, tok_dir, "unused", fim_rate=0.0)
    data = PretrainData(DataConfig(cfg.data, seq_len=64, fim_rate=0.0), cft.load(tok_dir))
    x, y = data.batch(0, 0, 4)  # (4, 64) each
    cpu = torch.device("cpu")
    halves, whole = build_model(cfg, 512), build_model(cfg, 512)
    a = accumulate(halves, [(x[:2], y[:2]), (x[2:], y[2:])], device=cpu)
    b = accumulate(whole, [(x, y)], device=cpu)
    assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-6)
    for (name, p), q in zip(halves.named_parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_moe_and_mtp_train_and_log_their_loss_parts(corpus, tok_dir, tmp_path):
    cfg = small(corpus, tok_dir, tmp_path, steps=3, moe_experts=4, moe_top_k=2, mtp_depth=2)
    summary = pretrain(cfg)
    records = train_records(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in (
        "ntp",
        "mtp",
        "mtp_1",
        "mtp_2",
        "aux",
        "expert_load_max",
        "expert_load_min",
        "dropped_tokens",
    ):
        assert all(key in r for r in records), key
    r = records[-1]
    assert r["loss"] == pytest.approx(r["ntp"] + 0.3 * r["mtp"] + 0.01 * r["aux"], rel=1e-5)
    model = ckpt.load(tmp_path / "checkpoint")
    assert model.cfg.moe.n_experts == 4 and model.cfg.mtp_depth == 2
    per_expert = sum(p.numel() for p in model.layers[0].mlp.experts[0].parameters())
    n_moe_layers = model.cfg.n_layers + model.cfg.mtp_depth  # every MTP block has an MoE MLP too
    assert M.active_params(model) == summary["non_embedding_params"] - n_moe_layers * 2 * per_expert


EXACT_RESUME_N = 4
KILLABLE = """
import sys, time
from codefoundry.train import data

batch = data.PretrainData.batch


def slow_after_checkpoint(self, step, micro, batch_size):
    # The step after the one past the checkpoint crawls, so the test's SIGKILL lands mid-run (never
    # after the end) with a record the resume must drop already in metrics.jsonl.
    if step >= {n} + 1:
        time.sleep(0.5)
    return batch(self, step, micro, batch_size)


data.PretrainData.batch = slow_after_checkpoint
from codefoundry.train.pretrain import main

sys.exit(main(["--json", sys.argv[1]]))
"""


def test_exact_resume_after_sigkill(corpus, tok_dir, tmp_path):
    n = EXACT_RESUME_N
    whole = small(corpus, tok_dir, tmp_path / "whole", steps=2 * n, save_every=n, eval_every=n)
    summary_whole = pretrain(whole)

    killed = replace(whole, out=str(tmp_path / "killed"))
    (tmp_path / "cfg.json").write_text(json.dumps(asdict(killed)))
    (tmp_path / "killable.py").write_text(textwrap.dedent(KILLABLE.format(n=n)))
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "killable.py"), str(tmp_path / "cfg.json")],
        env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    state = tmp_path / "killed" / "checkpoint" / "trainer_state.pt"
    logged = tmp_path / "killed" / M.METRICS
    deadline = time.monotonic() + 120
    while not (state.exists() and f'"step": {n + 1},' in logged.read_text()):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(state, weights_only=True)["step"] == n

    summary_resumed = pretrain(replace(killed, resume=True))
    a, b = M.read_metrics(tmp_path / "whole" / M.METRICS), M.read_metrics(tmp_path / "killed" / M.METRICS)
    assert [r["step"] for r in b] == [r["step"] for r in a]  # nothing lost, nothing duplicated
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "ntp", "grad_norm", "lr", "val_loss"):
            assert ra.get(key) == rb.get(key), (ra["step"], key)
    assert summary_resumed["param_digest"] == summary_whole["param_digest"]
    assert summary_resumed["val_loss"] == summary_whole["val_loss"]


def test_time_limit_stops_cleanly_with_a_checkpoint(corpus, tok_dir, tmp_path):
    summary = pretrain(small(corpus, tok_dir, tmp_path, steps=1000, time_limit_s=1e-6))
    assert summary["stopped"] == "time_limit" and summary["step"] == 1
    assert torch.load(tmp_path / "checkpoint" / "trainer_state.pt", weights_only=True)["step"] == 1
    assert (tmp_path / "summary.json").is_file() and summary["val_loss"] is not None


def test_time_budget_fits_the_steps_and_a_resume_keeps_them(corpus, tok_dir, tmp_path, monkeypatch):
    import types

    from codefoundry.train import budget as P
    from codefoundry.train import pretrain as loop

    # The loop's clock, replaced by one that reads 1 s later at each look: the steps it times take a
    # fixed number of "seconds", whatever this machine's speed, so the fitted count is deterministic.
    ticks = iter(range(10**9))
    clock = types.SimpleNamespace(perf_counter=lambda: float(next(ticks)))
    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(P, "time", clock)
    cfg = small(corpus, tok_dir, tmp_path, steps=1000, warmup=P.FIT_AFTER, time_budget_s=300)
    summary = pretrain(cfg)
    fitted = summary["steps"]
    assert summary["stopped"] == "completed" and summary["step"] == fitted and P.FIT_AFTER < fitted < 200
    lrs = [r["lr"] for r in train_records(tmp_path)]
    assert len(lrs) == fitted and lrs[P.FIT_AFTER - 1] == cfg.lr  # warmup done, then the new cosine
    assert all(a > b for a, b in zip(lrs[P.FIT_AFTER :], lrs[P.FIT_AFTER + 1 :], strict=False))
    assert lrs[-1] < 0.12 * cfg.lr  # it fell to min_lr (lr / 10) at the fitted end, not cut short
    state = torch.load(tmp_path / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["fitted_steps"] == fitted
    assert pretrain(replace(cfg, resume=True))["steps"] == fitted  # a resume keeps the choice
    # a budget spent by the time the steps are timed ends the run there; one with room changes nothing
    spent = pretrain(replace(cfg, out=str(tmp_path / "spent"), time_budget_s=1.0))
    assert spent["step"] == spent["steps"] == P.FIT_AFTER
    roomy = pretrain(replace(cfg, out=str(tmp_path / "roomy"), steps=P.FIT_AFTER + 4, time_budget_s=1e6))
    assert roomy["steps"] == roomy["step"] == P.FIT_AFTER + 4
    with pytest.raises(ValueError, match="time_budget_s"):
        small(corpus, tok_dir, tmp_path, time_budget_s=0)


def test_resume_after_a_kill_mid_swap_continues_a_finished_run(dense_run, tmp_path):
    # A kill between save_checkpoint's two renames leaves checkpoint.old (complete) and no checkpoint;
    # a kill while writing leaves a partial checkpoint.tmp. Resume must use .old and ignore .tmp.
    cfg, _ = dense_run
    shutil.copytree(Path(cfg.out), tmp_path, dirs_exist_ok=True)
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    (tmp_path / "checkpoint.tmp").mkdir()
    (tmp_path / "checkpoint.tmp" / "config.json").write_text("{")
    summary = pretrain(replace(cfg, out=str(tmp_path), steps=32, resume=True))
    steps = [r["step"] for r in train_records(tmp_path)]
    assert steps == [*range(2, 31, 2), 32] and summary["step"] == 32
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == ["checkpoint"]


def test_bad_inputs_fail_with_one_line(corpus, tok_dir, dense_run, tmp_path):
    cfg, _ = dense_run
    cases = [
        (replace(cfg, data=str(tmp_path / "nope")), "no such data"),
        (replace(cfg, tokenizer=str(tmp_path)), "no tokenizer.json"),
        (replace(cfg, out=str(tmp_path / "fresh"), resume=True), "nothing to resume"),
    ]
    shutil.copytree(Path(cfg.out) / "checkpoint", tmp_path / "moved" / "checkpoint")
    cases.append((replace(cfg, out=str(tmp_path / "moved"), size="mini", resume=True), "size='mini'"))
    cases.append((replace(cfg, out=str(tmp_path / "moved"), mtp_depth=1, resume=True), "mtp_depth=1"))
    for bad, needle in cases:
        with pytest.raises(ValueError, match=needle) as e:
            pretrain(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"PretrainConfig.steps: invalid value 0"):
        replace(cfg, steps=0)
    with pytest.raises(ValueError, match=r"PretrainConfig.dtype: invalid value 'fp16'"):
        replace(cfg, dtype="fp16")


def test_auto_dtype_is_bf16_only_where_the_cpu_multiplies_bf16_natively(monkeypatch):
    cpu = torch.device("cpu")
    for avx512_bf16, amx, want in [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                   (False, False, None)]:  # fmt: skip
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert amp_dtype("auto", cpu) == want
        assert amp_dtype("fp32", cpu) is None and amp_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without the probes
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert amp_dtype("auto", cpu) is None


def test_metrics_truncation_and_torn_lines(tmp_path):
    path = tmp_path / M.METRICS
    path.write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo'
    )
    assert [r["step"] for r in M.read_metrics(path)] == [1, 2, 3]  # a killed writer's half line
    assert M.truncate_metrics(path, 2) == 2
    assert [r["step"] for r in M.read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        M.read_metrics(path)


def test_final_evaluation_when_infill_eval_exists(corpus, tok_dir, tmp_path):
    pytest.importorskip("codefoundry.models.infill_eval")
    summary = pretrain(small(corpus, tok_dir, tmp_path, steps=2, final_eval=True))
    if "final_eval" in summary:  # the held-out file of this corpus has no short function
        assert summary["final_eval"] == "no held-out functions to infill"
        return
    fim, syntax, line = summary["fim_exact_match"], summary["syntax_valid"], summary["fim_line_match"]
    assert 0 < fim["n"] <= 50 and 0 <= fim["exact_match"] <= 1
    assert line["n"] == fim["n"] and 0 <= line["exact_match"] <= line["first_line_match"] <= 1
    assert syntax["n"] == fim["n"] and 0 <= syntax["syntax_valid"] <= 1
    assert json.loads((tmp_path / "summary.json").read_text())["syntax_valid"] == syntax


@pytest.mark.slow
def test_compile_trains_like_eager(corpus, tok_dir, tmp_path):
    eager = pretrain(small(corpus, tok_dir, tmp_path / "eager", steps=3, fim_rate=0.0))
    compiled = pretrain(small(corpus, tok_dir, tmp_path / "compiled", steps=3, fim_rate=0.0, compile=True))
    a, b = train_records(tmp_path / "eager"), train_records(tmp_path / "compiled")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4)
    assert compiled["step"] == eager["step"] == 3


@pytest.mark.parametrize("seq_len", [2, 4])
def test_a_context_too_short_for_fim_prompts_still_ends_with_a_summary(corpus, tok_dir, tmp_path, seq_len):
    # The final checks asked for FIM prompts (3 sentinels at least) and new tokens that the context
    # could not hold: the run had trained and saved, then died without summary.json or loss.png.
    summary = pretrain(small(corpus, tok_dir, tmp_path, steps=1, seq_len=seq_len, final_eval=True))
    assert summary["stopped"] == "completed" and "seq_len" in summary["final_eval"]
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == 1
    assert (tmp_path / "loss.png").is_file()


def _shards(corpus, tok_dir, out) -> tuple[list[str], Path]:
    """The corpus's files and a last, one-line document, one document a shard (as a data build's last,
    remainder shard can be)."""
    from codefoundry.data.shards import write_shards

    texts = [p.read_text(encoding="utf-8") for p in sorted(corpus.iterdir())] + ["x = 1\n"]
    write_shards(texts, out, cft.load(tok_dir), shard_tokens=1)
    return texts, out


def test_shard_holdout_is_a_fraction_of_all_documents_taken_from_the_end(corpus, tok_dir, tmp_path):
    # The held-out documents were a fraction of the last shard's only: a last shard holding one short
    # document was the whole held-out set at any holdout, too short for one window, and pretraining
    # refused to start ("raise holdout or lower seq_len"), raising holdout could not help.
    texts, shards = _shards(corpus, tok_dir, tmp_path / "shards")
    tok = cft.load(tok_dir)
    data = PretrainData(DataConfig(str(shards), seq_len=32, holdout=0.4), tok)
    assert data.n_documents == len(texts)
    assert data.val_texts() == texts[-round(0.4 * len(texts)) :]
    assert len(data.val_batches(2, 2)) == 2
    everything = PretrainData(DataConfig(str(shards), seq_len=32, holdout=0.99), tok)
    assert everything.val_texts() == texts[1:]  # one training document is always kept


def test_pretrain_takes_the_holdout_fraction(corpus, tok_dir, tmp_path):
    _, shards = _shards(corpus, tok_dir, tmp_path / "shards")
    summary = pretrain(small(shards, tok_dir, tmp_path / "run", steps=1, seq_len=32, holdout=0.4))
    assert summary["val_loss"] is not None
    with pytest.raises(ValueError, match="PretrainConfig.holdout"):
        small(shards, tok_dir, tmp_path, holdout=1.0)


def test_a_resume_that_changes_the_trajectory_says_so(corpus, tok_dir, tmp_path, capsys):
    # Only the model's shape and optimizer were checked: a resume with another seq_len, lr or step count
    # went on silently, though it could no longer reproduce the uninterrupted run.
    cfg = small(corpus, tok_dir, tmp_path, steps=1, batch_size=2, seq_len=32, eval_batches=1)
    pretrain(cfg)
    capsys.readouterr()
    pretrain(replace(cfg, resume=True, data=str(corpus) + "/"))  # the same data, written another way
    assert "will not reproduce" not in capsys.readouterr().err
    pretrain(replace(cfg, resume=True, steps=2, lr=cfg.lr / 2))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "will not reproduce" in line]
    assert len(lines) == 1 and "steps=2 (was 1)" in lines[0] and f"lr={cfg.lr / 2!r}" in lines[0], err
    assert "seq_len" not in lines[0]
