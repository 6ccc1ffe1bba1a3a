"""Advantage estimators for RL with outcome (verifiable) rewards: one call turns a batch of scalar rewards
into per-token advantages.

Batch layout, shared by every function here: `rewards` is (B,) with one scalar per completion (e.g. the
fraction of unit tests passed); rows are grouped contiguously by prompt, `group_size` rows per prompt
(rows [0, G) answer prompt 0, [G, 2G) prompt 1, ...); `mask` is (B, T) with 1 on the response tokens the
loss trains on. For the token-level estimators the outcome reward sits on each row's last valid token. An
optional in-reward KL term subtracts `kl_coef * kl[i, t]` on every valid token (pass
`kl_penalty(logp_old, logp_ref, "k1")`); the outcome estimators use the row's score
s_i = r_i - kl_coef * sum_t kl[i, t], which is verl's sum of the token rewards.

Estimators (`ESTIMATORS`), with A_i the advantage broadcast to every valid token of row i:

- `grpo`: A_i = (s_i - mean_g s) / (std_g s + eps), std with Bessel's correction, eps = 1e-6 (verl).
- `dr_grpo`: A_i = s_i - mean_g s (no std scaling; Dr. GRPO).
- `rloo`: A_i = s_i - mean_{j != i} s_j = G / (G - 1) * (s_i - mean_g s).
- `reinforce_pp`: token return R_t = r_t + gamma * R_{t+1} over the token rewards, then whitened over all
  valid tokens of the batch. No group baseline.
- `reinforce_pp_baseline`: s_i - mean_g s broadcast to tokens, then whitened over all valid tokens.
- `grpo_passk`: verl's pass@k form (Walder & Karkhanis, arXiv 2503.19595): in each group only the best
  row (the first one on a tie) gets an advantage, A = (s_max - s_second) / (std_g s + eps) with the
  Bessel std of the whole group (or unscaled with `norm_by_std=False`); every other row gets 0.
- `gae`: PPO with a value head; see `compute_gae`, which also returns the returns for `value_loss`.

Conventions and edge cases (verl's where libraries differ):

- Group of one: the group mean is taken as 0 and the std as 1, so `grpo`, `dr_grpo` and `rloo` give
  A = s (verl); `reinforce_pp_baseline` whitens the raw scores; `grpo_passk` refuses it (it needs a
  runner-up). An all-equal group gets A = 0 from `grpo`, `dr_grpo`, `rloo` and `grpo_passk`; for
  `reinforce_pp_baseline` its centred zeros are then shifted by the batch whitening, as in verl.
- A fully masked row keeps its reward in its group's statistics (verl would count it as 0: its token
  rewards sum to nothing) and gets advantage 0 on every token.
- Whitening is (x - mean) / sqrt(var + 1e-8) over the valid tokens of the batch passed in, variance with
  Bessel's correction (verl; OpenRLHF uses the biased variance, a factor sqrt(n / (n - 1)) apart). Under
  data parallelism the population is the local batch unless you gather first. With fewer than two valid
  tokens the whitened advantages are 0.
- Masked tokens always get advantage 0 and nothing here returns NaN:
  non-finite rewards are refused, and values / KL entries on masked positions are ignored.
- Returns and advantages of `reinforce_pp` and `gae` carry through masked tokens inside a row (the
  observation tokens of a multi-turn episode) instead of restarting there, the fix verl adopted later for
  multi-turn masks.

Everything is computed in float64 without gradients and returned in the rewards' floating dtype (float32
for integer or bool rewards).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

ESTIMATORS = ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "grpo_passk")

# The options each estimator accepts, with their defaults; `kl` / `kl_coef` (in-reward KL) fit all.
_KL_OPTIONS: dict[str, Any] = {"kl": None, "kl_coef": 0.0}
_OPTIONS: dict[str, dict[str, Any]] = {
    "gae": {"values": None, "gamma": 1.0, "lam": 0.95, "whiten": True, **_KL_OPTIONS},
    "grpo": {"eps": 1e-6, **_KL_OPTIONS},
    "dr_grpo": {**_KL_OPTIONS},
    "rloo": {**_KL_OPTIONS},
    "reinforce_pp": {"gamma": 1.0, **_KL_OPTIONS},
    "reinforce_pp_baseline": {**_KL_OPTIONS},
    "grpo_passk": {"eps": 1e-6, "norm_by_std": True, **_KL_OPTIONS},
}

WHITEN_EPS = 1e-8


def compute_advantages(
    estimator: str, rewards: torch.Tensor, mask: torch.Tensor, group_size: int, **options: Any
) -> torch.Tensor:
    """Per-token advantages (B, T) for `rewards` (B,) under `estimator` (one of `ESTIMATORS`).

    `group_size` rows per prompt, contiguous. Options, by estimator (defaults in brackets):
    every estimator takes `kl` ((B, T) per-token KL, None) and `kl_coef` (0.0) for a KL term in the reward;
    `grpo` takes `eps` (1e-6); `grpo_passk` takes `eps` (1e-6) and `norm_by_std` (True); `reinforce_pp`
    takes `gamma` (1.0); `gae` takes `values` ((B, T), required), `gamma` (1.0), `lam` (0.95) and
    `whiten` (True). Raises ValueError, one line, on an unknown estimator or option, a batch not divisible
    by `group_size`, mismatched shapes or a non-finite reward.
    """
    if estimator not in _OPTIONS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    accepted = _OPTIONS[estimator]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"estimator {estimator!r} takes no option {unknown[0]!r}; it takes: {', '.join(sorted(accepted))}"
        )
    opts = {**accepted, **options}
    valid = _check_batch(rewards, mask, group_size)
    kl, kl_coef = opts.pop("kl"), opts.pop("kl_coef")
    with torch.no_grad():
        if estimator in _OUTCOME:
            scores = _scores(rewards, valid, kl=kl, kl_coef=kl_coef)  # (B,)
            advantages = _OUTCOME[estimator](scores.view(-1, group_size), valid, **opts)
        else:
            token_rewards = _token_rewards(rewards, valid, kl=kl, kl_coef=kl_coef)
            if estimator == "gae":
                advantages, _ = _gae(token_rewards, valid, **opts)
            else:  # reinforce_pp
                returns = _discounted_returns(token_rewards, valid, gamma=opts["gamma"])
                advantages = masked_whiten(returns, valid)
        advantages = torch.where(valid, advantages, 0.0)
    return advantages.to(_out_dtype(rewards))


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and returns, both (B, T), for outcome `rewards` (B,) and critic `values` (B, T).

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, scanned backwards over
    the valid tokens (V after a row's last valid token is 0); returns R_t = A_t + V_t, taken before the
    advantages are whitened over the valid tokens (`whiten`, on as in verl and TRL). Defaults gamma = 1,
    lam = 0.95 (TRL; verl and OpenRLHF use lam = 1). Masked positions are 0 in both outputs.
    """
    valid = _check_batch(rewards, mask, 1)
    _check_same_shape("values", values, mask)
    with torch.no_grad():
        token_rewards = _token_rewards(rewards, valid, kl=kl, kl_coef=kl_coef)
        advantages, returns = _gae(token_rewards, valid, values=values, gamma=gamma, lam=lam, whiten=whiten)
        advantages = torch.where(valid, advantages, 0.0)
        returns = torch.where(valid, returns, 0.0)
    dtype = _out_dtype(rewards)
    return advantages.to(dtype), returns.to(dtype)


def token_level_rewards(
    rewards: torch.Tensor, mask: torch.Tensor, *, kl: torch.Tensor | None = None, kl_coef: float = 0.0
) -> torch.Tensor:
    """(B, T) token rewards: each row's outcome reward on its last valid token, minus `kl_coef * kl` on
    every valid token. A fully masked row gets nothing (its reward has no token to sit on)."""
    valid = _check_batch(rewards, mask, 1)
    with torch.no_grad():
        return _token_rewards(rewards, valid, kl=kl, kl_coef=kl_coef).to(_out_dtype(rewards))


def dynamic_sampling_keep(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Bool (B // group_size,): True for the groups whose rewards are not all equal (DAPO's dynamic
    sampling keeps those). A group of one is always all-equal, so it is dropped. Expand to rows with
    `keep.repeat_interleave(group_size)`."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (one per completion), got shape {tuple(rewards.shape)}")
    _check_groups(rewards.shape[0], group_size)
    groups = rewards.view(-1, group_size)
    return (groups != groups[:, :1]).any(dim=1)


def masked_whiten(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) with mean and Bessel-corrected variance over the `valid` entries;
    0 everywhere when fewer than two entries are valid. Entries outside `valid` are not meaningful."""
    valid = valid != 0
    count = valid.sum()
    if count < 2:
        return torch.zeros_like(x)
    zeroed = torch.where(valid, x, 0.0)
    mean = zeroed.sum() / count
    var = torch.where(valid, (x - mean) ** 2, 0.0).sum() / (count - 1)
    return (x - mean) * torch.rsqrt(var + WHITEN_EPS)


# --- the estimators -------------------------------------------------------------------------------------


def _grpo(groups: torch.Tensor, valid: torch.Tensor, *, eps: float) -> torch.Tensor:
    mean, std = _group_mean(groups), _group_std(groups)
    return _broadcast((groups - mean) / (std + eps), valid)


def _dr_grpo(groups: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return _broadcast(groups - _group_mean(groups), valid)


def _rloo(groups: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    size = groups.shape[1]
    if size == 1:  # no sibling to leave out: the baseline is 0 (verl)
        return _broadcast(groups, valid)
    return _broadcast((groups - groups.mean(dim=1, keepdim=True)) * size / (size - 1), valid)


def _reinforce_pp_baseline(groups: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return masked_whiten(_broadcast(groups - _group_mean(groups), valid), valid)


def _grpo_passk(groups: torch.Tensor, valid: torch.Tensor, *, eps: float, norm_by_std: bool) -> torch.Tensor:
    if groups.shape[1] < 2:
        raise ValueError("grpo_passk needs group_size >= 2 (the advantage is the best minus the runner-up)")
    top2 = groups.topk(2, dim=1).values  # (n_groups, 2)
    gap = top2[:, 0] - top2[:, 1]
    if norm_by_std:
        gap = gap / (groups.std(dim=1) + eps)
    best = groups.argmax(dim=1)  # the first maximum on a tie
    per_row = torch.zeros_like(groups)
    per_row[torch.arange(groups.shape[0]), best] = gap
    return _broadcast(per_row, valid)


_OUTCOME: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": _grpo,
    "dr_grpo": _dr_grpo,
    "rloo": _rloo,
    "reinforce_pp_baseline": _reinforce_pp_baseline,
    "grpo_passk": _grpo_passk,
}


def _gae(
    token_rewards: torch.Tensor,
    valid: torch.Tensor,
    *,
    values: torch.Tensor | None,
    gamma: float,
    lam: float,
    whiten: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    if values is None:
        raise ValueError("estimator 'gae' needs values=<(batch, tokens) critic values>")
    _check_same_shape("values", values, valid)
    values = torch.where(valid, values.detach().to(torch.float64), 0.0)
    next_value = torch.zeros_like(values[:, 0])
    running = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        step = valid[:, t]
        # On a masked token nothing happens: the next value and the running GAE pass through unchanged.
        running = torch.where(step, delta + gamma * lam * running, running)
        next_value = torch.where(step, values[:, t], next_value)
        advantages[:, t] = running
    returns = advantages + values
    if whiten:
        advantages = masked_whiten(advantages, valid)
    return advantages, returns


def _discounted_returns(token_rewards: torch.Tensor, valid: torch.Tensor, *, gamma: float) -> torch.Tensor:
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])
    for t in reversed(range(token_rewards.shape[1])):
        running = torch.where(valid[:, t], token_rewards[:, t] + gamma * running, running)
        returns[:, t] = running
    return returns


# --- helpers --------------------------------------------------------------------------------------------


def _group_mean(groups: torch.Tensor) -> torch.Tensor:
    if groups.shape[1] == 1:  # verl: a lone completion has baseline 0
        return torch.zeros_like(groups)
    return groups.mean(dim=1, keepdim=True)


def _group_std(groups: torch.Tensor) -> torch.Tensor:
    if groups.shape[1] == 1:  # verl: and scale 1 (the Bessel std of one value is undefined)
        return torch.ones_like(groups)
    return groups.std(dim=1, keepdim=True)


def _broadcast(groups: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(n_groups, G) per-row values -> (B, T) on the valid tokens, 0 elsewhere."""
    return torch.where(valid, groups.reshape(-1, 1), 0.0)


def _token_rewards(
    rewards: torch.Tensor, valid: torch.Tensor, *, kl: torch.Tensor | None, kl_coef: float
) -> torch.Tensor:
    n_rows, n_tokens = valid.shape
    out = torch.zeros(n_rows, n_tokens, dtype=torch.float64, device=valid.device)
    has_token = valid.any(dim=1)
    # Index of the last valid token: the first True of the row read backwards.
    last = n_tokens - 1 - valid.flip(dims=[1]).to(torch.int8).argmax(dim=1)
    rows = torch.arange(n_rows, device=valid.device)[has_token]
    out[rows, last[has_token]] = rewards.detach().to(torch.float64)[has_token]
    return out - _kl_term(valid, kl=kl, kl_coef=kl_coef)


def _scores(
    rewards: torch.Tensor, valid: torch.Tensor, *, kl: torch.Tensor | None, kl_coef: float
) -> torch.Tensor:
    """(B,) outcome scores: the reward minus the row's summed KL term. Equal to verl's sum of the token
    rewards, except that a fully masked row keeps its reward (it has no token to carry it)."""
    return rewards.detach().to(torch.float64) - _kl_term(valid, kl=kl, kl_coef=kl_coef).sum(dim=-1)


def _kl_term(valid: torch.Tensor, *, kl: torch.Tensor | None, kl_coef: float) -> torch.Tensor:
    """(B, T) kl_coef * kl on the valid tokens, 0 elsewhere (whatever kl holds there)."""
    if kl is None or kl_coef == 0.0:
        return torch.zeros(valid.shape, dtype=torch.float64, device=valid.device)
    _check_same_shape("kl", kl, valid)
    return kl_coef * torch.where(valid, kl.detach().to(torch.float64), 0.0)


def _check_batch(rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """Validate the shared batch layout; returns the mask as bool (B, T)."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (one per completion), got shape {tuple(rewards.shape)}")
    if mask.dim() != 2:
        raise ValueError(f"mask must be (batch, tokens), got shape {tuple(mask.shape)}")
    if rewards.shape[0] != mask.shape[0]:
        raise ValueError(f"rewards has {rewards.shape[0]} rows but mask has {mask.shape[0]}")
    _check_groups(rewards.shape[0], group_size)
    finite = torch.isfinite(rewards.to(torch.float64))
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(f"rewards[{row}] is {float(rewards[row])}: every reward must be a finite number")
    return mask != 0


def _check_groups(n_rows: int, group_size: int) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if n_rows % group_size:
        raise ValueError(f"batch of {n_rows} rows is not divisible by group_size {group_size}")


def _check_same_shape(name: str, x: torch.Tensor, mask: torch.Tensor) -> None:
    if x.shape != mask.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but mask has {tuple(mask.shape)}")


def _out_dtype(rewards: torch.Tensor) -> torch.dtype:
    return rewards.dtype if rewards.is_floating_point() else torch.float32
