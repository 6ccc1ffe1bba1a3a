"""The chunked causal attention (`codefoundry.models.attention`) against one causal SDPA call."""

import pytest
import torch
import torch.nn.functional as F

from codefoundry.models import attention
from codefoundry.models.attention import ChunkedCausal, causal_attention, chunk_bounds, chunked
from codefoundry.models.config import config_for_size
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
    assert not chunked(torch.zeros(1, 2, attention.MIN_TOKENS - 1, 8))
    assert not chunked(torch.zeros(1, 2, attention.MAX_TOKENS + 1, 8))
    assert not chunked(q.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not chunked(q)


def test_causal_attention_on_both_paths_gives_the_model_the_same_loss_and_gradients(monkeypatch):
    torch.manual_seed(0)
    model = Transformer(config_for_size("tiny", vocab_size=97, max_seq_len=512)).double()
    ids = torch.randint(0, 97, (2, 301))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(ids[:, :-1], ids[:, 1:]).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    assert chunked(torch.zeros(1, 1, 300, 8, dtype=torch.float64))
    loss, grads = loss_and_grads()
    monkeypatch.setattr(attention, "MAX_TOKENS", 0)  # every call through one SDPA call
    assert not chunked(torch.zeros(1, 1, 300, 8, dtype=torch.float64))
    ref_loss, ref_grads = loss_and_grads()
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_causal_attention_without_gradients_matches_sdpa():
    q, k, v = (t.detach().float() for t in _qkv(2, 4, 2, 300, 16))
    with torch.no_grad():
        got = causal_attention(q, k, v)
        want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
