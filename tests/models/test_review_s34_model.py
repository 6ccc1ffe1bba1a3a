"""Session-34 review of the model code: the bugs found, each pinned by the test that first failed, and the
edge cases checked on the way (MoE routing extremes, MTP depth 3, checkpoints, the C kernels' fallback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from codefoundry.models import checkpoint, hf, hf_import, native, small_gemm  # noqa: E402
from codefoundry.models.checkpoint import CheckpointError  # noqa: E402
from codefoundry.models.config import ModelConfig, MoEConfig, config_for_size  # noqa: E402
from codefoundry.models.cpu_ops import NativeCausal  # noqa: E402
from codefoundry.models.moe import MoE  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402

VOCAB = 64
needs_native = pytest.mark.skipif(native.library() is None, reason=f"no C kernels: {native.why_not()}")


def tiny(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=VOCAB, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=16, init_std=0.1,
        **overrides,
    )  # fmt: skip
    return Transformer(cfg).eval()


def _hf_balancing_loss(router_logits: torch.Tensor, n_experts: int, top_k: int) -> torch.Tensor:
    """transformers' load-balancing loss (Mixtral's; Qwen2-MoE's is the same function)."""
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    return mixtral.load_balancing_loss_func((router_logits,), n_experts, top_k)


# ------------------------------------------------------------------------------ native attention kernel


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), is_causal=True, enable_gqa=k.shape[1] != q.shape[1]
    )


@needs_native
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_native_attention_spreads_a_non_finite_key_as_sdpa_does(bad):
    # A NaN score vanished in the kernel's max and exp (max_ps keeps its second operand on NaN, and the
    # exp clamped NaN to exp(-87)), so rows that SDPA makes NaN came out finite: a diverging run hid it.
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 40, 16, generator=g) for h in (2, 1, 1))
    k[0, 0, 5, 3] = bad
    got, want = NativeCausal.apply(q, k, v), _sdpa(q, k, v)
    assert torch.equal(got.isnan(), want.isnan())
    finite = ~want.isnan()
    torch.testing.assert_close(got.double()[finite], want[finite], rtol=0, atol=5e-6)


@needs_native
def test_native_attention_query_gradients_are_nan_on_the_rows_a_nan_key_reaches():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, h, 40, 16, generator=g) for h in (2, 1, 1))
    k[0, 0, 5, 3] = float("nan")
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    grad = torch.randn(1, 2, 40, 16, generator=g)
    (got,) = torch.autograd.grad(NativeCausal.apply(*leaves), leaves[0], grad)
    (want,) = torch.autograd.grad(_sdpa(*exact), exact[0], grad.double())
    assert torch.equal(got.isnan().any(-1), want.isnan().any(-1))  # every query from position 5 on


@needs_native
@pytest.mark.parametrize("B,T,d", [(1, 1, 16), (1, 2048, 16), (2, 129, 48)])
def test_native_attention_matches_sdpa_at_edge_lengths(B, T, d):
    g = torch.Generator().manual_seed(T)
    q = torch.randn(B, 4, T, 2 * d, generator=g)[..., ::2]  # last dim strided: copied by the kernel's call
    k, v = (torch.randn(B, 2, T, d, generator=g) for _ in range(2))
    torch.testing.assert_close(NativeCausal.apply(q, k, v).double(), _sdpa(q, k, v), rtol=0, atol=5e-6)


# --------------------------------------------------------------------------------------------- RoPE


def test_positions_past_max_seq_len_are_a_one_line_error():
    model = tiny()  # max_seq_len 16
    ids = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"positions.*max_seq_len=16"):
        model(ids, positions=torch.tensor([[15, 16]]))


def test_negative_positions_are_refused_not_read_from_the_table_end():
    model = tiny()
    with pytest.raises(ValueError, match=r"positions.*max_seq_len=16"):
        model(torch.zeros(1, 2, dtype=torch.long), positions=torch.tensor([[-1, 0]]))


def test_positions_inside_the_table_give_the_unpadded_logits():
    model = tiny()
    ids = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        plain = model(ids).logits
        positioned = model(
            ids, positions=torch.arange(16).unsqueeze(0), mask=torch.ones(16, 16).tril().bool()
        )
    torch.testing.assert_close(positioned.logits, plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("theta", [0.0, -10000.0, float("nan")])
def test_config_refuses_a_rope_theta_that_makes_nan_tables(theta):
    with pytest.raises(ValueError, match="rope_theta"):
        ModelConfig(vocab_size=VOCAB, rope_theta=theta)


def test_config_json_with_rope_theta_zero_names_the_file(tmp_path):
    checkpoint.save(tiny(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_theta": 0}))
    with pytest.raises(CheckpointError, match=r"config\.json: rope_theta"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize("factor", [float("nan"), float("inf")])
def test_moe_config_refuses_a_capacity_factor_that_fails_in_the_forward(factor):
    with pytest.raises(ValueError, match="moe.capacity_factor"):
        MoEConfig(capacity_factor=factor)


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_with_an_integer_tensor_names_the_file_and_tensor(tmp_path):
    model = tiny()
    checkpoint.save(model, tmp_path)
    sd = checkpoint.state_dict_for_save(model)
    sd["norm.weight"] = torch.ones(32, dtype=torch.int64)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: norm\.weight is int64") as e:
        checkpoint.load(tmp_path)
    assert "\n" not in str(e.value)


def test_tied_config_beside_untied_weights_is_refused(tmp_path):
    # config.json says tied (or leaves tie_embeddings out, which defaults to tied) while the file holds an
    # lm_head of its own: it was dropped without a word and the model computed other logits.
    untied = tiny(tie_embeddings=False)
    checkpoint.save(untied, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["tie_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"lm_head\.weight.*tie"):
        checkpoint.load(tmp_path)


def test_a_stored_copy_of_a_tied_head_still_loads_tied(tmp_path):
    model = tiny()
    checkpoint.save(model, tmp_path)
    sd = {**checkpoint.state_dict_for_save(model), "lm_head.weight": model.embed.weight.detach().clone()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    back = checkpoint.load(tmp_path)
    assert back.lm_head.weight is back.embed.weight


def test_tied_weights_are_stored_once_and_tied_after_a_bf16_load_into_fp32(tmp_path):
    model = tiny().to(torch.bfloat16)
    checkpoint.save(model, tmp_path)
    assert checkpoint.load(tmp_path).embed.weight.dtype == torch.bfloat16  # as stored, without a dtype
    back = checkpoint.load(tmp_path, dtype=torch.float32)
    assert back.lm_head.weight is back.embed.weight and back.embed.weight.dtype == torch.float32
    ids = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        want = checkpoint.load(tmp_path).float()(ids).logits
        torch.testing.assert_close(back(ids).logits, want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- MoE


def _moe(**fields) -> MoE:
    torch.manual_seed(0)
    return MoE(16, MoEConfig(**{"n_experts": 4, "top_k": 2, "expert_dim": 8, **fields}))


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_aux_loss_is_transformers_loss_over_top_k(top_k):
    moe = _moe(top_k=top_k)
    x = torch.randn(24, 16, generator=torch.Generator().manual_seed(1))
    moe(x)
    logits = F.linear(x, moe.router.weight)
    torch.testing.assert_close(moe.aux_loss, _hf_balancing_loss(logits, 4, top_k) / top_k)


@pytest.mark.parametrize("kind, top_k", [("mixtral", 2), ("qwen2_moe", 3)])
def test_import_keeps_the_load_balancing_strength_of_the_hf_model(kind, top_k):
    # transformers' loss is top_k times ours (1.0 balanced here, top_k there): its coefficient applied to
    # ours balanced top_k times more weakly after an import.
    hf_config = {
        "model_type": kind, "vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_experts_per_tok": top_k,
        "router_aux_loss_coef": 0.02, "num_local_experts": 4, "num_experts": 4, "moe_intermediate_size": 8,
        "shared_expert_intermediate_size": 0,
    }  # fmt: skip
    cfg = hf_import.config_from_hf(hf_config, where="hf")
    moe = MoE(16, cfg.moe)
    x = torch.randn(24, 16, generator=torch.Generator().manual_seed(2))
    moe(x)
    theirs = 0.02 * _hf_balancing_loss(F.linear(x, moe.router.weight), 4, top_k)
    torch.testing.assert_close(cfg.moe.aux_loss_coef * moe.aux_loss, theirs)


@pytest.mark.parametrize("moe_cfg", [MoEConfig(4, 2, 8, 0, True), MoEConfig(4, 3, 8, 8, False)])
def test_export_writes_the_coefficient_that_balances_as_strongly(moe_cfg):
    cfg = ModelConfig(vocab_size=VOCAB, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, moe=moe_cfg)
    config = hf.hf_config(cfg, hf.hf_architecture(cfg), dtype="float32", token_ids={})
    moe = MoE(16, moe_cfg)
    x = torch.randn(24, 16, generator=torch.Generator().manual_seed(3))
    moe(x)
    theirs = _hf_balancing_loss(F.linear(x, moe.router.weight), 4, moe_cfg.top_k)
    torch.testing.assert_close(config["router_aux_loss_coef"] * theirs, moe_cfg.aux_loss_coef * moe.aux_loss)


def test_every_expert_chosen_is_the_softmax_weighted_sum_of_all_experts():
    moe = _moe(top_k=4, norm_topk_prob=False)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        probs = F.linear(x, moe.router.weight).softmax(-1)
        want = sum(probs[:, e : e + 1] * moe.experts[e](x) for e in range(4))
        torch.testing.assert_close(moe(x), want, rtol=0, atol=1e-6)
    assert float(moe.aux_loss) == pytest.approx(1.0)  # every token loads every expert equally


def test_a_token_dropped_past_capacity_keeps_only_its_residual_and_shared_expert():
    moe = _moe(top_k=1, capacity_factor=0.25, shared_expert_dim=8).train()  # capacity 1 of 16 tokens
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = moe(x)
        chosen = F.linear(x, moe.router.weight).argmax(-1)
        first = {int(e): int((chosen == e).nonzero()[0]) for e in chosen.unique()}  # each expert's kept token
        dropped = [t for t in range(16) if t not in first.values()]
        torch.testing.assert_close(out[dropped], moe.shared(x[dropped]), rtol=0, atol=1e-6)
    assert float(moe.stats["dropped"]) == pytest.approx(len(dropped) / 16)
    torch.testing.assert_close(moe.stats["load"], torch.bincount(chosen, minlength=4).float() / 16)


def test_a_top_1_router_of_a_named_size_learns_from_the_language_model_loss():
    # Renormalised, the one chosen weight is p / p = 1 whatever the router says, so `pretrain --moe-top-k 1`
    # trained its routers through the balancing loss alone.
    cfg = config_for_size("tiny", VOCAB, max_seq_len=16, moe_experts=4, moe_top_k=1)
    torch.manual_seed(0)
    model = Transformer(cfg)
    ids = torch.randint(0, VOCAB, (2, 8))
    lm_loss = F.cross_entropy(model(ids).logits.flatten(0, 1), ids.flatten())  # no balancing loss in it
    (grad,) = torch.autograd.grad(lm_loss, model.layers[0].mlp.router.weight)
    assert grad.abs().max() > 1e-6  # rounding noise (~1e-11) when the weight is p / p


def test_router_is_fp32_under_bf16_autocast():
    moe = _moe()
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        moe(x)
    assert moe.aux_loss.dtype == torch.float32 and moe.stats["load"].dtype == torch.float32
    plain = _moe()
    plain(x)
    torch.testing.assert_close(moe.stats["load"], plain.stats["load"])  # the same top-k choices


# ---------------------------------------------------------------------------------------------- MTP


@torch.no_grad()
def test_mtp_depth_three_matches_its_definition():
    model = tiny(mtp_depth=3, tie_embeddings=False)
    g = torch.Generator().manual_seed(7)
    ids, targets = torch.randint(0, VOCAB, (2, 9), generator=g), torch.randint(0, VOCAB, (2, 9), generator=g)
    out = model(ids, targets)
    h, T = out.hidden, 9
    for k, module in enumerate(model.mtp, start=1):
        h = module(h[:, : T - k], model.embed(ids[:, k:]), model.rope_cos[: T - k], model.rope_sin[: T - k])
        ce = F.cross_entropy(model.lm_head(module.norm(h)).flatten(0, 1), targets[:, k:].flatten())
        torch.testing.assert_close(out.parts[f"mtp_{k}"], ce, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------ small_gemm, fallback


@pytest.mark.skipif(small_gemm.library() is None, reason="the small-row kernel is unavailable")
@pytest.mark.parametrize(
    "rows,k,n", [(0, 5, 16), (3, 0, 16), (1, 1, 16), (2, 7, 0), (13, 1, 32), (7, 97, 48)]
)
def test_small_gemm_edge_sizes(rows, k, n):
    g = torch.Generator().manual_seed(rows + k + n)
    x, w, bias = (
        torch.randn(rows, k, generator=g),
        torch.randn(n, k, generator=g),
        torch.randn(n, generator=g),
    )
    got = small_gemm.matmul(x, small_gemm.panels(w), bias=bias)
    torch.testing.assert_close(got, torch.addmm(bias, x, w.t()), rtol=1e-5, atol=1e-5)


def test_a_missing_c_compiler_falls_back_to_pytorch(tmp_path):
    code = (
        "import torch\n"
        "from codefoundry.models import native, small_gemm\n"
        "from codefoundry.models.cpu_ops import causal_attention\n"
        "assert native.library() is None and small_gemm.library() is None\n"
        "q = torch.randn(1, 2, 40, 16, requires_grad=True)\n"
        "causal_attention(q, torch.randn(1, 1, 40, 16), torch.randn(1, 1, 40, 16)).sum().backward()\n"
        "print(native.why_not())\n"
    )
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "CODEFOUNDRY_CACHE": str(tmp_path / "cache")}
    env.pop("CODEFOUNDRY_NATIVE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if sys.platform == "linux":
        assert "no C compiler" in done.stdout or "x86-64" in done.stdout or "AVX2" in done.stdout
