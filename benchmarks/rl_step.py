"""Time of one GRPO step (generation + reward + update): codefoundry's `codefoundry rl` loop vs TRL's
`GRPOTrainer`, on CPU, with the same tiny model, prompts, group size and reward work.

Both sides start from the same weights (ours, and its transformers twin through
`codefoundry.models.hf.to_transformers`), sample `--group-size` completions of each of `--prompts`
parametric problems with at most `--max-new` new tokens at temperature 1, score every completion with our
sandbox (`evaluate_many`: TRL's reward function calls it too, after cutting the completion at the same
stop strings), and take one AdamW step of the GRPO loss (beta 0, token-mean / TRL's `dapo`, fp32). Step
times are medians over `--steps` steps after one warm-up step; the reward share is the part of our step
spent waiting for the sandbox (the rest of the scoring overlaps generation).

    python benchmarks/rl_step.py --size tiny --prompts 4 --group-size 8 --max-new 64 --steps 5

The policy is a freshly initialised model, so completions mostly run to `--max-new` and almost none
parses (the sandbox then scores them without starting a process); each side's mean completion length and
share of completions that did not parse are reported, since both change the work. `--policy CKPT` uses a
trained checkpoint instead (e.g. the quickstart's SFT model), whose completions parse, run and often pass.
Ours runs a completion identical to another of its group once (`reward_dedupe`, the default; how many ran
is reported); TRL's reward function runs every one. `--no-reward-dedupe` makes ours run every one too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from codefoundry.models import checkpoint as ckpt
from codefoundry.models import tokenizer as cft
from codefoundry.models.config import config_for_size
from codefoundry.models.hf import to_transformers
from codefoundry.models.transformer import Transformer
from codefoundry.tasks import parametric
from codefoundry.tasks.problem import evaluate_many
from codefoundry.tasks.prompts import truncate_completion
from codefoundry.tasks.registry import parametric_problem, write_problems_file
from codefoundry.train.rl.rollout import PLAIN_STOP_STRINGS
from codefoundry.train.rl.trainer import RLConfig, RLRun


def build_policy(root: Path, size: str, problems) -> Path:
    """A tokenizer trained on the problems and a random `size` model, saved as a codefoundry checkpoint."""
    policy = root / "policy"
    tok = cft.train_texts([p.prompt + p.canonical_solution for p in problems], vocab_size=512, out=policy)
    torch.manual_seed(0)
    model = Transformer(config_for_size(size, tok.get_vocab_size(), max_seq_len=256))
    ckpt.save(model, policy, tokenizer=policy)
    return policy


def run_ours(policy: Path, task_file: Path, root: Path, args, *, async_rollouts: bool = False) -> dict:
    # An async run's last step generates nothing ahead, so it runs one more step that is not timed.
    steps = args.steps + (2 if async_rollouts else 1)
    cfg = RLConfig(
        policy=str(policy), out=str(root / ("ours-async" if async_rollouts else "ours")), task=str(task_file),
        eval_task="", eval_problems=0, async_rollouts=async_rollouts,
        estimator="grpo", group_size=args.group_size, prompts_per_step=args.prompts, max_new_tokens=args.max_new,
        temperature=1.0, lr=1e-6, steps=steps, save_every=0, threads=args.threads, progress=False,
        tensorboard=False, reward_workers=args.reward_workers, micro_batch_size=args.prompts * args.group_size,
        reward_dedupe=not args.no_reward_dedupe,
    )  # fmt: skip
    run = RLRun(cfg)
    records = []
    try:
        while run.step < cfg.steps:
            records.append(run.step_once())
    finally:
        run.close()
    timed = records[1 : 1 + args.steps]  # the first step warms the sandbox workers and the allocator
    step = statistics.median(r["time_step_s"] for r in timed)
    return {
        "step_s": [r["time_step_s"] for r in timed],
        "step_s_median": step,
        "generation_s_median": statistics.median(r["time_generation_s"] for r in timed),
        "reward_busy_s_median": statistics.median(r["time_reward_s"] for r in timed),
        "reward_wait_s_median": statistics.median(r["time_reward_wait_s"] for r in timed),
        "update_s_median": statistics.median(r["time_update_s"] for r in timed),
        "behaviour_s_median": statistics.median(r["time_behaviour_s"] for r in timed),
        "reward_share_median": statistics.median(r["reward_share"] for r in timed),
        "reward_runs_mean": statistics.mean(r["reward_runs"] for r in timed),
        "completion_tokens_mean": statistics.mean(r["response_len_mean"] for r in timed),
        "unparsed_frac": statistics.mean(r["compile_error_frac"] for r in timed),
    }


class StepTimer:
    """A TrainerCallback-shaped object recording each optimizer step's wall time."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, *a, **k):
        self._t = time.perf_counter()

    def on_step_end(self, *a, **k):
        self.times.append(time.perf_counter() - self._t)


def run_trl(policy: Path, problems, root: Path, args) -> dict:
    import datasets
    import transformers
    import trl

    model = to_transformers(ckpt.load(policy))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(policy / "tokenizer.json"), eos_token=cft.EOT, pad_token=cft.FIM_PAD
    )
    model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id
    by_id = {p.task_id: p for p in problems}
    reward_s: list[float] = []
    lengths: list[float] = []
    unparsed: list[float] = []  # per call, the share of completions the sandbox scored without a process

    def sandbox_reward(prompts, completions, task_id, completion_ids=None, **_):
        t0 = time.perf_counter()
        pairs = [
            (by_id[t], truncate_completion(c, PLAIN_STOP_STRINGS))
            for t, c in zip(task_id, completions, strict=True)
        ]
        scores = evaluate_many(pairs, workers=args.reward_workers or None, progress=False)
        reward_s.append(time.perf_counter() - t0)
        unparsed.append(statistics.mean(s.result.phase == "compile" for s in scores))
        if completion_ids is not None:
            lengths.append(statistics.mean(len(c) for c in completion_ids))
        return [s.reward for s in scores]

    n_rows = args.prompts * args.group_size
    config = trl.GRPOConfig(
        output_dir=str(root / "trl"), use_cpu=True, bf16=False, per_device_train_batch_size=n_rows,
        num_generations=args.group_size, max_completion_length=args.max_new, temperature=1.0, beta=0.0,
        learning_rate=1e-6, max_steps=args.steps + 1, logging_steps=1, report_to=[], save_strategy="no",
        use_bias_correction_kl=False, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    rows = [{"prompt": p.prompt, "task_id": p.task_id} for p in problems]
    dataset = datasets.Dataset.from_list(rows * ((n_rows * (args.steps + 2)) // len(rows) + 1))
    timer = StepTimer()
    trainer = trl.GRPOTrainer(model=model, reward_funcs=sandbox_reward, args=config, train_dataset=dataset,
                              processing_class=tok)  # fmt: skip
    trainer.add_callback(_as_callback(timer))
    trainer.train()
    timed = timer.times[1:]
    return {
        "step_s": timed,
        "step_s_median": statistics.median(timed),
        "reward_s_median": statistics.median(reward_s[1:]),
        "completion_tokens_mean": statistics.mean(lengths[1:]) if lengths else None,
        "unparsed_frac": statistics.mean(unparsed[1:]),
        "trl": trl.__version__,
        "transformers": transformers.__version__,
    }


def _as_callback(timer: StepTimer):
    from transformers import TrainerCallback

    class _Callback(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timer.on_step_begin()

        def on_step_end(self, *a, **k):
            timer.on_step_end()

    return _Callback()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="tiny")
    ap.add_argument(
        "--policy", help="a trained codefoundry checkpoint to use instead of random `--size` weights"
    )
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reward-workers", type=int, default=2)
    ap.add_argument(
        "--no-reward-dedupe", action="store_true",
        help="run every completion in the sandbox, copies of another in its group included (TRL's way)",
    )  # fmt: skip
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "rl_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    problems = [parametric_problem(p) for p in parametric.generate(64, seed=0)]
    with tempfile.TemporaryDirectory(prefix="cf-rl-bench-") as tmp:
        root = Path(tmp)
        task_file = write_problems_file(root / "problems.jsonl", problems)
        policy = Path(args.policy) if args.policy else build_policy(root, args.size, problems)
        load_before = os.getloadavg()
        ours = run_ours(policy, task_file, root, args)
        ours_async = run_ours(policy, task_file, root, args, async_rollouts=True)
        theirs = run_trl(policy, problems, root, args)
        load_after = os.getloadavg()
        params = ckpt.load(policy).num_params()
    ratio = theirs["step_s_median"] / ours["step_s_median"]
    ratio_async = theirs["step_s_median"] / ours_async["step_s_median"]
    for name, side, r in (
        ("codefoundry", ours, ratio),
        ("codefoundry --async-rollouts", ours_async, ratio_async),
    ):
        print(f"{name}: {side['step_s_median']:.3f} s/step (reward wait {side['reward_share_median']:.1%}, "
              f"{side['reward_runs_mean']:.1f} of {args.prompts * args.group_size} completions run), "
              f"TRL {theirs['step_s_median']:.3f} s/step -> {r:.2f}x; completions that did not parse: "
              f"ours {side['unparsed_frac']:.0%}, TRL's {theirs['unparsed_frac']:.0%}")  # fmt: skip
    result = {
        "benchmark": "rl_step",
        "size": args.size,
        "policy": args.policy or "random",
        "params": params,
        "prompts": args.prompts,
        "group_size": args.group_size,
        "max_new_tokens": args.max_new,
        "timed_steps": args.steps,
        "threads": args.threads,
        "reward_workers": args.reward_workers,
        "reward_dedupe": not args.no_reward_dedupe,
        "codefoundry": ours,
        "codefoundry_async": ours_async,
        "trl": theirs,
        "speedup_median": ratio,
        "speedup_async_median": ratio_async,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
