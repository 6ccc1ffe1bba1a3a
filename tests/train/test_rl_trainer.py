"""The RL trainer end to end on CPU: a tiny model the test trains on a few parametric problem families,
rollouts through the real sandbox, rewards from `evaluate`, GRPO and every other estimator for one step,
dynamic sampling, exact resume, and the `codefoundry rl` command."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from tiny_kit import fine_tuned_policy  # noqa: E402

from codefoundry.models import checkpoint as ckpt  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.sandbox import ExecutionResult, Status  # noqa: E402
from codefoundry.tasks import parametric  # noqa: E402
from codefoundry.tasks.problem import Problem, Score  # noqa: E402
from codefoundry.tasks.registry import write_problems_file  # noqa: E402
from codefoundry.train.metrics import read_metrics  # noqa: E402
from codefoundry.train.rl import ESTIMATORS  # noqa: E402
from codefoundry.train.rl.rollout import (  # noqa: E402
    PromptCodec,
    RewardWorker,
    Rollout,
    collate,
    response_forward,
    shaped_rewards,
)
from codefoundry.train.rl.trainer import RLConfig, RLRun, rl  # noqa: E402
from codefoundry.train.trainer_state import param_digest  # noqa: E402

FAMILIES = ("add_k", "sub_k", "reverse_string", "upper_string")
# How the work was done, not what was learned: a resumed run differs there (a restored batch ran nothing).
TIMING = ("time_", "tokens_per_s", "elapsed_s", "reward_share", "reward_runs", "seconds")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Problem files (train / held-out) and a tiny policy fine-tuned on the training prompts' canonical
    bodies, so that sampling at temperature 1 passes some of the time and fails some of the time."""
    root = tmp_path_factory.mktemp("rl")
    drawn = parametric.generate(60, seed=3, families=FAMILIES)
    train, held = drawn[:48], drawn[48:]
    write_problems_file(root / "train.jsonl", train)
    write_problems_file(root / "held.jsonl", held)
    policy = fine_tuned_policy(root / "policy", drawn, train, steps=150)
    return {"root": root, "policy": policy, "train": root / "train.jsonl", "held": root / "held.jsonl"}


def config(setup, out: Path, **overrides) -> RLConfig:
    base = dict(
        policy=str(setup["policy"]), out=str(out), task=str(setup["train"]), eval_task=str(setup["held"]),
        eval_problems=0, steps=1, group_size=4, prompts_per_step=4, max_new_tokens=20, lr=1e-3, seed=0,
        threads=1, progress=False, tensorboard=False, reward_workers=2, save_every=0,
    )  # fmt: skip
    return RLConfig(**{**base, **overrides})


def train_records(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "reward_mean" in r]


def test_rewards_come_from_the_sandbox(setup):
    """A canonical body gets 1, a wrong one 0, both through `evaluate_many`; a syntax error pays the
    format penalty; a sandbox error is NaN, not 0."""
    from codefoundry.tasks.registry import load_problems_file

    problem = load_problems_file(setup["train"])[0]
    codec = PromptCodec(cft.load(setup["policy"]))
    completions = [problem.canonical_solution, "    return None\n", "    return (\n"]
    worker = RewardWorker(workers=2)
    try:
        scores = worker.submit([problem] * 3, completions).result()
    finally:
        worker.close()
    roll = Rollout([problem] * 3, codec.encode([problem] * 3), [[1, 2]] * 3, completions, [False] * 3, scores)
    assert shaped_rewards(roll, max_new_tokens=8).tolist() == [1.0, 0.0, 0.0]
    assert shaped_rewards(roll, max_new_tokens=8, format_penalty=0.1).tolist() == pytest.approx([1, 0, -0.1])
    broken = Score(False, 0.0, ExecutionResult(Status.SANDBOX_ERROR, message="planted"))
    roll.scores = [scores[0], broken, scores[1]]
    assert math.isnan(shaped_rewards(roll, max_new_tokens=8)[1])
    # Soft overlong punishment: 2 response tokens with max 2 and a buffer of 2 -> (0 - 2) / 2 = -1.
    roll.scores = scores
    overlong = shaped_rewards(roll, max_new_tokens=2, overlong_buffer=2, overlong_penalty=0.5)
    assert overlong.tolist() == pytest.approx([0.5, -0.5, -0.5])


def test_response_forward_matches_the_full_forward(setup):
    """The gathered response log-probs equal those of the model's own forward on each row alone."""
    model = ckpt.load(setup["policy"])
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]]
    batch = collate(prompts, responses, device="cpu")
    with torch.no_grad():
        logp, ent, _ = response_forward(model, batch, temperature=0.7, entropy=True)
        for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            logits = model(torch.tensor([p + r])).logits[0, len(p) - 1 : len(p) + len(r) - 1] / 0.7
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
            assert torch.allclose(logp[b, : len(r)], want, atol=1e-5)
    assert batch.mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert torch.isfinite(ent).all()


def test_one_grpo_step_end_to_end_changes_the_weights(setup, tmp_path):
    cfg = config(setup, tmp_path / "grpo", prompts_per_step=8, eval_problems=4)
    before = param_digest(ckpt.load(cfg.policy))
    summary = rl(cfg)
    (rec,) = train_records(tmp_path / "grpo")
    assert 0 < rec["pass_rate"] < 1, "the planted policy should pass some samples and fail others"
    assert rec["frac_zero_std"] < 1 and rec["advantage_abs_mean"] > 0
    assert rec["sandbox_errors"] == 0 and rec["update_skipped"] == 0
    for key in ("reward_std", "entropy", "clip_frac_high", "response_len_mean", "tokens_per_s",
                "time_generation_s", "time_reward_s", "time_update_s"):  # fmt: skip
        assert math.isfinite(rec[key]), key
    after = param_digest(ckpt.load(tmp_path / "grpo" / "checkpoint"))
    assert after != before
    assert summary["eval_first"]["problems"] == 4 and 0 <= summary["eval_last"]["pass@1"] <= 1
    assert Path(summary["plot"]).is_file()


@pytest.mark.parametrize("extra", [{}, {"estimator": "gae", "entropy_coef": 0.01, "kl_coef": 0.01}])
def test_forward_run_while_scoring_changes_nothing(setup, tmp_path, monkeypatch, extra):
    """A synchronous single-pass step runs the update's forward while the sandbox scores the last rows:
    the same records and weights as running it after the rewards are in."""
    taken = []
    original = RLRun._forward_while_scoring

    def spy(self, current):
        out = original(self, current)
        taken.append(out[0] is not None)
        return out

    def run(name: str) -> tuple[list[dict], str]:
        run = RLRun(config(setup, tmp_path / name, steps=2, **extra))
        try:
            records = [run.step_once() for _ in range(2)]
        finally:
            run.close()
        return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in records], param_digest(
            run.model
        )

    monkeypatch.setattr(RLRun, "_forward_while_scoring", spy)
    early = run("early")
    assert taken == [True, True]
    monkeypatch.setattr(RLRun, "_forward_while_scoring", lambda self, current: (None, 0.0))
    assert run("late") == early

    # A sandbox error drops its group: the forward done ahead covered every row and is not used.
    from codefoundry.train.rl.rollout import PendingRollout

    scored = PendingRollout.result

    def one_error(self):
        roll, times = scored(self)
        roll.scores[0] = Score(False, 0.0, ExecutionResult(Status.SANDBOX_ERROR, message="planted"))
        return roll, times

    monkeypatch.setattr(PendingRollout, "result", one_error)
    late = run("late-error")
    assert [r["sandbox_errors"] for r in late[0]] == [1, 1]
    monkeypatch.setattr(RLRun, "_forward_while_scoring", spy)
    taken.clear()
    assert run("early-error") == late and taken == [True, True]


def test_dynamic_sampling_drops_zero_variance_groups(setup, tmp_path):
    kept = config(setup, tmp_path / "keep", prompts_per_step=8)
    rl(kept)
    (plain,) = train_records(tmp_path / "keep")
    assert plain["groups_dropped"] == 0
    dyn = replace(kept, out=str(tmp_path / "dyn"), dynamic_sampling=True)
    rl(dyn)
    (rec,) = train_records(tmp_path / "dyn")
    # Same seed, same rollouts: the all-equal groups counted by the plain run are the ones dropped here.
    assert rec["frac_zero_std"] == plain["frac_zero_std"] > 0
    assert rec["groups_dropped"] == round(rec["frac_zero_std"] * 8)


def test_all_equal_rewards_skip_the_update(setup, tmp_path):
    """Problems nobody can pass: every group is all-zero, dynamic sampling drops them all, nothing moves."""
    impossible = tmp_path / "impossible.jsonl"
    problems = [
        Problem(f"x/{i}", f"def f{i}(x: int) -> int:\n", f"f{i}", ("assert False",)) for i in range(4)
    ]
    write_problems_file(impossible, problems)
    cfg = config(setup, tmp_path / "none", task=str(impossible), dynamic_sampling=True)
    rl(cfg)
    (rec,) = train_records(tmp_path / "none")
    assert rec["frac_zero_std"] == 1.0 and rec["groups_dropped"] == 4 and rec["update_skipped"] == 1
    assert param_digest(ckpt.load(tmp_path / "none" / "checkpoint")) == param_digest(ckpt.load(cfg.policy))


def test_resume_reproduces_the_uninterrupted_run(setup, tmp_path):
    full = config(setup, tmp_path / "full", steps=3, save_every=1, kl_coef=0.05, ppo_epochs=2, mini_batches=2)
    rl(full)
    part = replace(full, out=str(tmp_path / "part"), steps=2)
    rl(part)
    RLRun(replace(part, steps=3, resume=True)).train()

    def strip(records):
        return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in records]

    assert strip(train_records(tmp_path / "part")) == strip(train_records(tmp_path / "full"))
    assert param_digest(ckpt.load(tmp_path / "part" / "checkpoint")) == param_digest(
        ckpt.load(tmp_path / "full" / "checkpoint")
    )


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_runs_a_step_without_nan(setup, tmp_path, estimator):
    extra = {"kl_coef": 0.05, "kl_kind": "k1", "kl_in_reward": True} if estimator == "rloo" else {}
    if estimator == "reinforce_pp":
        extra = {"kl_coef": 0.01, "entropy_coef": 0.01, "dual_clip": 3.0, "micro_batch_size": 3}
    cfg = config(setup, tmp_path / estimator, estimator=estimator, agg="seq-mean-token-mean", **extra)
    rl(cfg)
    (rec,) = train_records(tmp_path / estimator)
    bad = [k for k, v in rec.items() if isinstance(v, float) and not math.isfinite(v)]
    assert not bad
    if estimator == "gae":
        assert "value_loss" in rec


def test_cli_rl_smoke(setup, tmp_path, capsys):
    from codefoundry import cli_rl

    argv = ["rl", "--policy", str(setup["policy"]), "--out", str(tmp_path / "cli"), "--task", str(setup["train"]),
            "--eval-task", str(setup["held"]), "--eval-problems", "2", "--steps", "1", "--group-size", "2",
            "--prompts-per-step", "2", "--max-new-tokens", "8", "--threads", "1", "--no-progress",
            "--no-tensorboard", "--dual-clip", "3"]  # fmt: skip
    parser = argparse.ArgumentParser(prog="codefoundry")
    cli_rl.register(parser.add_subparsers(dest="stage", required=True), argv)
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "held-out pass@1" in capsys.readouterr().out
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["config"]["dual_clip"] == 3.0 and summary["step"] == 1


def test_bad_config_is_one_line():
    with pytest.raises(ValueError, match="RLConfig.estimator"):
        RLConfig(policy="p", out="o", estimator="ppo2")
    with pytest.raises(ValueError, match="not a codefoundry checkpoint"):
        rl(RLConfig(policy="/nonexistent", out="o"))


def test_reward_stream_scores_rows_as_they_arrive_in_row_order(setup):
    """Rows added out of order, while earlier ones are being scored, come back in row order with the
    same verdicts as one batched call."""
    from codefoundry.tasks.registry import load_problems_file

    problem = load_problems_file(setup["train"])[0]
    completions = [
        problem.canonical_solution,
        "    return None\n",
        problem.canonical_solution,
        "    return (\n",
    ]
    worker = RewardWorker(workers=2)
    try:
        stream = worker.stream(len(completions))
        for row in (2, 0, 3, 1):
            stream.add(row, problem, completions[row])
        streamed = [s.passed for s in stream.result()]
        batched = [s.passed for s in worker.submit([problem] * 4, completions).result()]
    finally:
        worker.close()
    assert streamed == batched == [True, False, True, False]


@pytest.mark.parametrize("dedupe", [True, False])
def test_reward_stream_runs_a_repeated_completion_once(setup, dedupe):
    """A completion identical to an earlier row's of the same problem takes that row's score without a
    sandbox run (unless dedupe is off); the same text for another problem is still run."""
    from codefoundry.tasks.registry import load_problems_file

    first, second = load_problems_file(setup["train"])[:2]
    rows = [
        (first, first.canonical_solution),
        (first, "    return None\n"),
        (first, first.canonical_solution),
        (second, first.canonical_solution),
        (first, "    return None\n"),
    ]
    worker = RewardWorker(workers=2, dedupe=dedupe)
    try:
        stream = worker.stream(len(rows))
        for row, (problem, completion) in enumerate(rows):
            stream.add(row, problem, completion)
        scores = stream.result()
        alone = worker.submit([p for p, _ in rows], [c for _, c in rows]).result()
    finally:
        worker.close()
    assert [s.passed for s in scores] == [s.passed for s in alone]
    assert stream.executed == (3 if dedupe else 5)
    assert (scores[2] is scores[0] and scores[4] is scores[1]) == dedupe


def test_async_rollouts_generate_the_next_batch_before_the_update(setup, tmp_path):
    """With `async_rollouts`, step 1's batch is sampled by the weights before step 0's update (the same
    rows a fresh sampler draws from the initial checkpoint), and its behaviour log-probs, recorded by the
    sampler, are those weights' log-probs; step 0 trains on the synchronous step 0's batch."""
    from codefoundry.train.rl.rollout import start_rollout

    cfg = config(setup, tmp_path / "async", steps=3, async_rollouts=True)
    run = RLRun(cfg)
    try:
        first = run.step_once()
        ahead = run.pending
        assert ahead is not None and ahead.behaviour is not None
        initial = ckpt.load(cfg.policy)
        fresh = start_rollout(
            initial, run.codec, run.pick_problems(1), run.rewards, group_size=cfg.group_size,
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed * 7919 + 1,
        )  # fmt: skip
        fresh_roll, _ = fresh.result()
        roll, _ = ahead.result()
        assert roll.response_ids == fresh_roll.response_ids
        assert [s.passed for s in roll.scores] == [s.passed for s in fresh_roll.scores]
        batch = collate(roll.prompt_ids, roll.response_ids, device="cpu")
        with torch.no_grad():
            want, _, _ = response_forward(initial, batch, temperature=cfg.temperature)
            now, _, _ = response_forward(run.model, batch, temperature=cfg.temperature)
        real = batch.mask.bool()  # the sampler's log-probs (decode path) match the training forward's
        assert torch.allclose(ahead.behaviour[0][real], want[real], atol=1e-5)
        assert not torch.allclose(ahead.behaviour[0][real], now[real], atol=1e-5), "the update moved it"
        second = run.step_once()
        assert run.pending is not None and run.step == 2
        last = run.step_once()
        assert run.pending is None, "the last step generates nothing ahead"
    finally:
        run.close()
    sync = config(setup, tmp_path / "sync", steps=1)
    rl(sync)
    (sync_first,) = train_records(tmp_path / "sync")
    for key in ("reward_mean", "pass_rate", "response_len_mean", "pg_loss", "grad_norm"):
        assert first[key] == pytest.approx(sync_first[key], abs=1e-6), key
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert second["ratio_mean"] != pytest.approx(1.0, abs=1e-7), "step 1 trains one update off-policy"
    assert all(math.isfinite(r[k]) for r in (second, last) for k in ("pg_loss", "approx_kl", "grad_norm"))


def test_async_values_come_from_the_value_head_before_the_update(setup, tmp_path):
    """With a value head, the batch generated ahead carries the values of the head as it was before the
    update that ran meanwhile (zero-initialised), not the live head's."""
    run = RLRun(config(setup, tmp_path / "gae", steps=2, estimator="gae", async_rollouts=True))
    try:
        run.step_once()
        logp, values = run.pending.behaviour
        assert values is not None and torch.count_nonzero(values) == 0
        assert torch.count_nonzero(run.value_head.bias.detach()) > 0, "the update moved the live head"
        assert torch.isfinite(logp).all()
    finally:
        run.close()


def test_async_resume_trains_on_the_saved_batch(setup, tmp_path):
    """A run stopped after a checkpoint that holds a batch generated ahead resumes on exactly that batch:
    the metrics and final weights equal the uninterrupted run's."""
    full = config(setup, tmp_path / "full", steps=3, save_every=1, async_rollouts=True)
    rl(full)
    part = replace(full, out=str(tmp_path / "part"))
    run = RLRun(part)
    try:
        for _ in range(2):
            run.logger.log(run.step_once())
        run.save()  # the batch of step 2 is in it, scored
    finally:
        run.close()
    RLRun(replace(part, resume=True)).train()

    def strip(records):
        return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in records]

    assert strip(train_records(tmp_path / "part")) == strip(train_records(tmp_path / "full"))
    assert param_digest(ckpt.load(tmp_path / "part" / "checkpoint")) == param_digest(
        ckpt.load(tmp_path / "full" / "checkpoint")
    )
    with pytest.raises(ValueError, match="async_rollouts"):
        RLRun(replace(part, resume=True, async_rollouts=False))


def test_engine_option(setup, tmp_path):
    """`engine` takes local or vllm; vllm without the package is a one-line error before any work (the
    engine itself: tests/train/test_rl_vllm.py, run where vllm is installed)."""
    from codefoundry.train.rl.vllm_engine import vllm_available

    with pytest.raises(ValueError, match="RLConfig.engine"):
        config(setup, tmp_path / "a", engine="sglang")
    with pytest.raises(ValueError, match="RLConfig.vllm_memory"):
        config(setup, tmp_path / "b", engine="vllm", vllm_memory=1.5)
    if vllm_available():
        pytest.skip("vllm is installed here")
    with pytest.raises(ValueError, match="engine 'vllm' needs the vllm package"):
        RLRun(config(setup, tmp_path / "c", engine="vllm"))


def test_safety_penalty_hook(setup, tmp_path):
    """`safety_check` names a (problem, completion) -> risk function; `safety_penalty` times the risk is
    subtracted from the reward (sandbox errors stay NaN), and the flagged share is logged."""
    from codefoundry.tasks.registry import load_problems_file
    from codefoundry.train.rl.rollout import load_safety_check, safety_risks

    problem = load_problems_file(setup["train"])[0]
    codec = PromptCodec(cft.load(setup["policy"]))
    ok = Score(True, 1.0, ExecutionResult(Status.OK))
    broken = Score(False, 0.0, ExecutionResult(Status.SANDBOX_ERROR, message="planted"))
    roll = Rollout([problem] * 3, codec.encode([problem] * 3), [[1]] * 3, ["a", "b", "c"], [False] * 3,
                   [ok, ok, broken])  # fmt: skip
    shaped = shaped_rewards(roll, max_new_tokens=8, safety_risks=[1.0, 0.5, 1.0], safety_penalty=0.4)
    assert shaped[:2].tolist() == pytest.approx([0.6, 0.8]) and math.isnan(shaped[2])

    assert load_safety_check("tiny_kit:flag_everything")(problem, "x") == 1.0
    for spec, message in (("nope", "expected 'module:function'"), ("no_such_mod:f", "ModuleNotFoundError"),
                          ("tiny_kit:missing", "AttributeError"), ("tiny_kit:FAMILIES_X", "AttributeError")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            load_safety_check(spec)
    with pytest.raises(ValueError, match=r"returned 2.0 for .*a risk is in \[0, 1\]"):
        safety_risks(roll, lambda p, c: 2.0, "planted")
    with pytest.raises(ValueError, match="planted failed on .*ZeroDivisionError"):
        safety_risks(roll, lambda p, c: 1 / 0, "planted")
    with pytest.raises(ValueError, match="RLConfig.safety_penalty"):
        config(setup, tmp_path / "x", safety_penalty=0.5)  # a penalty with no check

    # The same step with and without the hook: the same samples, rewards lower by the penalty.
    plain = RLRun(config(setup, tmp_path / "plain"))
    hooked = RLRun(
        config(setup, tmp_path / "hooked", safety_check="tiny_kit:flag_everything", safety_penalty=0.25)
    )
    try:
        a, b = plain.step_once(), hooked.step_once()
    finally:
        plain.close()
        hooked.close()
    assert b["reward_mean"] == pytest.approx(a["reward_mean"] - 0.25, abs=1e-6)
    assert b["pass_rate"] == a["pass_rate"] and b["safety_flagged_frac"] == 1.0
    assert "safety_flagged_frac" not in a
