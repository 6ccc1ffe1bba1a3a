"""The fused output-head cross-entropy against logits + `F.cross_entropy`: values and gradients, chunk
edges, ignored rows, autocast, and the decoder's training loss (NTP and MTP) through either path."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from codefoundry.models import fused_ce  # noqa: E402
from codefoundry.models.config import config_for_size  # noqa: E402
from codefoundry.models.fused_ce import linear_cross_entropy  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402


def _reference(h, w, targets, upstream):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = F.cross_entropy(h @ w.t(), targets, ignore_index=-100)
    (loss * upstream).backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("slices", [1, 5, 2])  # the vocabulary (50) in 1, 5 or 2 blocks per chunk on CPU
@pytest.mark.parametrize("chunk", [1, 7 * 50, 1 << 21])  # one row, 7 rows (37 = 5 x 7 + 2), everything
def test_loss_and_gradients_match_the_unfused_path(monkeypatch, chunk, slices):
    monkeypatch.setattr(fused_ce, "CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(fused_ce, "CPU_VOCAB_SLICES", slices)
    assert fused_ce._slices(torch.device("cpu"), torch.float32, 50) == slices
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=gen, requires_grad=True)
    w = (torch.randn(50, 16, generator=gen) * 3).requires_grad_()  # large logits: the max shift matters
    targets = torch.randint(0, 50, (37,), generator=gen)
    targets[::4] = -100
    want, want_h, want_w = _reference(h, w, targets, 2.5)
    loss = linear_cross_entropy(h, w, targets)
    (loss * 2.5).backward()  # the upstream gradient scales both saved gradients
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)
    torch.testing.assert_close(h.grad, want_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad, want_w, rtol=1e-4, atol=1e-6)


def test_vocabulary_blocks_only_where_they_divide_it_and_only_for_fp32_on_cpu(monkeypatch):
    monkeypatch.setattr(fused_ce, "CPU_VOCAB_SLICES", 4)
    assert fused_ce._slices(torch.device("cpu"), torch.float32, 8192) == 4
    assert fused_ce._slices(torch.device("cpu"), torch.float32, 50) == 1
    assert fused_ce._slices(torch.device("cpu"), torch.bfloat16, 8192) == 1
    assert fused_ce._slices(torch.device("meta"), torch.float32, 8192) == 1


def test_every_target_ignored_gives_nan_like_cross_entropy_and_no_grad_takes_the_plain_path():
    h, w = torch.randn(4, 8, requires_grad=True), torch.randn(10, 8, requires_grad=True)
    ignored = torch.full((4,), -100)
    assert math.isnan(float(linear_cross_entropy(h, w, ignored).detach()))
    assert math.isnan(float(F.cross_entropy(h @ w.t(), ignored, ignore_index=-100).detach()))
    targets = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        got = linear_cross_entropy(h, w, targets)
    assert got.grad_fn is None
    assert float(got) == pytest.approx(float(F.cross_entropy(h @ w.t(), targets).detach()), rel=1e-6)


def test_bf16_autocast_stays_close_to_the_unfused_autocast_path():
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(64, 32, generator=gen, requires_grad=True)
    w = torch.randn(100, 32, generator=gen, requires_grad=True)
    targets = torch.randint(0, 100, (64,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, targets)
        ref = F.cross_entropy((h @ w.t()).float(), targets)
    loss.backward()
    grad_h, grad_w = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref.backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == grad_h.dtype == torch.float32
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=2e-2)
    torch.testing.assert_close(grad_h, h.grad, rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(grad_w, w.grad, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("kw", [{}, {"mtp_depth": 2}, {"tie_embeddings": False}])
def test_decoder_training_loss_is_the_same_with_and_without_logits(kw):
    torch.manual_seed(0)
    model = Transformer(config_for_size("tiny", 300, max_seq_len=64, **kw)).train()
    ids = torch.randint(0, 300, (3, 21))
    targets = ids[:, 1:].clone()
    targets[0, :7] = -100

    def run(logits: bool):
        model.zero_grad()
        out = model(ids[:, :-1], targets, logits=logits)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    fused, fused_grads = run(False)  # no logits asked for: the fused head
    plain, plain_grads = run(True)
    assert fused.logits is None and plain.logits is not None
    assert set(fused.parts) == set(plain.parts)
    for key in plain.parts:
        assert float(fused.parts[key]) == pytest.approx(float(plain.parts[key]), rel=1e-5), key
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_under_compilation_the_rows_are_cut_into_at_most_max_compiled_chunks(monkeypatch):
    # torch.compile unrolls the chunk loop, so it gets fewer, larger chunks, and traces the loop written
    # without in-place updates; the numbers do not change.
    chunks = []
    real_mm = torch.mm

    def counting_mm(a, b):
        if b.shape[-1] == 50:  # (rows, D) @ (D, V): one per chunk
            chunks.append(a.shape[0])
        return real_mm(a, b)

    monkeypatch.setattr(fused_ce, "CHUNK_ELEMENTS", 50)  # one row per chunk in eager mode
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(torch, "mm", counting_mm)
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(37, 16, generator=gen, requires_grad=True)
    w = torch.randn(50, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=gen)
    targets[::5] = -100
    loss = linear_cross_entropy(h, w, targets)
    (loss * 1.5).backward()
    monkeypatch.undo()
    assert (
        len(chunks)
        == math.ceil(37 / math.ceil(37 / fused_ce.MAX_COMPILED_CHUNKS))
        <= fused_ce.MAX_COMPILED_CHUNKS
    )
    want, want_h, want_w = _reference(h, w, targets, 1.5)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)
    torch.testing.assert_close(h.grad, want_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad, want_w, rtol=1e-4, atol=1e-6)


def test_compiled_gradients_equal_the_unfused_ones():
    # The real torch.compile over the head and loss (the path `pretrain --compile` takes): the gradients
    # must arrive, and be those of the unfused loss (on a CUDA device torch 2.11 once returned zeros).
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(64, 16, generator=gen, requires_grad=True)
    w = torch.randn(50, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (64,), generator=gen)
    targets[::6] = -100
    loss = torch.compile(linear_cross_entropy, fullgraph=True)(h, w, targets)
    loss.backward()
    want, want_h, want_w = _reference(h, w, targets, 1.0)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    torch.testing.assert_close(h.grad, want_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad, want_w, rtol=1e-4, atol=1e-6)


def test_sum_reduction_matches_the_unfused_sum_in_value_and_gradient(monkeypatch):
    monkeypatch.setattr(fused_ce, "CHUNK_ELEMENTS", 5 * 50)
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(23, 16, generator=gen, requires_grad=True)
    w = torch.randn(50, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (23,), generator=gen)
    targets[::3] = -100
    ref_h, ref_w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    want = F.cross_entropy(ref_h @ ref_w.t(), targets, ignore_index=-100, reduction="sum")
    want.backward()
    got = linear_cross_entropy(h, w, targets, reduction="sum")
    got.backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-4, atol=1e-5)
    assert float(linear_cross_entropy(h, w, torch.full((23,), -100), reduction="sum").detach()) == 0.0
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, w, targets, reduction="none")


@pytest.mark.parametrize("bad", [-1, 50])
def test_a_target_that_is_neither_ignored_nor_a_token_is_refused(bad):
    h, w = torch.randn(4, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"neither -100 nor in \[0, 50\)"):
        linear_cross_entropy(h, w, torch.tensor([1, bad, -100, 3]))
