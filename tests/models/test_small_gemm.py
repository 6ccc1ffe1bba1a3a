"""The decoding step's small-row product kernel (`codefoundry.models.small_gemm`): its values against
PyTorch's over odd shapes, bias, accumulation, strided inputs and thread counts; the bound forms; what it
refuses; its build cache; and the fallback where it is switched off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from codefoundry.models import decode_weights, native, small_gemm  # noqa: E402
from codefoundry.models.config import config_for_size  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402

needs_kernel = pytest.mark.skipif(
    small_gemm.library() is None, reason=f"the small-row kernel is unavailable: {small_gemm.why_not()}"
)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rows,k,n", [(1, 3, 16), (5, 40, 48), (6, 256, 32), (7, 33, 64), (16, 256, 1408),
                                      (33, 17, 16)])  # fmt: skip
def test_products_match_pytorchs(rows, k, n, threads):
    g = torch.Generator().manual_seed(rows * 1000 + k)
    x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
    bias = torch.randn(n, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        p = small_gemm.panels(w)
        assert p.shape == (n // 16, k, 16)
        assert torch.allclose(small_gemm.matmul(x, p), x @ w.t(), atol=1e-4, rtol=1e-5)
        assert torch.allclose(small_gemm.matmul(x, p, bias=bias), torch.addmm(bias, x, w.t()), atol=1e-4)
        base = torch.randn(rows, n, generator=g)
        got = small_gemm.matmul(x, p, out=base.clone(), accumulate=True)
        assert torch.allclose(got, base + x @ w.t(), atol=1e-4, rtol=1e-5)
        wide = torch.randn(rows, k + 7, generator=g)  # rows farther apart than k: lda > k
        assert torch.allclose(small_gemm.matmul(wide[:, 3 : 3 + k], p), wide[:, 3 : 3 + k] @ w.t(), atol=1e-4)
        assert torch.allclose(small_gemm.matmul(x.t().contiguous().t(), p), x @ w.t(), atol=1e-4)  # copied
    finally:
        torch.set_num_threads(before)


@needs_kernel
def test_bound_calls_read_their_buffers_as_they_are_at_each_call():
    g = torch.Generator().manual_seed(0)
    w, x, out = torch.randn(32, 24, generator=g), torch.zeros(3, 24), torch.empty(3, 32)
    p = small_gemm.panels(w)
    call = small_gemm.bound(x, p, out)
    for _ in range(2):
        x.copy_(torch.randn(3, 24, generator=g))
        call()
        assert torch.allclose(out, x @ w.t(), atol=1e-5)
    residual = torch.randn(3, 32, generator=g)
    into = residual.clone()
    add = small_gemm.adder(p, into)
    y = torch.randn(3, 24, generator=g)
    add(y)
    assert torch.allclose(into, residual + y @ w.t(), atol=1e-5)
    with pytest.raises(ValueError, match=r"an input of \(4, 24\)"):
        add(torch.randn(4, 24))
    with pytest.raises(ValueError, match="unit stride"):
        add(torch.randn(24, 3).t())


@needs_kernel
def test_it_refuses_what_it_cannot_multiply():
    with pytest.raises(ValueError, match="multiple of 16"):
        small_gemm.panels(torch.randn(20, 8))
    with pytest.raises(ValueError, match="fp32"):
        small_gemm.panels(torch.randn(16, 8, dtype=torch.float64))
    p = small_gemm.panels(torch.randn(16, 8))
    with pytest.raises(ValueError, match="small_gemm: x"):
        small_gemm.matmul(torch.randn(2, 9), p)  # inner widths differ
    with pytest.raises(ValueError, match="small_gemm: x"):
        small_gemm.matmul(torch.randn(2, 8), p, out=torch.empty(3, 16))
    with pytest.raises(ValueError, match="accumulate needs an out"):
        small_gemm.matmul(torch.randn(2, 8), p, accumulate=True)


@needs_kernel
def test_the_build_is_cached_by_sources_and_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEFOUNDRY_CACHE", str(tmp_path))
    first = native._build()
    assert first.parent == tmp_path / "native" and first.exists()
    stamp = first.stat().st_mtime_ns
    assert native._build() == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert [f.name for f in first.parent.iterdir()] == [first.name]  # no temporary file left


def test_decoding_keeps_pytorchs_products_where_the_kernel_is_switched_off():
    code = (
        "import torch\n"
        "from codefoundry.models import decode_weights, small_gemm\n"
        "from codefoundry.models.config import config_for_size\n"
        "from codefoundry.models.transformer import Transformer\n"
        "assert small_gemm.library() is None and 'CODEFOUNDRY_NATIVE=0' in small_gemm.why_not()\n"
        "m = Transformer(config_for_size('tiny', 256)).eval()\n"
        "layers, head = decode_weights.step_weights(m, 16)\n"
        "print(type(layers[0].qkv).__name__)\n"
    )
    env = {**os.environ, "CODEFOUNDRY_NATIVE": "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in {"_Packed", "_Split", "_Matrix"}


@needs_kernel
def test_the_step_multiplies_through_panels_up_to_its_row_limit():
    model = Transformer(config_for_size("tiny", 256)).eval()
    layers, head = decode_weights.step_weights(model, decode_weights.PANELS_MAX_ROWS)
    assert isinstance(layers[0].qkv, decode_weights._Panels) and isinstance(head, decode_weights._Panels)
    assert isinstance(layers[0].swiglu, decode_weights._PanelsGated)
    assert isinstance(layers[0].down, decode_weights._PanelsAdd)
    layers, _ = decode_weights.step_weights(model, decode_weights.PANELS_MAX_ROWS + 1)
    assert not isinstance(layers[0].qkv, decode_weights._Panels)
    h, x = torch.randn(5, model.cfg.dim), torch.randn(5, model.cfg.dim)
    block = model.layers[0]
    layers, head = decode_weights.step_weights(model, 5)
    with torch.no_grad():
        scale = block.mlp_norm.weight.reciprocal() / model.cfg.dim**0.5  # the folded norm weight, undone
        gate, up = block.mlp.gate_up(h).chunk(2, dim=-1)
        assert torch.allclose(layers[0].swiglu(h * scale), torch.nn.functional.silu(gate) * up, atol=1e-5)
        assert torch.allclose(layers[0].out(h, x), x + block.attn.out(h), atol=1e-5)
        assert torch.allclose(head(h), model.lm_head(h), atol=1e-5)
