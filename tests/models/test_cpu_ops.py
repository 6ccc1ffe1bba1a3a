"""The eager CPU operations (`codefoundry.models.cpu_ops`) against PyTorch's own: chunked causal attention vs
one causal SDPA call, the RMSNorm and rotary functions vs `F.rms_norm` and the rotate-half form."""

import pytest
import torch
import torch.nn.functional as F

from codefoundry.models import cpu_ops, native
from codefoundry.models.config import config_for_size
from codefoundry.models.cpu_ops import (
    ChunkedCausal,
    NativeCausal,
    RMSNormFunction,
    RopeFunction,
    causal_attention,
    chunk_bounds,
    chunked,
    rms_norm,
    rope,
)
from codefoundry.models.transformer import Transformer


def _qkv(B, H, Hkv, T, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, T, d, generator=g, dtype=dtype, requires_grad=True) for h in (H, Hkv, Hkv)]


@pytest.mark.parametrize("T,chunk", [(50, 16), (48, 16), (17, 16), (9, 4), (64, 64)])
def test_chunked_matches_one_causal_call_in_values_and_gradients(T, chunk):
    q, k, v = _qkv(2, 4, 2, T, 8)
    grad = torch.randn(2, 4, T, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    out = ChunkedCausal.apply(q, k, v, chunk)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


def test_chunked_gradients_pass_gradcheck():
    q, k, v = _qkv(1, 2, 1, 11, 4)
    assert torch.autograd.gradcheck(lambda q, k, v: ChunkedCausal.apply(q, k, v, 4), (q, k, v))


def test_chunk_bounds_cover_the_sequence_once():
    assert chunk_bounds(300, 128) == [(0, 128), (128, 256), (256, 300)]
    assert chunk_bounds(128, 128) == [(0, 128)]


def test_dispatch_takes_chunks_only_where_measured_to_help():
    q = torch.zeros(1, 2, 512, 8)
    assert chunked(q)
    assert not chunked(torch.zeros(1, 2, cpu_ops.MIN_TOKENS - 1, 8))
    assert not chunked(torch.zeros(1, 2, cpu_ops.MAX_TOKENS + 1, 8))
    assert not chunked(q.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert chunked(q)  # autocast's attention inputs are fp32 (Attention casts them back)


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(ids[:, :-1], ids[:, 1:]).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_causal_attention_on_both_paths_gives_the_model_the_same_loss_and_gradients(monkeypatch):
    torch.manual_seed(0)
    model = Transformer(config_for_size("tiny", vocab_size=97, max_seq_len=512)).double()
    ids = torch.randint(0, 97, (2, 301))
    assert chunked(torch.zeros(1, 1, 300, 8, dtype=torch.float64))
    loss, grads = _loss_and_grads(model, ids)
    monkeypatch.setattr(cpu_ops, "MAX_TOKENS", 0)  # every call through one SDPA call
    assert not chunked(torch.zeros(1, 1, 300, 8, dtype=torch.float64))
    ref_loss, ref_grads = _loss_and_grads(model, ids)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_under_cpu_autocast_the_products_run_in_bf16_and_attention_in_fp32(monkeypatch):
    """bf16 autocast on a CPU (what `--dtype auto` picks where the CPU has bf16 products): the projections
    come out in bf16, attention gets them back in fp32 and takes our fp32 path (the C kernel or the
    chunks), and the loss stays within bf16 rounding of the fp32 model's."""
    torch.manual_seed(0)
    model = Transformer(config_for_size("tiny", vocab_size=97, max_seq_len=512))
    ids = torch.randint(0, 97, (2, 301))
    seen = []
    original = cpu_ops.causal_attention
    monkeypatch.setattr(
        "codefoundry.models.transformer.causal_attention",
        lambda q, k, v: seen.append((q.dtype, k.dtype, v.dtype)) or original(q, k, v),
    )
    fp32 = model(ids[:, :-1], ids[:, 1:]).loss
    assert set(seen) == {(torch.float32,) * 3}
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids[:, :-1], ids[:, 1:])
        assert model.layers[0].attn.qkv(torch.zeros(1, model.cfg.dim)).dtype == torch.bfloat16
    assert set(seen) == {(torch.float32,) * 3} and len(seen) == model.cfg.n_layers
    assert abs(out.loss.item() - fp32.item()) < 0.02 * fp32.item()
    out.loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.skipif(native.library() is None, reason="no C kernels here")
def test_the_model_trains_to_the_same_loss_and_gradients_through_the_c_kernel(monkeypatch):
    torch.manual_seed(0)
    model = Transformer(config_for_size("tiny", vocab_size=97, max_seq_len=512))
    ids = torch.randint(0, 97, (2, 301))
    calls = []
    original = NativeCausal.apply
    monkeypatch.setattr(NativeCausal, "apply", lambda *a: calls.append(1) or original(*a))
    loss, grads = _loss_and_grads(model, ids)
    assert len(calls) == model.cfg.n_layers  # fp32, head size 16: every layer through attention.c
    monkeypatch.setattr(cpu_ops, "NATIVE_MAX_TOKENS", 0)  # PyTorch's path (chunked at 300 tokens)
    ref_loss, ref_grads = _loss_and_grads(model, ids)
    assert len(calls) == model.cfg.n_layers
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


def test_causal_attention_without_gradients_matches_sdpa():
    q, k, v = (t.detach().float() for t in _qkv(2, 4, 2, 300, 16))
    with torch.no_grad():
        got = causal_attention(q, k, v)
        want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 7, 16), (5, 16), (2, 1, 3, 8)])
def test_rms_norm_function_matches_torch_in_values_and_gradients(shape):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(shape[-1], dtype=torch.float64, generator=g, requires_grad=True)
    grad = torch.randn(*shape, dtype=torch.float64, generator=g)
    want = F.rms_norm(x, (shape[-1],), w, 1e-6)
    got = RMSNormFunction.apply(x, w, 1e-6)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(got, (x, w), grad), torch.autograd.grad(want, (x, w), grad), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    assert torch.autograd.gradcheck(lambda x, w: RMSNormFunction.apply(x, w, 1e-6), (x, w))


def test_rms_norm_function_with_a_frozen_weight_or_input():
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64)
    (gx,) = torch.autograd.grad(RMSNormFunction.apply(x, w, 1e-5).sum(), (x,))
    torch.testing.assert_close(gx, torch.autograd.grad(F.rms_norm(x, (8,), w, 1e-5).sum(), (x,))[0])
    w.requires_grad_(True)
    (gw,) = torch.autograd.grad(RMSNormFunction.apply(x.detach(), w, 1e-5).sum(), (w,))
    torch.testing.assert_close(gw, torch.autograd.grad(F.rms_norm(x.detach(), (8,), w, 1e-5).sum(), (w,))[0])


def test_rms_norm_dispatch_keeps_torch_for_small_or_other_inputs(monkeypatch):
    calls = []
    monkeypatch.setattr(
        RMSNormFunction,
        "apply",
        lambda *a: calls.append(a) or F.rms_norm(a[0], (a[0].shape[-1],), a[1], a[2]),
    )
    w = torch.ones(256)
    rms_norm(torch.randn(2, 4, 256), w, 1e-5)  # decoding-sized
    rms_norm(torch.randn(8, 512, 256).bfloat16(), w.bfloat16(), 1e-5)
    assert calls == []
    rms_norm(torch.randn(8, 512, 256), w, 1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rms_norm(torch.randn(8, 512, 256), w, 1e-5)  # fp32 under autocast: the residual stream
    assert len(calls) == 2


def _plain_rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


@pytest.mark.parametrize("table_shape", ["shared", "per_row"])
def test_rope_function_matches_the_rotate_half_form(table_shape):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(2, 6, 3, 8, dtype=torch.float64, generator=g, requires_grad=True)
    x = base.transpose(1, 2)  # (B, H, T, d) as a view of (B, T, H, d), as the model makes it
    angles = torch.randn(6, 4, dtype=torch.float64, generator=g).repeat(1, 2)
    cos, sin = angles.cos(), angles.sin()
    if table_shape == "per_row":
        cos, sin = cos.expand(2, 1, 6, 8), sin.expand(2, 1, 6, 8)
    grad = torch.randn(2, 3, 6, 8, dtype=torch.float64, generator=g)
    got, want = RopeFunction.apply(x, cos, sin), _plain_rope(x, cos, sin)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(got, base, grad)[0], torch.autograd.grad(want, base, grad)[0], rtol=0, atol=1e-12
    )
    assert torch.autograd.gradcheck(lambda b: RopeFunction.apply(b.transpose(1, 2), cos, sin), (base,))


def test_rope_dispatch_keeps_the_plain_form_for_small_or_other_inputs(monkeypatch):
    calls = []
    monkeypatch.setattr(RopeFunction, "apply", lambda *a: calls.append(a) or _plain_rope(*a))
    cos = sin = torch.ones(512, 32)
    x = torch.randn(1, 8, 512, 32)  # 2^17 elements: decoding-sized
    torch.testing.assert_close(rope(x, cos, sin), _plain_rope(x, cos, sin), rtol=0, atol=0)
    rope(torch.randn(8, 8, 512, 32).bfloat16(), cos.bfloat16(), sin.bfloat16())
    rope(torch.randn(8, 8, 512, 32), cos.clone().requires_grad_(), sin)
    assert calls == []
    rope(torch.randn(8, 8, 512, 32), cos, sin)
    assert len(calls) == 1
