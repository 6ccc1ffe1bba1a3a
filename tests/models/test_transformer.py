"""The decoder against plain reference computations: cache vs full forward, MoE dispatch vs a per-token
loop, GQA vs repeated heads, MTP loss vs its definition, and config handling."""

from __future__ import annotations

import dataclasses
import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from codefoundry.models.config import SIZES, ModelConfig, MoEConfig, config_for_size  # noqa: E402
from codefoundry.models.moe import MoE  # noqa: E402
from codefoundry.models.transformer import KVCache, Transformer, apply_rope  # noqa: E402

VOCAB = 300


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(config_for_size("tiny", VOCAB, max_seq_len=64, **kw)).eval()


@pytest.mark.parametrize("kw", [{}, {"moe_experts": 4}, {"mtp_depth": 2}, {"tie_embeddings": False}])
def test_cached_decoding_matches_the_full_forward(kw):
    model = _model(**kw)
    ids = torch.randint(0, VOCAB, (3, 24))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache.empty(model.cfg, 3, 32, layers=model.cfg.n_layers, device="cpu", dtype=torch.float32)
        pieces = [model(ids[:, :10], cache=cache).logits]
        pieces.append(model(ids[:, 10:13], cache=cache).logits)  # a multi-token step after a prefix
        pieces += [model(ids[:, t : t + 1], cache=cache).logits for t in range(13, 24)]
    assert cache.length == 24
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_padded_rows_with_positions_and_mask_match_unpadded():
    model = _model()
    short = torch.randint(0, VOCAB, (1, 7))
    pad = 5
    ids = torch.cat([torch.zeros(1, pad, dtype=torch.long), short], dim=1)
    positions = (torch.arange(pad + 7) - pad).clamp_min(0).unsqueeze(0)
    keys = torch.arange(pad + 7) >= pad
    mask = (torch.ones(pad + 7, pad + 7, dtype=torch.bool).tril() & keys).view(1, 1, pad + 7, pad + 7)
    mask |= torch.eye(pad + 7, dtype=torch.bool).view(
        1, 1, pad + 7, pad + 7
    )  # padding rows attend to themselves
    with torch.no_grad():
        padded = model(ids, positions=positions, mask=mask).logits[:, pad:]
        alone = model(short).logits
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_gqa_equals_attention_with_repeated_kv_heads():
    cfg = config_for_size("tiny", VOCAB)
    assert cfg.n_heads != cfg.n_kv_heads
    q = torch.randn(2, cfg.n_heads, 5, cfg.head_dim)
    k, v = torch.randn(2, 2, cfg.n_kv_heads, 5, cfg.head_dim).unbind(0)
    got = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    rep = cfg.n_heads // cfg.n_kv_heads
    want = F.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=True
    )
    torch.testing.assert_close(got, want)


def test_rope_preserves_norms_and_depends_only_on_relative_position():
    model = _model()
    q, k = torch.randn(2, 1, 1, 1, model.cfg.head_dim).unbind(0)
    cos, sin = model.rope_cos, model.rope_sin

    def dot(i: int, j: int) -> float:
        qi = apply_rope(q, cos[i : i + 1], sin[i : i + 1])
        kj = apply_rope(k, cos[j : j + 1], sin[j : j + 1])
        return float((qi * kj).sum())

    assert dot(3, 1) == pytest.approx(dot(10, 8), abs=1e-5)
    rotated = apply_rope(q, cos[7:8], sin[7:8])
    assert float(rotated.norm()) == pytest.approx(float(q.norm()), rel=1e-5)


def _moe_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Each token through its top-k experts one at a time, the obvious way."""
    out = torch.zeros_like(x)
    probs = (x.float() @ moe.router.weight.float().T).softmax(-1)
    for t in range(x.shape[0]):
        w, e = probs[t].topk(moe.cfg.top_k)
        if moe.cfg.norm_topk_prob:
            w = w / w.sum()
        for wi, ei in zip(w, e, strict=True):
            out[t] += wi * moe.experts[int(ei)](x[t : t + 1])[0]
        if moe.shared is not None:
            out[t] += moe.shared(x[t : t + 1])[0]
    return out


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("shared", [0, 16])
def test_moe_dispatch_matches_a_per_token_loop(norm, shared):
    torch.manual_seed(1)
    moe = MoE(
        32, MoEConfig(n_experts=5, top_k=2, expert_dim=24, shared_expert_dim=shared, norm_topk_prob=norm)
    )
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        got = moe(x)
        want = _moe_reference(moe, x.reshape(-1, 32)).reshape(2, 9, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert float(moe.stats["load"].sum()) == pytest.approx(1.0)
    assert float(moe.stats["dropped"]) == 0.0


def test_moe_capacity_drops_late_tokens_and_reports_them():
    torch.manual_seed(2)
    moe = MoE(16, MoEConfig(n_experts=4, top_k=1, expert_dim=8, capacity_factor=1.0))
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 50.0  # every token with x[0] > 0 goes to expert 0
        x = torch.randn(64, 16)
        x[:, 0] = 1.0
        y = moe(x)
    capacity = int(1.0 * 64 * 1 / 4)  # 16 assignments per expert
    assert (y[:capacity].abs().sum(-1) > 0).all()  # the first 16 tokens were served
    assert (y[capacity:].abs().sum(-1) == 0).all()  # the rest dropped (their residual carries them)
    assert float(moe.stats["dropped"]) == pytest.approx(1 - capacity / 64)
    moe.eval()  # generation and evaluation serve every token: a row's output is its own
    with torch.no_grad():
        y = moe(x)
    assert (y.abs().sum(-1) > 0).all() and float(moe.stats["dropped"]) == 0.0


def test_an_moe_with_capacity_generates_each_row_as_it_would_alone():
    from codefoundry.models.generate import generate

    torch.manual_seed(0)
    cfg = config_for_size("tiny", 64, max_seq_len=64, moe_experts=4, init_std=0.3)
    model = Transformer(
        dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, capacity_factor=1.0))
    ).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.mlp.router.weight.mul_(50)  # a sharp router overflows the experts of a padded batch
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 64, (n,), generator=g).tolist() for n in (3, 9, 5, 12)]
    alone = [generate(model, [p], max_new_tokens=16)[0] for p in prompts]
    assert generate(model, prompts, max_new_tokens=16) == alone


def test_aux_loss_is_one_for_a_uniform_router_and_larger_when_skewed():
    moe = MoE(8, MoEConfig(n_experts=4, top_k=2, expert_dim=8))
    x = torch.randn(40, 8)
    with torch.no_grad():
        moe.router.weight.zero_()  # uniform probabilities; ties broken by index -> all load on experts 0, 1
        moe(x)
    # P_e = 1/4 for all e, f = (1/2, 1/2, 0, 0): E * sum f_e P_e = 4 * (1/4) = 1 regardless of f
    assert float(moe.aux_loss) == pytest.approx(1.0)
    with torch.no_grad():
        x[:, 0] = 1.0
        moe.router.weight[0, 0] = 5.0  # expert 0 takes most probability mass and half the assignments
        moe(x)
    assert float(moe.aux_loss) > 1.8


def test_mtp_loss_follows_its_definition():
    model = _model(mtp_depth=2)
    ids = torch.randint(0, VOCAB, (2, 12))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    torch.set_grad_enabled(False)
    try:
        _check_mtp(model, ids, inputs, targets)
    finally:
        torch.set_grad_enabled(True)


def _check_mtp(model, ids, inputs, targets):
    out = model(inputs, targets)
    T = inputs.shape[1]
    h = out.hidden
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    for k in (1, 2):
        # depth k: hidden at i (depth k-1) with embedding of token i+k predicts token i+k+1
        h = model.mtp[k - 1](h[:, : T - k], model.embed(ids[:, k:T]), cos[: T - k], sin[: T - k])
        logits = model.lm_head(model.mtp[k - 1].norm(h))
        ce = F.cross_entropy(logits.flatten(0, 1), ids[:, k + 1 : T + 1].flatten())
        assert float(out.parts[f"mtp_{k}"]) == pytest.approx(float(ce), rel=1e-5)
    mtp = (out.parts["mtp_1"] + out.parts["mtp_2"]) / 2
    assert float(out.loss) == pytest.approx(float(out.parts["ntp"] + model.cfg.mtp_weight * mtp), rel=1e-5)


def test_training_step_reduces_loss_and_moe_aux_is_in_the_loss():
    model = _model(moe_experts=4)
    model.train()
    ids = torch.randint(0, 40, (4, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        out = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else float(out.parts["ntp"])
    assert float(out.parts["ntp"]) < first - 1.0
    assert set(out.parts) == {"ntp", "aux"}
    assert model.layers[0].mlp.router.weight.grad is not None  # the aux loss reaches the router
    stats = model.router_stats()
    assert stats["expert_load_max"] >= 1.0 >= stats["expert_load_min"]


def test_ignored_targets_do_not_count():
    model = _model()
    ids = torch.randint(0, VOCAB, (1, 10))
    targets = ids.clone()
    targets[:, 5:] = -100
    with torch.no_grad():
        a = model(ids, targets).loss
        b = F.cross_entropy(model(ids).logits[0, :5], ids[0, :5])
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_sizes_and_config_round_trip(tmp_path):
    counts = {}
    for name in ("tiny", "10m", "100m"):
        with torch.device("meta"):
            counts[name] = Transformer(config_for_size(name, 8192 if name != "100m" else 32768)).num_params()
    assert counts["tiny"] < 1e6 and 8e6 < counts["10m"] < 12e6 and 90e6 < counts["100m"] < 120e6
    assert set(SIZES) >= {"tiny", "10m", "100m", "1b"}
    cfg = config_for_size("tiny", VOCAB, moe_experts=4, mtp_depth=1)
    cfg.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == cfg
    (tmp_path / "bad.json").write_text('{"vocab_size": 10, "dimm": 3}')
    with pytest.raises(ValueError, match="bad.json: unknown model config fields: dimm"):
        ModelConfig.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not a multiple"):
        ModelConfig(vocab_size=10, dim=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown model size"):
        config_for_size("huge", 10)
    assert math.isclose(config_for_size("tiny", VOCAB).ffn_dim % 64, 0)
