"""Advantage estimators against the issue's golden numbers, plain-loop references and edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from codefoundry.train import rl
from codefoundry.train.rl import ESTIMATORS, compute_advantages, compute_gae, dynamic_sampling_keep

# The issue's fixed batch: three groups of four; the middle group has zero variance.
REWARDS = torch.tensor([1.0, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0])
# Ragged response lengths (49 tokens), the lengths the training notes use for REINFORCE++-baseline.
LENGTHS = [6, 3, 5, 2, 6, 6, 1, 4, 3, 5, 6, 2]
T = 7


def ragged_mask(lengths: list[int], width: int = T) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


def per_row(advantages: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """The single value each row carries on its valid tokens (asserting it is the same on all of them)."""
    values = []
    for row, m in zip(advantages, mask, strict=True):
        on = row[m.bool()]
        assert torch.all(on == on[0]), row
        values.append(float(on[0]))
    return values


def extra_options(estimator: str, mask: torch.Tensor) -> dict:
    return {"values": torch.linspace(-1, 1, mask.numel()).view_as(mask)} if estimator == "gae" else {}


@pytest.mark.parametrize(
    ("estimator", "expected"),
    [
        ("grpo", [0.866024, -0.866024] * 2 + [0.0] * 4 + [-0.499999, -0.499999, 1.499997, -0.499999]),
        ("rloo", [0.666667, -0.666667] * 2 + [0.0] * 4 + [-0.333333, -0.333333, 1.0, -0.333333]),
        ("dr_grpo", [0.5, -0.5] * 2 + [0.0] * 4 + [-0.25, -0.25, 0.75, -0.25]),
    ],
)
def test_group_estimators_match_the_issue_numbers(estimator: str, expected: list[float]) -> None:
    mask = ragged_mask(LENGTHS)
    advantages = compute_advantages(estimator, REWARDS, mask, 4)
    assert advantages.shape == mask.shape and advantages.dtype == torch.float32
    assert per_row(advantages, mask) == pytest.approx(expected, abs=1e-6)
    assert torch.all(advantages[mask == 0] == 0)


def test_reinforce_pp_baseline_whitens_over_valid_tokens_like_verl() -> None:
    mask = ragged_mask(LENGTHS)
    advantages = compute_advantages("reinforce_pp_baseline", REWARDS, mask, 4)
    # verl's values (unbiased variance) for this batch, from the training notes.
    verl = [1.007451, -1.524093, 1.007451, -1.524093] + [-0.258321] * 4
    verl += [-0.891207, -0.891207, 1.640338, -0.891207]
    assert per_row(advantages, mask) == pytest.approx(verl, abs=1e-5)
    valid = advantages[mask.bool()].double()
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(advantages[mask == 0] == 0)


def test_reinforce_pp_is_the_whitened_reward_to_go_of_the_token_rewards() -> None:
    mask = ragged_mask(LENGTHS)
    kl = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0))
    gamma, coef = 0.9, 0.1
    advantages = compute_advantages("reinforce_pp", REWARDS, mask, 4, gamma=gamma, kl=kl, kl_coef=coef)
    # Plain reference: token reward = outcome on the last token - coef * kl, discounted sum to the end.
    returns = []
    for i, n in enumerate(LENGTHS):
        token_rewards = [-coef * float(kl[i, t]) for t in range(n)]
        token_rewards[-1] += float(REWARDS[i])
        for t in range(n):
            returns.append(sum(gamma ** (s - t) * token_rewards[s] for s in range(t, n)))
    mean = sum(returns) / len(returns)
    std = math.sqrt(sum((g - mean) ** 2 for g in returns) / (len(returns) - 1))
    expected = [(g - mean) / math.sqrt(std**2 + 1e-8) for g in returns]
    assert advantages[mask.bool()].tolist() == pytest.approx(expected, abs=1e-5)
    valid = advantages[mask.bool()].double()
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(advantages[mask == 0] == 0)


def gae_reference(rewards: list[float], values: list[list[float]], gamma: float, lam: float):
    """GAE written out, row by row, over each row's valid tokens only."""
    advantages, returns = [], []
    for reward, row_values in zip(rewards, values, strict=True):
        n = len(row_values)
        row_adv = [0.0] * n
        last = 0.0
        for t in reversed(range(n)):
            token_reward = reward if t == n - 1 else 0.0
            next_value = row_values[t + 1] if t + 1 < n else 0.0
            delta = token_reward + gamma * next_value - row_values[t]
            last = delta + gamma * lam * last
            row_adv[t] = last
        advantages.append(row_adv)
        returns.append([a + v for a, v in zip(row_adv, row_values, strict=True)])
    return advantages, returns


def test_gae_matches_a_plain_loop_with_gamma_1_lambda_095() -> None:
    mask = ragged_mask(LENGTHS)
    values = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    values_with_padding_garbage = torch.where(mask.bool(), values, torch.tensor(float("nan")))
    advantages, returns = compute_gae(REWARDS, values_with_padding_garbage, mask, whiten=False)
    rows = [values[i, :n].tolist() for i, n in enumerate(LENGTHS)]
    ref_adv, ref_ret = gae_reference(REWARDS.tolist(), rows, gamma=1.0, lam=0.95)
    flat = [a for row in ref_adv for a in row]
    assert advantages[mask.bool()].tolist() == pytest.approx(flat, abs=1e-5)
    assert returns[mask.bool()].tolist() == pytest.approx([r for row in ref_ret for r in row], abs=1e-5)
    assert torch.all(advantages[mask == 0] == 0) and torch.all(returns[mask == 0] == 0)
    # compute_advantages("gae") whitens the same advantages over the valid tokens (verl, TRL).
    whitened = compute_advantages("gae", REWARDS, mask, 4, values=values)
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((a - mean) ** 2 for a in flat) / (len(flat) - 1))
    assert whitened[mask.bool()].tolist() == pytest.approx([(a - mean) / std for a in flat], abs=1e-5)


@pytest.mark.parametrize("estimator", ["gae", "reinforce_pp"])
def test_token_level_estimators_carry_through_masked_tokens_inside_a_row(estimator: str) -> None:
    """A multi-turn row (observation tokens masked out mid-row) gets the advantages of the same row with
    the observation tokens cut out: the outcome reward still reaches the first turn."""
    gappy = torch.tensor([[1.0, 1, 0, 0, 1, 1, 0], [1, 0, 1, 0, 1, 0, 0]])
    compact = torch.tensor([[1.0, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0]])
    rewards = torch.tensor([1.0, -0.5])
    values = torch.randn(2, T, generator=torch.Generator().manual_seed(2))
    compact_values = torch.zeros(2, T)
    for i in range(2):
        kept = values[i][gappy[i].bool()]
        compact_values[i, : len(kept)] = kept
    opts = {"values": values, "lam": 0.9} if estimator == "gae" else {"gamma": 0.9}
    copts = {"values": compact_values, "lam": 0.9} if estimator == "gae" else {"gamma": 0.9}
    a = compute_advantages(estimator, rewards, gappy, 1, **opts)
    b = compute_advantages(estimator, rewards, compact, 1, **copts)
    assert a[gappy.bool()].tolist() == pytest.approx(b[compact.bool()].tolist(), abs=1e-6)
    assert torch.all(a[gappy == 0] == 0)


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_passk_rewards_only_the_best_row_by_its_lead(norm_by_std: bool) -> None:
    rewards = torch.tensor([0.2, 0.9, 0.5, 0.9, 1, 1, 1, 1, 0, 0, 1, 0])
    mask = ragged_mask(LENGTHS)
    advantages = compute_advantages("grpo_passk", rewards, mask, 4, norm_by_std=norm_by_std)
    third_std = torch.tensor([0.0, 0, 1, 0]).std().item()  # Bessel: 0.5
    lead = 1.0 / (third_std + 1e-6) if norm_by_std else 1.0
    # Group 1: the best (0.9, first of a tie) leads the runner-up (0.9) by 0; group 2 ties; group 3 leads by 1.
    assert per_row(advantages, mask) == pytest.approx([0.0] * 10 + [lead, 0.0], abs=1e-6)
    spread = compute_advantages("grpo_passk", torch.tensor([0.1, 0.7, 0.4]), torch.ones(3, 2), 3)
    expected = (0.7 - 0.4) / (torch.tensor([0.1, 0.7, 0.4]).std().item() + 1e-6)
    assert spread[:, 0].tolist() == pytest.approx([0.0, expected, 0.0], abs=1e-5)


def test_group_of_one_follows_verl_and_passk_refuses_it() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.5])
    mask = torch.ones(3, 4)
    assert compute_advantages("grpo", rewards, mask, 1)[:, 0].tolist() == pytest.approx(
        [1 / (1 + 1e-6), 0.0, 0.5 / (1 + 1e-6)]
    )
    assert compute_advantages("rloo", rewards, mask, 1)[:, 0].tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert compute_advantages("dr_grpo", rewards, mask, 1)[:, 0].tolist() == pytest.approx([1.0, 0.0, 0.5])
    baseline = compute_advantages("reinforce_pp_baseline", rewards, mask, 1)
    # Baseline 0, then whitened over the 12 tokens: +-0.5 around the mean 0.5, Bessel std sqrt(2 / 11).
    z = 0.5 / math.sqrt(2 / 11)
    assert baseline[:, 0].tolist() == pytest.approx([z, -z, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="grpo_passk needs group_size >= 2"):
        compute_advantages("grpo_passk", rewards, mask, 1)


def test_groups_of_two() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.3, 0.3])
    mask = torch.ones(4, 3)
    grpo = compute_advantages("grpo", rewards, mask, 2)[:, 0].tolist()
    half_gap = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert grpo == pytest.approx([half_gap, -half_gap, 0.0, 0.0], abs=1e-6)
    assert compute_advantages("rloo", rewards, mask, 2)[:, 0].tolist() == pytest.approx([1, -1, 0, 0])
    assert compute_advantages("dr_grpo", rewards, mask, 2)[:, 0].tolist() == pytest.approx([0.5, -0.5, 0, 0])
    passk = compute_advantages("grpo_passk", rewards, mask, 2)[:, 0].tolist()
    assert passk == pytest.approx([1 / (math.sqrt(0.5) + 1e-6), 0, 0, 0], abs=1e-6)


def test_in_reward_kl_enters_the_score_like_verl() -> None:
    """verl sums the token rewards (outcome - coef * kl) into each row's score before the group baseline."""
    mask = ragged_mask([3, 2, 3, 1])
    kl = torch.full(mask.shape, 0.5)
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    advantages = compute_advantages("dr_grpo", rewards, mask, 4, kl=kl, kl_coef=0.2)
    scores = [1 - 0.1 * 3, 1 - 0.1 * 2, 0 - 0.1 * 3, 0 - 0.1 * 1]
    mean = sum(scores) / 4
    assert per_row(advantages, mask) == pytest.approx([s - mean for s in scores], abs=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_never_nan_with_masked_rows_equal_groups_and_garbage_padding(estimator: str) -> None:
    gen = torch.Generator().manual_seed(3)
    lengths = [0, 4, 2, 7, 0, 0, 3, 1]  # rows 0, 4 and 5 are fully masked
    mask = ragged_mask(lengths)
    rewards = torch.tensor([1.0, 1, 1, 1, 0.5, 0, 1, 0])  # first group all equal
    kl = torch.where(mask.bool(), torch.randn(mask.shape, generator=gen), torch.tensor(float("inf")))
    options = extra_options(estimator, mask)
    advantages = compute_advantages(estimator, rewards, mask, 4, kl=kl, kl_coef=0.1, **options)
    assert torch.isfinite(advantages).all()
    assert torch.all(advantages[mask == 0] == 0)
    everything_masked = compute_advantages(estimator, rewards, torch.zeros(8, T), 4, **options)
    assert torch.all(everything_masked == 0)
    if estimator in ("grpo", "dr_grpo", "rloo", "grpo_passk"):
        # Without the KL term the all-equal group has nothing to learn, masked row 0 included.
        # (reinforce_pp_baseline's batch whitening shifts its zeros by the batch mean, as in verl.)
        no_kl = compute_advantages(estimator, rewards, mask, 4, **options)
        assert torch.all(no_kl[:4] == 0)


def test_dynamic_sampling_keeps_groups_with_reward_spread() -> None:
    assert dynamic_sampling_keep(REWARDS, 4).tolist() == [True, False, True]
    assert dynamic_sampling_keep(torch.tensor([1.0, 1, 0, 0]), 2).tolist() == [False, False]
    assert dynamic_sampling_keep(torch.tensor([1.0, 0.0]), 1).tolist() == [False, False]
    with pytest.raises(ValueError, match="not divisible by group_size 4"):
        dynamic_sampling_keep(torch.zeros(6), 4)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: compute_advantages("ppo", REWARDS, torch.ones(12, 3), 4),
            "unknown advantage estimator 'ppo'; known: gae, grpo",
        ),
        (
            lambda: compute_advantages("grpo", REWARDS, torch.ones(12, 3), 5),
            "batch of 12 rows is not divisible by group_size 5",
        ),
        (
            lambda: compute_advantages("grpo", REWARDS, torch.ones(10, 3), 4),
            "rewards has 12 rows but mask has 10",
        ),
        (lambda: compute_advantages("grpo", REWARDS.view(3, 4), torch.ones(3, 4), 1), "rewards must be 1-D"),
        (lambda: compute_advantages("grpo", REWARDS, torch.ones(12), 4), r"mask must be \(batch, tokens\)"),
        (
            lambda: compute_advantages("grpo", REWARDS, torch.ones(12, 3), 0),
            "group_size must be a positive int",
        ),
        (
            lambda: compute_advantages("grpo", REWARDS, torch.ones(12, 3), 4, gama=1.0),
            "takes no option 'gama'; it takes: eps, kl, kl_coef",
        ),
        (lambda: compute_advantages("gae", REWARDS, torch.ones(12, 3), 4), "estimator 'gae' needs values="),
        (
            lambda: compute_advantages("gae", REWARDS, torch.ones(12, 3), 4, values=torch.ones(12, 2)),
            "values has shape",
        ),
        (
            lambda: compute_advantages("grpo", torch.tensor([1.0, float("nan")]), torch.ones(2, 3), 2),
            r"rewards\[1\] is nan",
        ),
        (
            lambda: compute_advantages(
                "rloo", REWARDS, torch.ones(12, 3), 4, kl=torch.ones(12, 4), kl_coef=0.1
            ),
            "kl has shape",
        ),
    ],
)
def test_bad_input_gets_a_one_line_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_public_api() -> None:
    assert set(rl.__all__) == {
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
    }
    assert ESTIMATORS == (
        "gae",
        "grpo",
        "dr_grpo",
        "rloo",
        "reinforce_pp",
        "reinforce_pp_baseline",
        "grpo_passk",
    )
