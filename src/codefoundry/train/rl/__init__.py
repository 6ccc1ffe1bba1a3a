"""RL post-training with verifiable rewards: the functional core (advantage estimators, policy and value
losses, KL estimators, temperature-aware log-probs) that the `codefoundry rl` loop and tests call directly.

Batch layout: rewards (B,) with rows grouped contiguously by prompt, `group_size` rows per prompt; mask
(B, T) with 1 on response tokens. See `advantages` and `losses` for the formulas and conventions.
"""

from codefoundry.train.rl.advantages import (
    ESTIMATORS,
    compute_advantages,
    compute_gae,
    dynamic_sampling_keep,
    masked_whiten,
    token_level_rewards,
)
from codefoundry.train.rl.losses import (
    AGG_MODES,
    KL_KINDS,
    aggregate_loss,
    entropy_from_logits,
    kl_penalty,
    logprobs_from_logits,
    policy_loss,
    value_loss,
)

__all__ = [
    "AGG_MODES",
    "ESTIMATORS",
    "KL_KINDS",
    "aggregate_loss",
    "compute_advantages",
    "compute_gae",
    "dynamic_sampling_keep",
    "entropy_from_logits",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_whiten",
    "policy_loss",
    "token_level_rewards",
    "value_loss",
]
