"""Losses for RL post-training: the clipped policy surrogate, the clipped value loss, KL estimators,
entropy and temperature-aware log-probs, and the loss aggregation modes with exact gradient accumulation.

Tensors are (B, T) over response tokens with `mask` 1 on the tokens that train; values at masked positions
(padding logits, -inf log-probs) never reach the loss or its gradient.

Aggregation (`AGG_MODES`), for a per-token loss l and mask M, as verl defines them (its `agg_loss` with
global counts, after verl issue #3741):

- `token-mean`: sum_{i,t} M l / N, N the number of valid tokens (TRL's default `dapo` normaliser).
- `seq-mean-token-mean`: sum_i (sum_t M l / |o_i|) / S, S the number of non-empty rows (original GRPO).
- `seq-mean-token-sum`: sum_i sum_t M l / S.
- `seq-mean-token-sum-norm`: sum_{i,t} M l / (S * L), L a constant (`max_tokens`, default the padded
  length T): Dr. GRPO's length-unbiased normaliser, equal to TRL's `dr_grpo`. verl's older `agg_loss`
  divided by L alone, without S.

Gradient accumulation: by default N and S count the micro-batch passed in. Pass `global_tokens` (N) and
`global_seqs` (S) summed over every micro-batch of the optimiser step and the summed gradients of the
micro-batch losses equal the gradient of the one-batch loss, in every mode. (Under DDP, which averages
gradients over ranks, also sum the counts over ranks and multiply the loss by the world size.) Counts below
1 are treated as 1, so an empty batch gives a loss of 0, not NaN.
"""

from __future__ import annotations

import torch

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k2", "k3", "kl", "mse", "low_var_kl", "abs")

# Log-ratio clamp before exp (verl): keeps exp finite when the policy and the sampler disagree wildly.
LOG_RATIO_CLAMP = 20.0
# verl clamps the k3 estimate itself to [-10, 10].
K3_CLAMP = 10.0

Count = int | float | torch.Tensor | None


def aggregate_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    agg: str = "token-mean",
    global_tokens: Count = None,
    global_seqs: Count = None,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss (B, T) to a scalar with `agg` (see the module docstring for the formulas and
    for `global_tokens` / `global_seqs` / `max_tokens`)."""
    if agg not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation {agg!r}; known: {', '.join(AGG_MODES)}")
    _check_same_shape("loss", loss, mask)
    valid = mask != 0
    # where (not multiply): an inf or NaN on a masked position must not turn into NaN.
    masked = torch.where(valid, loss, 0.0)
    tokens_per_row = valid.sum(dim=-1)  # (B,)
    if agg == "token-mean":
        return masked.sum() / _count(global_tokens, tokens_per_row.sum(), loss)
    rows = _count(global_seqs, (tokens_per_row > 0).sum(), loss)
    if agg == "seq-mean-token-mean":
        per_row = masked.sum(dim=-1) / tokens_per_row.clamp(min=1)
        return per_row.sum() / rows
    if agg == "seq-mean-token-sum":
        return masked.sum() / rows
    length = mask.shape[-1] if max_tokens is None else max_tokens
    if length < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    return masked.sum() / (rows * length)


def policy_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    global_tokens: Count = None,
    global_seqs: Count = None,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate, aggregated with `agg`; returns (loss, stats).

    Per token, with rho = exp(clamp(logp - logp_old, -20, 20)):
    l = max(-A * rho, -A * clip(rho, 1 - clip_low, 1 + clip_high)). `clip_high` > `clip_low` is DAPO's
    clip-higher. `dual_clip` = c > 1 (off by default, as in OpenRLHF; verl always uses c = 3) also caps the
    loss of negative-advantage tokens at -A * c, so a token with rho > c and A < 0 gives no gradient.
    `logp_old` and `advantages` are treated as constants. With one update per rollout pass
    `logp.detach()` as `logp_old`: the ratio is then 1 and only its gradient matters.

    Stats (floats over the valid tokens of this call): `clip_frac_low` (A < 0 and rho < 1 - clip_low),
    `clip_frac_high` (A > 0 and rho > 1 + clip_high), `dual_clip_frac` (A < 0 and rho > c), `approx_kl`
    (mean of logp_old - logp, verl's k1 `ppo_kl`), `ratio_mean`.
    """
    for name, x in (("logp_old", logp_old), ("advantages", advantages)):
        _check_same_shape(name, x, logp)
    _check_same_shape("logp", logp, mask)
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low} and {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    valid = mask != 0
    # Zero the masked positions before exp: a -inf - -inf there would give NaN gradients through `where`.
    log_ratio = torch.where(valid, logp - logp_old.detach(), 0.0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    adv = torch.where(valid, advantages.detach(), 0.0)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * dual_clip), per_token)
    loss = aggregate_loss(
        per_token, mask, agg=agg, global_tokens=global_tokens, global_seqs=global_seqs, max_tokens=max_tokens
    )
    with torch.no_grad():
        r = ratio.detach()
        stats = {
            "clip_frac_low": _masked_mean((adv < 0) & (r < 1.0 - clip_low), valid),
            "clip_frac_high": _masked_mean((adv > 0) & (r > 1.0 + clip_high), valid),
            "dual_clip_frac": _masked_mean((adv < 0) & (r > dual_clip), valid) if dual_clip else 0.0,
            "approx_kl": _masked_mean(-log_ratio.detach(), valid),
            "ratio_mean": _masked_mean(r, valid),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    values_old: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float = 0.5,
    agg: str = "token-mean",
    global_tokens: Count = None,
    global_seqs: Count = None,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped value loss (verl): V_clip = V_old + clip(V - V_old, -clip, clip),
    loss = 0.5 * agg(max((V - R)^2, (V_clip - R)^2)). `clip` defaults to verl's and OpenRLHF's 0.5 (TRL
    uses 0.2). Stats: `vf_clip_frac` (tokens where the clipped term is the larger), `value_mean`."""
    for name, x in (("values_old", values_old), ("returns", returns)):
        _check_same_shape(name, x, values)
    _check_same_shape("values", values, mask)
    if clip <= 0:
        raise ValueError(f"value clip must be > 0, got {clip}")
    valid = mask != 0
    values_v = torch.where(valid, values, 0.0)
    old = torch.where(valid, values_old.detach(), 0.0)
    target = torch.where(valid, returns.detach(), 0.0)
    clipped_values = old + (values_v - old).clamp(-clip, clip)
    err = (values_v - target) ** 2
    err_clipped = (clipped_values - target) ** 2
    loss = 0.5 * aggregate_loss(
        torch.maximum(err, err_clipped),
        mask,
        agg=agg,
        global_tokens=global_tokens,
        global_seqs=global_seqs,
        max_tokens=max_tokens,
    )
    with torch.no_grad():
        stats = {
            "vf_clip_frac": _masked_mean(err_clipped > err, valid),
            "value_mean": _masked_mean(values_v.detach(), valid),
        }
    return loss, stats


def kl_penalty(logp: torch.Tensor, logp_ref: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL estimate (same shape as `logp`, not masked) of the policy from the reference, for
    tokens sampled from the policy. With x = logp - logp_ref:

    - `k1` (alias `kl`): x. Unbiased; use it in the reward, its gradient as a loss is zero in expectation.
    - `k2` (alias `mse`): x^2 / 2.
    - `k3` (alias `low_var_kl`): exp(-x) - 1 + x, computed as verl does: x clamped to [-20, 20] before the
      exp and the result clamped to [-10, 10]. Always >= 0; biased as a loss when off-policy.
    - `abs`: |x| (verl).
    """
    _check_same_shape("logp_ref", logp_ref, logp)
    x = logp - logp_ref
    if kind in ("k1", "kl"):
        return x
    if kind in ("k2", "mse"):
        return 0.5 * x.square()
    if kind in ("k3", "low_var_kl"):
        neg = (-x).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # log(pi_ref / pi)
        return (torch.exp(neg) - neg - 1.0).clamp(-K3_CLAMP, K3_CLAMP)
    if kind == "abs":
        return x.abs()
    raise ValueError(f"unknown KL estimator {kind!r}; known: {', '.join(KL_KINDS)}")


def logprobs_from_logits(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) at `ids`: logits (..., V), ids (...) -> (...), float32.

    `logits[..., t, :]` must already score `ids[..., t]` (shift a causal LM's logits by one first). Pass
    the sampling temperature in every forward that feeds a ratio or a KL, or the ratio is not 1 at the first
    step. Computed in float32, so a bf16 (B, T, V) is upcast once (2x its memory).
    """
    if logits.shape[:-1] != ids.shape:
        raise ValueError(f"logits has shape {tuple(logits.shape)} but ids has {tuple(ids.shape)}")
    return log_softmax_scaled(logits, temperature).gather(-1, ids.long().unsqueeze(-1)).squeeze(-1)


def log_softmax_scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) over the last axis, float32 (no copy for the division by 1)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float()
    return torch.log_softmax(z if temperature == 1.0 else z / temperature, dim=-1)


def entropy_from_logits(logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) over the last axis: (..., V) -> (...), float32; stable for
    large finite logits (an -inf logit gives NaN)."""
    return entropy_from_log_softmax(log_softmax_scaled(logits, temperature))


def entropy_from_log_softmax(logp: torch.Tensor) -> torch.Tensor:
    """-sum(p * log p) over the last axis, from log-probabilities (`log_softmax_scaled`'s): what a caller
    that has them already pays for an entropy, instead of a second softmax and logsumexp."""
    return -(logp.exp() * logp).sum(dim=-1)


def _count(given: Count, local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A normaliser, at least 1, as a tensor of at least float32 (a bf16 count of 10^5 tokens is off by
    hundreds)."""
    value = local if given is None else given
    dtype = torch.promote_types(like.dtype, torch.float32)
    return torch.as_tensor(value, dtype=dtype, device=like.device).clamp(min=1.0)


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> float:
    count = int(valid.sum())
    if count == 0:
        return 0.0
    return float(torch.where(valid, x.to(torch.float64), 0.0).sum() / count)


def _check_same_shape(name: str, x: torch.Tensor, reference: torch.Tensor) -> None:
    if x.shape != reference.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but expected {tuple(reference.shape)}")
