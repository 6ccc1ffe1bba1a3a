"""The update half of an RL step: old-policy / reference / value forwards, advantages, and the clipped
policy-gradient optimisation over epochs, mini-batches and micro-batches.

Per micro-batch the loss is policy_loss + kl_coef * KL (when the KL is a loss) - entropy_coef * entropy
+ vf_coef * value_loss (gae), every term aggregated with the same `agg` and the token / sequence counts of
the whole mini-batch, so the gradients summed over micro-batches are those of the mini-batch in one piece.
Statistics are token-weighted means over the step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from codefoundry.models.transformer import Transformer
from codefoundry.train.rl.advantages import compute_advantages, compute_gae
from codefoundry.train.rl.losses import aggregate_loss, kl_penalty, policy_loss, value_loss
from codefoundry.train.rl.rollout import ResponseBatch, response_forward

if TYPE_CHECKING:
    from codefoundry.train.rl.trainer import RLConfig

__all__ = ["UpdateInputs", "forward_ahead", "frozen_forward", "ppo_update", "single_pass"]


@dataclass
class UpdateInputs:
    batch: ResponseBatch  # rows kept for training, whole groups, contiguous
    rewards: torch.Tensor  # (B,)
    group_size: int
    # (logp, values or None), (B, R): the generating policy's, when the batch was generated before an
    # earlier update (async rollouts: the sampler's log-probs, or a no-grad forward's with values); the
    # old policy of the PPO ratio is then that one.
    behaviour: tuple[torch.Tensor, torch.Tensor | None] | None = None


@torch.no_grad()
def frozen_forward(model: Transformer, batch: ResponseBatch, cfg: RLConfig, *, value_head=None):
    """(logp, values or None), (B, R), micro-batch by micro-batch, without gradients."""
    logps, values = [], []
    B = batch.mask.shape[0]
    for start in range(0, B, cfg.micro_batch_size):
        sub = batch.rows(torch.arange(start, min(B, start + cfg.micro_batch_size)))
        logp, _, v = response_forward(model, sub, temperature=cfg.temperature, value_head=value_head)
        logps.append(logp)
        values.append(v)
    return torch.cat(logps), (torch.cat(values) if value_head is not None else None)


def _advantages(inputs: UpdateInputs, cfg: RLConfig, logp_old, logp_ref, values_old):
    """(advantages, returns or None), (B, R)."""
    mask = inputs.batch.mask
    kl_opts: dict[str, Any] = {}
    if cfg.kl_coef > 0 and cfg.kl_in_reward:
        kl_opts = {"kl": kl_penalty(logp_old, logp_ref, cfg.kl_kind), "kl_coef": cfg.kl_coef}
    if cfg.estimator == "gae":
        return compute_gae(inputs.rewards, values_old, mask, gamma=cfg.gamma, lam=cfg.lam, **kl_opts)
    opts = dict(kl_opts)
    if cfg.estimator == "reinforce_pp":
        opts["gamma"] = cfg.gamma
    return compute_advantages(cfg.estimator, inputs.rewards, mask, inputs.group_size, **opts), None


def single_pass(cfg: RLConfig, rows: int) -> bool:
    """Whether the update is one forward and backward over all `rows` rows (one epoch, one mini-batch,
    one micro-batch): then its forward can run before the rewards are in (`forward_ahead`)."""
    return cfg.ppo_epochs == 1 and cfg.mini_batches == 1 and rows <= cfg.micro_batch_size


def forward_ahead(model: Transformer, batch: ResponseBatch, cfg: RLConfig, *, value_head=None):
    """The forward `ppo_update` would run first on a `single_pass` batch, with gradients, done ahead: a
    synchronous step runs it while the sandbox scores the last rows, then hands it to `ppo_update`
    (`ahead=`) if every row is kept. The same rows, columns and operations, so the same values."""
    return _policy_forward(model, batch.rows(torch.arange(batch.mask.shape[0])), cfg, value_head)


def _policy_forward(model: Transformer, sub: ResponseBatch, cfg: RLConfig, value_head):
    """(logp, entropy, values) of a micro-batch, with gradients: what the loss is computed from."""
    return response_forward(model, sub, temperature=cfg.temperature, value_head=value_head, entropy=True,
                            entropy_grad=cfg.entropy_coef > 0)  # fmt: skip


def ppo_update(
    model: Transformer, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], inputs: UpdateInputs,
    cfg: RLConfig, *, ref: Transformer | None = None, value_head: nn.Module | None = None, step: int = 0,
    ahead: tuple | None = None,
) -> dict[str, float]:  # fmt: skip
    """Advantages and the optimizer steps of one RL step; returns the step's update statistics. `ahead`
    is `forward_ahead`'s output for this batch (a `single_pass` update only)."""
    batch, B = inputs.batch, inputs.batch.mask.shape[0]
    if ahead is not None and not single_pass(cfg, B):
        raise ValueError("ppo_update: a forward done ahead needs a single-pass update")
    t0 = time.perf_counter()
    logp_old = values_old = logp_ref = None
    if inputs.behaviour is not None:
        logp_old, values_old = inputs.behaviour
    elif cfg.needs_old_forward:
        logp_old, values_old = frozen_forward(model, batch, cfg, value_head=value_head)
    if ref is not None:
        logp_ref, _ = frozen_forward(ref, batch, cfg)
    advantages, returns = _advantages(inputs, cfg, logp_old, logp_ref, values_old)
    stats = _Stats()
    stats.add_value("time_logprob_s", time.perf_counter() - t0)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=gen) if cfg.mini_batches > 1 else torch.arange(B)
        for mb in order.tensor_split(cfg.mini_batches):
            if mb.numel() == 0:
                continue
            mask = batch.mask[mb]
            counts = {"global_tokens": mask.sum(), "global_seqs": (mask.sum(dim=1) > 0).sum(),
                      "max_tokens": cfg.max_new_tokens}  # fmt: skip
            for micro in mb.split(cfg.micro_batch_size):
                tensors = (advantages, logp_old, logp_ref, values_old, returns)
                _micro_step(model, batch.rows(micro), [_take(t, micro) for t in tensors], cfg, counts,
                            value_head, stats, ahead)  # fmt: skip
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
            stats.add_value("grad_norm", float(norm))
            stats.close_step(("pg_loss", "loss", "value_loss"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    stats.add_value(
        "advantage_abs_mean", float((advantages.abs() * batch.mask).sum() / batch.mask.sum().clamp(min=1))
    )
    return stats.result()


def _take(t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t[rows.to(t.device)]


def _micro_step(model, sub: ResponseBatch, tensors, cfg: RLConfig, counts, value_head, stats, ahead) -> None:
    adv, old, ref, v_old, returns = tensors
    logp, ent, values = ahead or _policy_forward(model, sub, cfg, value_head)
    old = logp.detach() if old is None else old
    agg = {"agg": cfg.agg, **counts}
    loss, pg = policy_loss(logp, old, adv, sub.mask, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                           dual_clip=cfg.dual_clip, **agg)  # fmt: skip
    n = float(sub.mask.sum())
    # Loss terms are normalised by the mini-batch's counts: micro-batch values add up to the mini-batch's.
    stats.add("pg_loss", float(loss.detach()), 0.0)
    for key in ("clip_frac_low", "clip_frac_high", "dual_clip_frac", "approx_kl", "ratio_mean"):
        stats.add(key, pg[key] * n, n)
    valid = sub.mask != 0
    stats.add("entropy", float(torch.where(valid, ent.detach(), 0.0).sum()), n)
    if ref is not None:
        kl = kl_penalty(logp, ref, cfg.kl_kind)
        stats.add("kl", float(torch.where(valid, kl.detach(), 0.0).sum()), n)
        if not cfg.kl_in_reward:
            loss = loss + cfg.kl_coef * aggregate_loss(kl, sub.mask, **agg)
    if cfg.entropy_coef > 0:
        loss = loss - cfg.entropy_coef * aggregate_loss(ent, sub.mask, **agg)
    if value_head is not None:
        vl, vs = value_loss(values, v_old, returns, sub.mask, clip=cfg.vf_clip, **agg)
        loss = loss + cfg.vf_coef * vl
        stats.add("value_loss", float(vl.detach()), 0.0)
        stats.add("vf_clip_frac", vs["vf_clip_frac"] * n, n)
    stats.add("loss", float(loss.detach()), 0.0)
    loss.backward()


class _Stats:
    """Sums and weights; `add(key, value * w, w)` gives weighted means, `add_value` a plain mean."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, key: str, value: float, weight: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.weights[key] = self.weights.get(key, 0.0) + weight

    def add_value(self, key: str, value: float) -> None:
        self.add(key, value, 1.0)

    def close_step(self, keys: tuple[str, ...]) -> None:
        """One optimizer step done: the summed micro-batch values of `keys` count as one sample."""
        for key in keys:
            if key in self.weights:
                self.weights[key] += 1.0

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.weights[k] if self.weights[k] else 0.0 for k in self.sums}
