"""Policy/value losses, aggregation modes and KL estimators against plain-loop references, values and
gradients w.r.t. logp (a wrong length normaliser hides in the value at ratio 1 but shows in the gradient)."""

from __future__ import annotations

import math

import pytest
import torch

from codefoundry.train.rl import (
    AGG_MODES,
    aggregate_loss,
    entropy_from_logits,
    kl_penalty,
    logprobs_from_logits,
    policy_loss,
    value_loss,
)

LENGTHS = [5, 2, 7, 0, 3, 6]  # row 3 is fully masked
B, T = len(LENGTHS), 7


def make_batch(seed: int, *, spread: float = 0.3):
    """float64 logp (a leaf), logp_old `spread` away in log space, advantages and a ragged mask."""
    gen = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    logp_old = logp.detach() + spread * torch.randn(B, T, generator=gen, dtype=torch.float64)
    advantages = torch.randn(B, 1, generator=gen, dtype=torch.float64).expand(B, T).clone()
    mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).double()
    return logp, logp_old, advantages, mask


def reference_loss(
    logp, logp_old, advantages, mask, *, agg, clip_low=0.2, clip_high=0.2, dual=None, length=T
):
    """The clipped surrogate and the four aggregations written out token by token."""
    row_sums, row_counts = [], []
    for i in range(B):
        total, count = torch.zeros((), dtype=torch.float64), 0
        for t in range(T):
            if mask[i, t] == 0:
                continue
            a = advantages[i, t]
            ratio = torch.exp(logp[i, t] - logp_old[i, t])
            token = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip_low, 1 + clip_high))
            if dual is not None and a < 0:
                token = torch.minimum(token, -a * dual)
            total = total + token
            count += 1
        row_sums.append(total)
        row_counts.append(count)
    nonempty = [i for i in range(B) if row_counts[i] > 0]
    if agg == "token-mean":
        return sum(row_sums) / sum(row_counts)
    if agg == "seq-mean-token-mean":
        return sum(row_sums[i] / row_counts[i] for i in nonempty) / len(nonempty)
    if agg == "seq-mean-token-sum":
        return sum(row_sums) / len(nonempty)
    assert agg == "seq-mean-token-sum-norm"
    return sum(row_sums) / (len(nonempty) * length)


def grad_of(loss: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad


@pytest.mark.parametrize("agg", AGG_MODES)
def test_on_policy_loss_and_gradient_match_the_reference(agg: str) -> None:
    logp, _, advantages, mask = make_batch(0)
    loss, stats = policy_loss(logp, logp.detach(), advantages, mask, agg=agg)
    expected = reference_loss(logp, logp.detach(), advantages, mask, agg=agg)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert torch.allclose(grad_of(loss, logp), grad_of(expected, logp), atol=1e-12)
    assert stats["ratio_mean"] == pytest.approx(1.0) and stats["approx_kl"] == pytest.approx(0.0)


def test_the_gradients_expose_the_length_normaliser() -> None:
    """At ratio 1 the gradient on a token is -A / (normaliser): each mode's normaliser, read back."""
    logp, _, advantages, mask = make_batch(1)
    n_tokens, n_rows = sum(LENGTHS), sum(1 for n in LENGTHS if n)
    expected_scale = {
        "token-mean": lambda i: 1 / n_tokens,
        "seq-mean-token-mean": lambda i: 1 / (n_rows * max(LENGTHS[i], 1)),
        "seq-mean-token-sum": lambda i: 1 / n_rows,
        "seq-mean-token-sum-norm": lambda i: 1 / (n_rows * 16),
    }
    for agg, scale in expected_scale.items():
        loss, _ = policy_loss(logp, logp.detach(), advantages, mask, agg=agg, max_tokens=16)
        grad = grad_of(loss, logp)
        for i, n in enumerate(LENGTHS):
            assert torch.allclose(grad[i, :n], -advantages[i, :n] * scale(i), atol=1e-12), agg
            assert torch.all(grad[i, n:] == 0)


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("dual", [None, 3.0])
def test_off_policy_loss_and_gradient_match_the_reference(agg: str, dual: float | None) -> None:
    logp, logp_old, advantages, mask = make_batch(2, spread=1.5)  # wide: both clips and dual clip fire
    kwargs = {"clip_low": 0.2, "clip_high": 0.28}
    loss, stats = policy_loss(logp, logp_old, advantages, mask, agg=agg, dual_clip=dual, **kwargs)
    expected = reference_loss(logp, logp_old, advantages, mask, agg=agg, dual=dual, **kwargs)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert torch.allclose(grad_of(loss, logp), grad_of(expected, logp), atol=1e-12)
    assert stats["clip_frac_low"] > 0 and stats["clip_frac_high"] > 0
    assert (stats["dual_clip_frac"] > 0) == (dual is not None)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_micro_batches_with_global_counts_sum_to_the_one_batch_gradient(agg: str) -> None:
    logp, logp_old, advantages, mask = make_batch(3)
    full, _ = policy_loss(logp, logp_old, advantages, mask, agg=agg)
    full_grad = grad_of(full, logp)
    counts = {"global_tokens": int(mask.sum()), "global_seqs": int((mask.sum(-1) > 0).sum())}
    summed = torch.zeros((), dtype=torch.float64)
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):  # uneven, one holds the empty row
        part, _ = policy_loss(logp[rows], logp_old[rows], advantages[rows], mask[rows], agg=agg, **counts)
        summed = summed + part
    assert summed.item() == pytest.approx(full.item(), abs=1e-12)
    assert torch.allclose(grad_of(summed, logp), full_grad, atol=1e-12)
    # Without the global counts, averaging micro-batch losses is not the one-batch loss.
    naive = (
        sum(
            policy_loss(logp[r], logp_old[r], advantages[r], mask[r], agg=agg)[0]
            for r in (slice(0, 3), slice(3, 6))
        )
        / 2
    )
    assert naive.item() != pytest.approx(full.item(), abs=1e-9)


def one_token(ratio: float, advantage: float, **kwargs):
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    loss, stats = policy_loss(
        logp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[advantage]]), torch.ones(1, 1), **kwargs
    )
    return loss.item(), grad_of(loss, logp).item(), stats


def test_clipping_stops_the_gradient_only_where_ppo_says() -> None:
    # Positive advantage: past 1 + clip_high the token is clipped (no gradient); below 1 - clip_low it is not.
    loss, grad, stats = one_token(1.3, 1.0)
    assert (loss, grad, stats["clip_frac_high"]) == (pytest.approx(-1.2), 0.0, 1.0)
    assert one_token(0.5, 1.0)[1] == pytest.approx(-0.5)  # d(-A * rho)/dlogp = -A * rho
    # DAPO clip-higher: 1.25 is inside [0.8, 1.28] but outside [0.8, 1.2].
    assert one_token(1.25, 1.0, clip_high=0.28)[1] == pytest.approx(-1.25)
    assert one_token(1.25, 1.0, clip_high=0.2)[1] == 0.0
    # Negative advantage: below 1 - clip_low clipped, above 1 + clip_high not (without dual clip).
    loss, grad, stats = one_token(0.5, -1.0)
    assert (loss, grad, stats["clip_frac_low"]) == (pytest.approx(0.8), 0.0, 1.0)
    loss, grad, _ = one_token(5.0, -1.0)
    assert (loss, grad) == (pytest.approx(5.0), pytest.approx(5.0))


def test_dual_clip_caps_negative_advantage_tokens() -> None:
    loss, grad, stats = one_token(5.0, -2.0, dual_clip=3.0)
    assert (loss, grad, stats["dual_clip_frac"]) == (pytest.approx(6.0), 0.0, 1.0)  # -A * c, no gradient
    loss, grad, _ = one_token(2.0, -2.0, dual_clip=3.0)  # below c: the ordinary unclipped branch
    assert (loss, grad) == (pytest.approx(4.0), pytest.approx(4.0))
    loss, grad, _ = one_token(5.0, 2.0, dual_clip=3.0)  # positive advantages are untouched
    assert (loss, grad) == (pytest.approx(-2.4), 0.0)


def test_masked_garbage_and_empty_batches_never_give_nan() -> None:
    logp, logp_old, advantages, mask = make_batch(4)
    old_garbage = torch.where(mask.bool(), logp_old, torch.tensor(float("nan"), dtype=torch.float64))
    for agg in AGG_MODES:
        garbage = torch.where(mask.bool(), logp, torch.tensor(float("-inf"), dtype=torch.float64))
        loss, stats = policy_loss(garbage, old_garbage, advantages, mask, agg=agg)
        clean, _ = policy_loss(logp, logp_old, advantages, mask, agg=agg)
        assert loss.item() == pytest.approx(clean.item(), abs=1e-12)
        grad = grad_of(loss, logp)
        assert torch.isfinite(grad).all() and torch.all(grad[mask == 0] == 0)
        assert all(math.isfinite(v) for v in stats.values())
        empty, empty_stats = policy_loss(logp, logp_old, advantages, torch.zeros(B, T), agg=agg)
        assert empty.item() == 0.0 and torch.all(grad_of(empty, logp) == 0)
        assert all(v == 0.0 for v in empty_stats.values())
        zero_global, _ = policy_loss(
            logp, logp_old, advantages, torch.zeros(B, T), agg=agg, global_tokens=0, global_seqs=0
        )
        assert zero_global.item() == 0.0


def test_value_loss_matches_the_clipped_reference() -> None:
    gen = torch.Generator().manual_seed(5)
    mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).double()
    values = torch.randn(B, T, generator=gen, dtype=torch.float64).requires_grad_()
    values_old = values.detach() + torch.randn(B, T, generator=gen, dtype=torch.float64)
    returns = torch.randn(B, T, generator=gen, dtype=torch.float64)
    loss, stats = value_loss(values, values_old, returns, mask, clip=0.5)
    terms, clipped = [], 0
    for i in range(B):
        for t in range(LENGTHS[i]):
            v, old, r = values[i, t], values_old[i, t], returns[i, t]
            v_clip = old + (v - old).clamp(-0.5, 0.5)
            terms.append(torch.maximum((v - r) ** 2, (v_clip - r) ** 2))
            clipped += int(((v_clip - r) ** 2 > (v - r) ** 2).item())
    expected = 0.5 * sum(terms) / len(terms)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert torch.allclose(grad_of(loss, values), grad_of(expected, values), atol=1e-12)
    assert stats["vf_clip_frac"] == pytest.approx(clipped / len(terms))
    assert 0 < clipped < len(terms)


def test_kl_estimators_match_their_formulas() -> None:
    gen = torch.Generator().manual_seed(6)
    logp = -torch.rand(50, generator=gen, dtype=torch.float64) * 2  # inside the k3 clamp
    logp_ref = -torch.rand(50, generator=gen, dtype=torch.float64) * 2
    x = logp - logp_ref
    assert torch.equal(kl_penalty(logp, logp_ref, "k1"), x)
    assert torch.equal(kl_penalty(logp, logp_ref, "kl"), x)
    assert torch.allclose(kl_penalty(logp, logp_ref, "k2"), 0.5 * x**2)
    assert torch.allclose(kl_penalty(logp, logp_ref, "mse"), 0.5 * x**2)
    k3 = torch.exp(logp_ref - logp) - (logp_ref - logp) - 1
    assert torch.allclose(kl_penalty(logp, logp_ref, "k3"), k3)
    assert torch.allclose(kl_penalty(logp, logp_ref, "low_var_kl"), k3)
    assert torch.all(kl_penalty(logp, logp_ref, "k3") >= 0)
    assert torch.equal(kl_penalty(logp, logp_ref, "abs"), x.abs())
    # verl's clamps: the log-ratio to [-20, 20] before exp, the k3 value to [-10, 10].
    far = kl_penalty(torch.tensor([-30.0, 30.0]), torch.tensor([0.0, 0.0]), "k3")
    assert far.tolist() == [10.0, 10.0]
    # k2's gradient is the log-ratio; k3's is 1 - pi_ref / pi.
    leaf = logp.clone().requires_grad_()
    assert torch.allclose(grad_of(kl_penalty(leaf, logp_ref, "k2").sum(), leaf), x)
    assert torch.allclose(
        grad_of(kl_penalty(leaf, logp_ref, "k3").sum(), leaf), 1 - torch.exp(logp_ref - logp)
    )
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'; known: k1, k2, k3"):
        kl_penalty(logp, logp_ref, "k4")


def test_logprobs_and_entropy_are_temperature_aware() -> None:
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 5, 11, generator=gen) * 4
    ids = torch.randint(0, 11, (3, 5), generator=gen)
    for temperature in (1.0, 0.7, 1.6):
        expected = torch.log_softmax(logits / temperature, dim=-1).gather(-1, ids[..., None])[..., 0]
        assert torch.allclose(logprobs_from_logits(logits, ids, temperature), expected, atol=1e-6)
        probs = torch.softmax(logits / temperature, dim=-1)
        entropy = -(probs * torch.log(probs)).sum(-1)
        assert torch.allclose(entropy_from_logits(logits, temperature=temperature), entropy, atol=1e-5)
    assert not torch.allclose(logprobs_from_logits(logits, ids, 0.7), logprobs_from_logits(logits, ids, 1.0))
    half = logprobs_from_logits(logits.bfloat16(), ids, 1.0)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        logprobs_from_logits(logits, ids, 0.0)
    with pytest.raises(ValueError, match="logits has shape"):
        logprobs_from_logits(logits, ids[:, :4], 1.0)


def test_response_forward_logprobs_and_entropy_gradients_match_the_formulas() -> None:
    # response_forward takes both from one log-softmax; its gradients must be those of the textbook
    # formulas (an entropy bonus trains through them), computed here in float64.
    from codefoundry.models.config import config_for_size
    from codefoundry.models.transformer import Transformer
    from codefoundry.train.rl.rollout import collate, response_forward

    torch.manual_seed(0)
    model = Transformer(config_for_size("tiny", 64, max_seq_len=32))
    batch = collate([[1, 2, 3], [4, 5]], [[6, 7, 8, 9], [10]], device="cpu")
    for temperature in (1.0, 0.7):
        logp, ent, _ = response_forward(model, batch, temperature=temperature, entropy_grad=True)
        (logp * batch.mask).sum().backward(retain_graph=True)
        got_logp = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        (ent * batch.mask).sum().backward()
        got_ent = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()

        hidden = model.embed(batch.ids)
        cos, sin = model.rope(None, 0, batch.ids.shape[1])
        for i, layer in enumerate(model.layers):
            hidden = layer(hidden, cos, sin, None, i, None)
        picked = hidden.gather(1, batch.index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        z = model.lm_head(model.norm(picked)).double() / temperature
        want_logp = torch.log_softmax(z, -1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
        probs = torch.softmax(z, -1)
        want_ent = torch.logsumexp(z, -1) - (probs * z).sum(-1)
        assert torch.allclose(logp.double(), want_logp, atol=1e-5)
        assert torch.allclose(ent.double(), want_ent, atol=1e-5)
        for got, want in ((got_logp, want_logp), (got_ent, want_ent)):
            grads = torch.autograd.grad(
                (want * batch.mask).sum(), list(model.parameters()), retain_graph=True
            )
            for g, w in zip(got, grads, strict=True):
                assert torch.allclose(g, w, atol=1e-5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: policy_loss(m, m, m, m, agg="mean"), "unknown loss aggregation 'mean'; known: token-mean"),
        (lambda m: policy_loss(m, m[:, :3], m, m), "logp_old has shape"),
        (lambda m: policy_loss(m, m, m, m, clip_low=1.0), "need 0 <= clip_low < 1"),
        (lambda m: policy_loss(m, m, m, m, dual_clip=1.0), "dual_clip must be > 1"),
        (lambda m: value_loss(m, m, m, m, clip=0.0), "value clip must be > 0"),
        (
            lambda m: aggregate_loss(m, m, agg="seq-mean-token-sum-norm", max_tokens=0),
            "max_tokens must be >= 1",
        ),
    ],
)
def test_bad_arguments_get_a_one_line_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        call(torch.ones(2, 4))
    assert "\n" not in str(info.value)
