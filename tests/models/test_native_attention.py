"""Causal attention through attention.c (`cpu_ops.NativeCausal`): values and gradients against PyTorch's SDPA
in fp64, over odd lengths, grouped and plain heads, head sizes 16-64 and the strided views the model
passes; and where `causal_attention` takes it (the model's loss and gradients on it: test_cpu_ops.py)."""

import pytest
import torch
import torch.nn.functional as F

from codefoundry.models import cpu_ops, native
from codefoundry.models.cpu_ops import NativeCausal, causal_attention, native_attention

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no C kernels here: {native.why_not()}")


def _views(B, H, Hkv, T, d, seed=0):
    """q, k, v as the model makes them: (B, heads, T, d) views into one (B, T, heads, d) projection."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, H + 2 * Hkv, d, generator=g)
    return (
        qkv[:, :, :H].transpose(1, 2),
        qkv[:, :, H : H + Hkv].transpose(1, 2),
        qkv[:, :, H + Hkv :].transpose(1, 2),
    )


@pytest.mark.parametrize("B,H,Hkv,T,d", [(2, 4, 2, 100, 32), (1, 2, 2, 37, 16), (2, 4, 1, 64, 64),
                                         (1, 3, 1, 200, 16), (3, 2, 1, 1, 32), (1, 2, 1, 130, 48)])  # fmt: skip
def test_values_and_gradients_match_sdpa_in_fp64(B, H, Hkv, T, d):
    q, k, v = _views(B, H, Hkv, T, d)
    grad = torch.randn(B, H, T, d, generator=torch.Generator().manual_seed(1))
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    want = F.scaled_dot_product_attention(*exact, is_causal=True, enable_gqa=Hkv != H)
    want_grads = torch.autograd.grad(want, exact, grad.double())
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    got = NativeCausal.apply(*(t.transpose(1, 2).transpose(1, 2) for t in leaves))
    got_grads = torch.autograd.grad(got, leaves, grad.transpose(1, 2).contiguous().transpose(1, 2))
    assert got.dtype == torch.float32 and got.shape == (B, H, T, d)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=5e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=0, atol=2e-5)


def test_contiguous_inputs_and_outputs_without_gradients():
    q, k, v = (t.contiguous() for t in _views(2, 4, 2, 70, 16))
    with torch.no_grad():
        got = causal_attention(q, k, v)
        want = F.scaled_dot_product_attention(
            q.double(), k.double(), v.double(), is_causal=True, enable_gqa=True
        )
    torch.testing.assert_close(got.double(), want, rtol=0, atol=5e-6)
    assert got.transpose(1, 2).is_contiguous()  # the caller's reshape to (B, T, H * d) is a view


def test_dispatch_takes_the_kernel_only_where_it_runs(monkeypatch):
    q, k, _ = _views(1, 4, 2, 64, 16)
    assert native_attention(q, k)
    assert not native_attention(q.double(), k.double())  # fp64: PyTorch's kernels
    assert not native_attention(q[..., :8], k[..., :8])  # head size not in whole panels of 16
    long = torch.zeros(1, 2, cpu_ops.NATIVE_MAX_TOKENS + 1, 16)
    assert not native_attention(long, long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert native_attention(q, k)  # fp32 inputs under autocast (Attention casts them back)
        assert not native_attention(q.bfloat16(), k.bfloat16())
    monkeypatch.setattr(native, "library", lambda: None)
    assert not native_attention(q, k)
