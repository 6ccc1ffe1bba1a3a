"""The decoding step's products on x86-64 CPUs: y = x @ W.T (+ bias) (+ y) for a few rows x, by a small C
kernel (`small_gemm.c`, built by `codefoundry.models.native`); and, from the same library,
the step's folded RMSNorm and its rotary op with the cache writes (`elementwise`), one call each.

Why: at the row counts of decoding (1-64), MKL's and oneDNN's fp32 kernels run far below what the CPU
can do. With 16 rows against the 10m model's matrices, 2 threads, this VM: gate/up (1408 x 256) 80-97 us
here against 195-212 us for `x @ W_t` and 122-201 us packed; the head (8192 x 256) 549-688 us against
1.1 ms packed (benchmarks/README.md). The kernel keeps a panel of 16 output columns streaming through
the cache while six rows of x each hold two accumulators in registers; the libraries' kernels are
tuned for large products, where repacking the input pays off.

`library()` is None, and callers keep PyTorch's products, wherever the kernels cannot run as intended
(`codefoundry.models.native`, which builds and loads them, says when) or this kernel's self-check fails.

The values: each output is a plain in-order sum of fused multiply-adds, so it may differ from MKL's in
the last bits (as MKL's own kernels differ between row counts); the decoding tests check the step's logits
against the model's forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from codefoundry.models import native

__all__ = ["PANEL", "adder", "bound", "elementwise", "library", "matmul", "panels", "why_not"]

PANEL = 16  # output columns per panel, as in panels.h


def library() -> Callable | None:
    """The kernel's entry point (`cf_small_gemm`), checked once per process against PyTorch's product;
    None where `native.library()` is None or the check fails (`why_not()` says which)."""
    return _checked()[0]


def why_not() -> str | None:
    """Why `library()` is None, or None when it is not."""
    return _checked()[1]


@functools.cache
def _checked() -> tuple[Callable | None, str | None]:
    lib = native.library()
    if lib is None:
        return None, native.why_not()
    if not _self_check(lib.cf_small_gemm):
        return None, "the kernel's self-check failed"
    return lib.cf_small_gemm, None


def elementwise() -> tuple[Callable, Callable] | None:
    """The decoding step's two elementwise entry points of the same library, (cf_norm_rows,
    cf_rotate_store), where `library()` is available (see small_gemm.c for their arguments); else None."""
    lib = native.library()
    return (lib.cf_norm_rows, lib.cf_rotate_store) if library() is not None else None


def _self_check(fn: Callable) -> bool:
    """A few products of odd shapes, with bias and accumulation, against PyTorch's."""
    g = torch.Generator().manual_seed(0)
    for rows, k, n in ((1, 3, 16), (7, 40, 48), (13, 33, 32)):
        x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
        bias, base = torch.randn(n, generator=g), torch.randn(rows, n, generator=g)
        want = torch.addmm(base + bias, x, w.t())
        got = base.clone()
        _call(fn, x, panels(w), got, bias, True, 2)
        if not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
            return False
    return True


def panels(w: torch.Tensor) -> torch.Tensor:
    """w (out, in), fp32, out a multiple of PANEL -> its panels, (out / PANEL, in, PANEL) contiguous: panel p
    holds w.T's columns p*PANEL .. p*PANEL + PANEL - 1."""
    out, inner = w.shape
    if w.dtype != torch.float32 or w.device.type != "cpu" or out % PANEL:
        raise ValueError(f"panels: need an fp32 CPU matrix with a multiple of {PANEL} rows, got "
                         f"{tuple(w.shape)} {w.dtype} on {w.device}")  # fmt: skip
    return w.detach().t().reshape(inner, out // PANEL, PANEL).permute(1, 0, 2).contiguous()


def _check(x: torch.Tensor, p: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None) -> None:
    n = p.shape[0] * PANEL
    problems = [
        x.dim() != 2 or x.dtype != torch.float32 or x.device.type != "cpu" or x.stride(1) != 1,
        x.shape[1] != p.shape[1],
        out.dim() != 2 or out.dtype != torch.float32 or out.stride(1) != 1 or tuple(out.shape) != (x.shape[0], n),
        bias is not None and (bias.shape != (n,) or bias.dtype != torch.float32 or not bias.is_contiguous()),
        not p.is_contiguous() or p.data_ptr() % 32 != 0,
    ]  # fmt: skip
    if any(problems):
        raise ValueError(
            f"small_gemm: x {tuple(x.shape)} {x.dtype} strides {x.stride()}, panels {tuple(p.shape)}, out "
            f"{tuple(out.shape)} strides {out.stride()}: need fp32 CPU rows with unit stride, x (m, k), "
            f"panels (n / {PANEL}, k, {PANEL}), out (m, n)"
        )


def _kernel() -> Callable:
    fn = library()
    if fn is None:
        raise RuntimeError(f"small_gemm: the kernel is unavailable: {why_not()}")
    return fn


def _args(x, p, out, bias, accumulate: bool, threads: int) -> tuple:
    """cf_small_gemm's arguments, x's pointer and row stride first."""
    return (x.data_ptr(), x.stride(0), p.data_ptr(), p.shape[1], p.shape[0] * PANEL, out.data_ptr(),
            out.stride(0), x.shape[0], None if bias is None else bias.data_ptr(), int(accumulate), threads)  # fmt: skip


def _call(fn, x, p, out, bias, accumulate: bool, threads: int) -> None:
    fn(*_args(x, p, out, bias, accumulate, threads))


def matmul(
    x: torch.Tensor,
    p: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    accumulate: bool = False,
) -> torch.Tensor:
    """x (m, k) @ W.T (+ bias), W given as its `panels`, into `out` (new when None; with `accumulate`,
    added to what `out` holds) on PyTorch's number of threads. Needs `library()`."""
    fn = _kernel()
    if x.stride(-1) != 1:
        x = x.contiguous()
    if out is None:
        if accumulate:
            raise ValueError("small_gemm: accumulate needs an out to add to")
        out = x.new_empty(x.shape[0], p.shape[0] * PANEL)
    _check(x, p, out, bias)
    _call(fn, x, p, out, bias, accumulate, torch.get_num_threads())
    return out


def bound(
    x: torch.Tensor, p: torch.Tensor, out: torch.Tensor, *, bias: torch.Tensor | None = None,
    accumulate: bool = False,
) -> Callable[[], None]:  # fmt: skip
    """`matmul` from the fixed buffer `x` into the fixed buffer `out`, as a call with its arguments made
    once (the buffers, the panels and the bias must outlive it and keep their storage). The thread count
    is PyTorch's at binding."""
    fn = _kernel()
    _check(x, p, out, bias)
    return functools.partial(fn, *_args(x, p, out, bias, accumulate, torch.get_num_threads()))


def adder(p: torch.Tensor, out: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """A call y -> None that adds y @ W.T (W given as its `panels`) into the fixed buffer `out` in place,
    for inputs y that change from call to call but keep `out`'s rows and W's inner width."""
    fn = _kernel()
    k, rows = p.shape[1], out.shape[0]
    like = out.new_empty(rows, k)  # what each y must look like
    _check(like, p, out, None)
    shape, tail = like.shape, _args(like, p, out, None, True, torch.get_num_threads())[2:]

    def run(y: torch.Tensor) -> None:
        if y.shape != shape or y.stride(1) != 1 or y.dtype != torch.float32:
            raise ValueError(f"small_gemm: an input of {tuple(y.shape)} {y.dtype} strides {y.stride()} "
                             f"where ({rows}, {k}) fp32 rows of unit stride were bound")  # fmt: skip
        fn(y.data_ptr(), y.stride(0), *tail)

    return run
