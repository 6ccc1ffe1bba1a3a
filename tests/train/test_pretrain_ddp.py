"""DDP under torchrun on CPU (gloo, two ranks): the run completes, rank 0 alone writes the checkpoint and
the metrics, both ranks end with bit-identical weights (dense, and MoE with find_unused_parameters, each
with gradient accumulation so `no_sync` is exercised), and a DDP run resumed from its checkpoint
computes exactly the losses of an uninterrupted one."""

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from codefoundry.models import checkpoint as ckpt  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.train import metrics as M  # noqa: E402
from codefoundry.train.pretrain import PretrainConfig  # noqa: E402
from codefoundry.train.trainer_state import param_digest  # noqa: E402

CORPUS = ("textwrap", "bisect", "heapq", "functools", "string", "fnmatch")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    corpus = tmp_path_factory.mktemp("corpus")
    by_stem = {p.stem: p for p in cft.default_corpus() if p.parent.name.startswith("python")}
    for stem in CORPUS:
        (corpus / f"{stem}.py").write_bytes(by_stem[stem].read_bytes())
    tok = tmp_path_factory.mktemp("tok")
    cft.train(sorted(corpus.iterdir()), vocab_size=512, out=tok)
    return corpus, tok


def config(inputs, out: Path, **overrides) -> PretrainConfig:
    corpus, tok = inputs
    base = dict(
        data=str(corpus), tokenizer=str(tok), out=str(out), size="tiny", steps=3, batch_size=2,
        grad_accum=2, seq_len=64, log_every=1, eval_every=0, save_every=0, eval_batches=2,
        progress=False, final_eval=False, device="cpu",
    )  # fmt: skip
    return PretrainConfig(**{**base, **overrides})


def torchrun(cfg: PretrainConfig, tmp_path: Path) -> dict:
    """Run `cfg` on two CPU ranks; returns rank 0's summary."""
    spec = tmp_path / f"{Path(cfg.out).name}.json"
    spec.write_text(json.dumps(asdict(cfg)))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "codefoundry.train.pretrain", "--json", str(spec),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((Path(cfg.out) / "summary.json").read_text())


def assert_in_sync(summary: dict, out: Path, steps: int) -> list[dict]:
    """Both ranks' weights equal and equal to rank 0's checkpoint; rank 0 alone logged each step once."""
    digests = summary["rank_param_digests"]
    assert summary["world_size"] == 2 and summary["step"] == steps
    assert len(digests) == 2 and digests[0] == digests[1]
    assert param_digest(ckpt.load(out / "checkpoint")) == digests[0]
    assert not list(out.glob("checkpoint.*"))  # no temporary or old checkpoint left behind
    records = [r for r in M.read_metrics(out / M.METRICS) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    return records


def test_two_ranks_train_an_moe_in_sync(inputs, tmp_path):
    # find_unused_parameters: with 4 experts, 2 of them per token and 128 tokens per micro-batch an
    # expert can go unchosen on one rank; no_sync on the first of the two micro-batches.
    out = tmp_path / "moe"
    summary = torchrun(config(inputs, out, moe_experts=4), tmp_path)
    assert summary["tokens"] == 3 * 2 * 2 * 64 * 2  # steps * batch * accum * seq_len * ranks
    records = assert_in_sync(summary, out, 3)
    assert all("aux" in r and "expert_load_max" in r for r in records)


def test_two_ranks_stop_together_at_the_step_a_time_budget_fits(inputs, tmp_path):
    from codefoundry.train.budget import FIT_AFTER

    # a budget spent before the steps are timed: rank 0's count (here the step it fitted at) on both
    cfg = config(inputs, tmp_path / "budget", steps=1000, warmup=1, time_budget_s=1e-3)
    summary = torchrun(cfg, tmp_path)
    assert summary["step"] == summary["steps"] == FIT_AFTER
    assert_in_sync(summary, tmp_path / "budget", FIT_AFTER)


@pytest.fixture(scope="module")
def cut_and_resumed(inputs, tmp_path_factory):
    """A dense DDP run stopped cleanly after step 1 by its time limit, then resumed on both ranks to 3."""
    tmp = tmp_path_factory.mktemp("cut")
    cut = config(inputs, tmp / "run", time_limit_s=1e-6)
    stopped = torchrun(cut, tmp)
    resumed = torchrun(replace(cut, time_limit_s=None, resume=True), tmp)
    return cut, stopped, resumed


def test_every_rank_resumes_from_the_checkpoint(cut_and_resumed):
    # DDP copies rank 0's weights to the others at start, but not the optimizer state: a rank that did
    # not load the checkpoint would drift from rank 0 within a step.
    cut, stopped, resumed = cut_and_resumed
    assert stopped["stopped"] == "time_limit" and stopped["step"] == 1
    assert_in_sync(resumed, Path(cut.out), 3)


@pytest.mark.slow
def test_ddp_resume_is_exact(inputs, cut_and_resumed, tmp_path):
    cut, _, resumed = cut_and_resumed
    whole = replace(cut, out=str(tmp_path / "whole"), time_limit_s=None)
    summary = torchrun(whole, tmp_path)
    a = [r for r in M.read_metrics(tmp_path / "whole" / M.METRICS) if "loss" in r]
    b = [r for r in M.read_metrics(Path(cut.out) / M.METRICS) if "loss" in r]
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in b] == [
        (r["step"], r["loss"], r["grad_norm"]) for r in a
    ]
    assert summary["param_digest"] == resumed["param_digest"]
