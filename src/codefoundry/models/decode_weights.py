"""The decoding step's weight matrices, in the layout the CPU multiplies fastest at the step's batch size.

`step_weights(model, rows)` gives, per layer, a `StepLayer` (the Q/K/V, output, gate/up and down
projections), and the output head x -> x @ W.T; `codefoundry.models.step` calls them. The layouts are
copies of the weights, cached per model and remade when a weight changes (see below); on x86-64 CPUs
the products of up to PANELS_MAX_ROWS rows run through a small C kernel (`small_gemm`).

Two more things fold into the copies of an fp32 model on the CPU, each an operation fewer per use (together
+12% greedy tokens/s at batch 1 and +6% at 16 for the 10m model, tokens identical; benchmarks/README.md):
- a block's RMSNorm weights, times sqrt(dim), into the Q/K/V and gate/up matrices (W diag(w) x ==
  (W diag(w)) x), so the step's norm is x / sqrt(sum(x^2) + dim * eps), with no scalar turned into a
  tensor per call and no multiply by the weight;
- the residual add, into the output and down projections: `torch.addmm(residual, y, W_t)`, or oneDNN's
  product with a fused add for packed weights.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from codefoundry.models import small_gemm
from codefoundry.models.moe import SwiGLU
from codefoundry.models.transformer import Transformer

__all__ = [
    "COPY_LIMIT", "PACKED_MIN_ELEMENTS", "PACKED_MIN_ROWS", "PANELS_MAX_ROWS", "SPLIT_MIN_COLUMNS", "SPLIT_MIN_ELEMENTS",
    "SPLIT_SLICES_PER_THREAD", "Add", "GatedProduct", "Product", "StepLayer", "in_panels", "step_weights",
]  # fmt: skip

# The step's weight matrices in the layout the CPU multiplies fastest, per model, reused while the model's
# weights are the same tensors at the same version (an optimizer step or a load makes new copies):
# - up to PANELS_MAX_ROWS rows, fp32, where `small_gemm`'s kernel is available (Linux x86-64 with AVX2,
#   FMA and a C compiler) and the blocks' widths are whole panels of 16: panels for that kernel, which
#   multiplies a few rows 1.5-3x faster than MKL's or oneDNN's (10m model, 2 threads, 16 rows: gate/up
#   80-118 vs 122-212 us, the head 0.55-0.68 vs 1.1 ms). Greedy `generate_ab.py` against the layouts
#   below: +11-17% at batch 16, +29-37% at batch 1, tokens identical. At 128 rows MKL catches up.
#   The layouts below are what every other machine gets.
# - batch 1 (`x @ W_t`, W_t a transposed copy stored (in, out)): reads the weights ~25% faster than
#   `F.linear(x, W)` where a matrix has more outputs than inputs, and the reverse where it has fewer (the
#   down projection keeps W as stored); a step at batch 1 is bound by reading the weights.
# - batch >= PACKED_MIN_ROWS: oneDNN's prepacked layout (`mkldnn._linear_pointwise`), which spares each
#   matmul the repacking of its weights that MKL does per call: ~18% less matmul time at batch 16 for
#   the 10m model. fp32 CPU models only; where the op is missing, the transposed copies. Only matrices of
#   at least PACKED_MIN_ELEMENTS entries: a packed product costs ~20 us more per call than `x @ W_t`, which
#   a small matrix never earns back (the `tiny` model generated 28k instead of 21k tok/s at batch 32
#   unpacked; `mini` at 16: 5.6k vs 5.0k; `10m` the same either way, its smallest matrix being 64k).
#   With two or more threads, the blocks' matrices are split instead into slices of output columns,
#   SPLIT_SLICES_PER_THREAD per thread, stored (slices, in, out / slices), and multiplied by one
#   `torch.bmm` (MKL's batched product shares the slices among the threads): at 16 rows neither MKL's nor
#   oneDNN's single product keeps two threads busy (for the 10m model's blocks, per layer, 2 threads, one
#   slice per thread: 274 vs 355 us packed; gate/up 155 vs 166, Q/K/V 41 vs 63, output 24 vs 48, down 54
#   vs 78), and slices of <= ~180 KB stay in the L2 cache (gate/up in 8 slices: 130 vs 159 us in 2). The
#   same values: each output column is the same dot product. The head stays packed (844 vs 1098 us
#   split). Greedy batch 16, `generate_ab.py`, tokens identical: one slice per thread +3% to +11% over
#   packing (three runs; median per-round ratios 1.04-1.07), then four per thread over one +8%, +0.5%
#   and +5.6% (three runs of 9-15 rounds; eight per thread: +5%).
#   Below PACKED_MIN_ROWS rows, matrices of at least SPLIT_MIN_ELEMENTS entries (the 10m model's gate/up
#   and head) are split the same way: at one row, 51 vs 69 us and 256 vs 399 us; greedy batch 1 +9%.
# Models whose matrices exceed COPY_LIMIT bytes, and other devices, use transposed views instead, with
# nothing folded or fused (see the module docstring).
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
COPY_LIMIT = 1 << 30
PANELS_MAX_ROWS = 64
PACKED_MIN_ROWS = 8
PACKED_MIN_ELEMENTS = 1 << 16
SPLIT_MIN_COLUMNS = 64  # the narrowest slice of output columns a thread gets in the split layout
SPLIT_MIN_ELEMENTS = 1 << 18  # below PACKED_MIN_ROWS rows, only matrices this large are split
SPLIT_SLICES_PER_THREAD = 4  # from PACKED_MIN_ROWS rows on: smaller slices stay in the L2 cache


@dataclass(frozen=True)
class StepLayer:
    """One block of the decoding step. `qkv(h)` = h @ W_qkv.T (+ bias); `out(y, x)` = x + y @ W_out.T;
    `swiglu(h)` = silu(h @ W_gate.T) * (h @ W_up.T) and `down(a, x)` = x + a @ W_down.T, the two None for a
    mixture of experts. `attn_scale` / `mlp_scale`: the RMSNorm weight the step multiplies by before `qkv` /
    `swiglu`, or None where it is folded into that matrix, times sqrt(dim) (then the norm takes no
    weight and no mean: x / sqrt(sum(x^2) + dim * eps))."""

    attn_scale: torch.Tensor | None
    qkv: Product
    out: Add
    mlp_scale: torch.Tensor | None
    swiglu: GatedProduct | None
    down: Add | None


def step_weights(model: Transformer, rows: int) -> tuple[list[StepLayer], Callable]:
    """Per layer a `StepLayer`, then the output head x (rows, dim) -> x @ W.T, for inputs of about `rows`
    rows."""
    blocks = list(model.layers)
    mats: list[torch.Tensor | None] = []
    for block in blocks:
        dense = type(block.mlp) is SwiGLU
        mats += [block.attn.qkv.weight, block.attn.out.weight]
        mats += [block.mlp.gate_up.weight, block.mlp.down.weight] if dense else [None, None]
    mats.append(model.lm_head.weight)
    present = [w for w in mats if w is not None]
    size = sum(w.numel() * w.element_size() for w in present)
    if present[0].device.type != "cpu" or size > COPY_LIMIT:
        kind = "views"
    elif rows <= PANELS_MAX_ROWS and _panels_fit(present) and small_gemm.library() is not None:
        kind = "panels"
    elif rows >= PACKED_MIN_ROWS and present[0].dtype == torch.float32 and _packing_works():
        kind = "packed"
    else:
        kind = "transposed"
    # The split layout's slices per matrix (fp32 only: that is what was measured).
    split_ok = kind in ("packed", "transposed") and present[0].dtype == torch.float32
    per_thread = SPLIT_SLICES_PER_THREAD if kind == "packed" else 1
    pieces = per_thread * torch.get_num_threads() if split_ok else 1
    # Folding needs copies, and fp32: other dtypes keep F.rms_norm, which computes in fp32.
    fold = kind != "views" and present[0].dtype == torch.float32
    norms = [w for block in blocks for w in (block.attn_norm.weight, block.mlp_norm.weight)]
    tensors = mats + norms
    versions = [None if w is None else w._version for w in tensors]
    hit = _CACHE.get(model)
    if (
        hit
        and hit[0] == (kind, fold, pieces)
        and all(a is b for a, b in zip(hit[1], tensors, strict=True))
        and hit[2] == versions
    ):
        return hit[3]
    made = _make(model, blocks, kind, fold, rows, pieces)
    if kind != "views":  # one layout per model at a time: each is a full copy of the weights
        _CACHE[model] = ((kind, fold, pieces), tensors, versions, made)
    return made


def _make(
    model: Transformer, blocks: list, kind: str, fold: bool, rows: int, pieces: int
) -> tuple[list[StepLayer], Callable]:
    scale = math.sqrt(model.cfg.dim)
    layers = []
    for block in blocks:
        attn_norm, mlp_norm = block.attn_norm.weight.detach(), block.mlp_norm.weight.detach()
        dense = type(block.mlp) is SwiGLU
        qkv_w = block.attn.qkv.weight.detach()
        if fold:
            qkv_w = qkv_w * (attn_norm * scale)  # (out, in) * (in,): a new tensor, the model's untouched
        swiglu = down = None
        if dense:
            gu_w = block.mlp.gate_up.weight.detach()
            swiglu = _swiglu(kind, gu_w * (mlp_norm * scale) if fold else gu_w, rows, pieces)
            down = _linear_add(kind, block.mlp.down.weight, rows, fold, pieces)
        layers.append(
            StepLayer(
                attn_scale=None if fold else attn_norm,
                qkv=_linear(kind, qkv_w, block.attn.qkv.bias, rows, pieces),
                out=_linear_add(kind, block.attn.out.weight, rows, fold, pieces),
                mlp_scale=None if fold and dense else mlp_norm,
                swiglu=swiglu,
                down=down,
            )
        )
    # The packed head is faster than the split one at 16 rows (844 vs 1098 us for the 10m model's).
    return layers, _linear(kind, model.lm_head.weight, None, rows, 1 if kind == "packed" else pieces)


# Each product below is a callable for the step (`Product(x)`, `Add(y, x)` = x + y @ W.T, `GatedProduct(h)`)
# and can also be bound to fixed buffers (`bind`), for the step whose activations stay in place from token
# to token (`codefoundry.models.step.StaticStep`): the bound call writes its result into the buffer given,
# with every view of the buffers made once, and allocates nothing (through `out=` or in place). A layout
# with no `out=` form (oneDNN's packed product) binds as a copy of its result.
class Product:
    """x -> x @ W.T (+ bias)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bind(self, x: torch.Tensor, out: torch.Tensor) -> Callable[[], None]:
        """A call that writes x @ W.T (+ bias) into `out`, reading the buffer `x` as it is then."""
        return lambda: out.copy_(self(x))


class _Split(Product):
    """Over slices of the output columns, one `torch.bmm`: split (slices, in, out / slices)."""

    def __init__(self, split: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.split, self.bias = split, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.bmm(x.expand(self.split.shape[0], -1, -1), self.split)  # (slices, rows, out / slices)
        y = y.transpose(0, 1).reshape(x.shape[0], -1)
        return y if self.bias is None else y + self.bias

    def bind(self, x: torch.Tensor, out: torch.Tensor) -> Callable[[], None]:
        p, rows = self.split.shape[0], x.shape[0]
        xs, parts = x.expand(p, -1, -1), x.new_empty(p, rows, self.split.shape[2])
        joined, columns = out.view(rows, p, -1), parts.transpose(0, 1)
        split, bias = self.split, self.bias

        def run() -> None:
            torch.bmm(xs, split, out=parts)
            joined.copy_(columns)
            if bias is not None:
                out.add_(bias)

        return run


class _Packed(Product):
    """oneDNN's prepacked product."""

    def __init__(self, packed: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.packed, self.bias = packed, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class _Matrix(Product):
    """x @ W_t, W_t (in, out) a transposed copy or a view."""

    def __init__(self, wt: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.wt, self.bias = wt, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.wt if self.bias is None else torch.addmm(self.bias, x, self.wt)

    def bind(self, x: torch.Tensor, out: torch.Tensor) -> Callable[[], None]:
        wt, bias = self.wt, self.bias
        if bias is None:
            return lambda: torch.mm(x, wt, out=out)
        return lambda: torch.addmm(bias, x, wt, out=out)


class _Panels(Product):
    """The small-row kernel (`small_gemm`) over w's panels of output columns."""

    def __init__(self, panels: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.panels, self.bias = panels, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return small_gemm.matmul(x, self.panels, bias=self.bias)

    def bind(self, x: torch.Tensor, out: torch.Tensor) -> Callable[[], None]:
        return small_gemm.bound(x, self.panels, out, bias=self.bias)


def _linear(kind: str, w: torch.Tensor, bias: torch.Tensor | None, rows: int, pieces: int) -> Product:
    """x -> x @ w.T (+ bias) in `kind`'s layout, split in `pieces` slices of columns where that applies."""
    w = w.detach()
    b = None if bias is None else bias.detach()
    if kind == "panels" and w.shape[0] % small_gemm.PANEL == 0:
        return _Panels(small_gemm.panels(w), b)
    split = _split(kind, w, pieces)
    if split is not None:
        return _Split(split, b)
    packed = _packed(kind, w, rows)
    if packed is not None:
        return _Packed(packed, b)
    return _Matrix(_transposed(kind, w), b)


class Add:
    """(y, x) -> x + y @ W.T (no bias)."""

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bind(self, x: torch.Tensor) -> Callable[[torch.Tensor], None]:
        """A call y -> None that adds y @ W.T into the buffer `x` in place."""
        return lambda y: x.copy_(self(y, x))


class _Unfused(Add):
    def __init__(self, product: Product) -> None:
        self.product = product

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x + self.product(y)


class _SplitAdd(Add):
    """The add fused into the copy that joins the slices."""

    def __init__(self, split: torch.Tensor) -> None:
        self.split = split

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = self.split.shape[0]
        parts = torch.bmm(y.expand(p, -1, -1), self.split).transpose(0, 1)
        return torch.add(x.view(x.shape[0], p, -1), parts).view(x.shape[0], -1)

    def bind(self, x: torch.Tensor) -> Callable[[torch.Tensor], None]:
        p, rows = self.split.shape[0], x.shape[0]
        parts = x.new_empty(p, rows, self.split.shape[2])
        split, columns, into = self.split, parts.transpose(0, 1), x.view(rows, p, -1)

        def run(y: torch.Tensor) -> None:
            torch.bmm(y.expand(p, -1, -1), split, out=parts)
            into.add_(columns)

        return run


class _PackedAdd(Add):
    """oneDNN's prepacked product with a fused add."""

    def __init__(self, packed: torch.Tensor) -> None:
        self.packed = packed

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(y, x, self.packed, None, "add")


class _MatrixAdd(Add):
    def __init__(self, wt: torch.Tensor) -> None:
        self.wt = wt

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(x, y, self.wt)

    def bind(self, x: torch.Tensor) -> Callable[[torch.Tensor], None]:
        wt = self.wt
        return lambda y: x.addmm_(y, wt)


class _PanelsAdd(Add):
    """The small-row kernel, adding into the residual stream as it writes."""

    def __init__(self, panels: torch.Tensor) -> None:
        self.panels = panels

    def __call__(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        into = x.clone(memory_format=torch.contiguous_format)
        return small_gemm.matmul(y, self.panels, out=into, accumulate=True)

    def bind(self, x: torch.Tensor) -> Callable[[torch.Tensor], None]:
        return small_gemm.adder(self.panels, x)


def _linear_add(kind: str, w: torch.Tensor, rows: int, fused: bool, pieces: int) -> Add:
    """(y, x) -> x + y @ w.T (no bias), the add fused into the product where `fused` (for the split layout,
    into the copy that joins the slices)."""
    if not fused:
        return _Unfused(_linear(kind, w, None, rows, pieces))
    w = w.detach()
    if kind == "panels":
        return _PanelsAdd(small_gemm.panels(w))
    split = _split(kind, w, pieces)
    if split is not None:
        return _SplitAdd(split)
    packed = _packed(kind, w, rows)
    if packed is not None:
        return _PackedAdd(packed)
    return _MatrixAdd(_transposed(kind, w))


class GatedProduct:
    """h -> silu(h @ W_gate.T) * (h @ W_up.T)."""

    def __init__(self, product: Product) -> None:
        self.product = product

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.product(h).chunk(2, dim=-1)
        return F.silu(gate) * up

    def bind(self, h: torch.Tensor, out: torch.Tensor) -> Callable[[], None]:
        """A call that writes the activation of the buffer `h` into `out`."""
        return lambda: out.copy_(self(h))


class _SplitGated(GatedProduct):
    """Split in an even number of slices, the first half of them the gate: the activation runs on the
    contiguous slices and only its result is joined (35 vs 40 us a layer at 16 rows, with eight slices)."""

    def __init__(self, split: torch.Tensor) -> None:
        self.split, self.half = split, split.shape[0] // 2

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        y = torch.bmm(h.expand(2 * self.half, -1, -1), self.split)  # (slices, rows, n / half)
        if self.half == 1:
            return F.silu(y[0]).mul_(y[1])
        return F.silu(y[: self.half]).mul_(y[self.half :]).transpose(0, 1).reshape(h.shape[0], -1)

    def bind(self, h: torch.Tensor, out: torch.Tensor) -> Callable[[], None]:
        p, rows = self.split.shape[0], h.shape[0]
        hs, parts = h.expand(p, -1, -1), h.new_empty(p, rows, self.split.shape[2])
        gate, up = parts[: self.half], parts[self.half :]
        split, columns, joined = self.split, gate.transpose(0, 1), out.view(rows, self.half, -1)

        def run() -> None:
            torch.bmm(hs, split, out=parts)
            F.silu(gate, inplace=True)
            gate.mul_(up)
            joined.copy_(columns)

        return run


class _PanelsGated(GatedProduct):
    """The small-row kernel writes gate and up side by side; the activation runs on the two halves in
    place, and only the product of the two is written out."""

    def __init__(self, panels: torch.Tensor) -> None:
        self.panels, self.n = panels, panels.shape[0] * small_gemm.PANEL // 2

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        y = small_gemm.matmul(h, self.panels)
        return F.silu(y[:, : self.n]).mul_(y[:, self.n :])

    def bind(self, h: torch.Tensor, out: torch.Tensor) -> Callable[[], None]:
        both = h.new_empty(h.shape[0], 2 * self.n)
        gate, up = both[:, : self.n], both[:, self.n :]
        product = small_gemm.bound(h, self.panels, both)

        def run() -> None:
            product()
            F.silu(gate, inplace=True)
            torch.mul(gate, up, out=out)

        return run


def _swiglu(kind: str, w: torch.Tensor, rows: int, pieces: int) -> GatedProduct:
    """h -> silu(h @ w[:n].T) * (h @ w[n:].T) for w of 2n rows (the gate, then the up projection)."""
    if kind == "panels":
        return _PanelsGated(small_gemm.panels(w.detach()))
    split = _split(kind, w, pieces)
    if split is not None and split.shape[0] % 2 == 0:
        return _SplitGated(split)
    return GatedProduct(_linear(kind, w, None, rows, pieces))


def _split(kind: str, w: torch.Tensor, pieces: int) -> torch.Tensor | None:
    """w (out, in) as `pieces` slices of w.T's columns, (pieces, in, out / pieces), where `kind` packs (or
    is transposed, for a matrix of SPLIT_MIN_ELEMENTS or more), each slice has at least SPLIT_MIN_COLUMNS
    columns (fewer slices where that needs it), and there are at least two slices and at least as many as
    threads; else None."""
    out = w.shape[0]
    pieces = min(pieces, out // SPLIT_MIN_COLUMNS)
    while pieces >= 2 and out % pieces:
        pieces -= 1
    # Fewer slices than threads would leave threads idle where the single product uses them all (a small
    # matrix on a many-core machine): keep the other layout there.
    if pieces < max(2, torch.get_num_threads()):
        return None
    if not (kind == "packed" or (kind == "transposed" and w.numel() >= SPLIT_MIN_ELEMENTS)):
        return None
    return w.view(pieces, out // pieces, w.shape[1]).transpose(1, 2).contiguous()


def _packed(kind: str, w: torch.Tensor, rows: int) -> torch.Tensor | None:
    """oneDNN's prepacked copy of w, where `kind` packs and w is large enough to earn it; else None.
    `rows` is only oneDNN's layout hint: a packed weight multiplies inputs of any number of rows."""
    if kind != "packed" or w.numel() < PACKED_MIN_ELEMENTS:
        return None
    return torch.ops.mkldnn._reorder_linear_weight(w, rows)


def _transposed(kind: str, w: torch.Tensor) -> torch.Tensor:
    """w.T, (in, out), for x @ w.T: a view of w as stored where no copies are made ("views") or where w has
    more inputs than outputs (the MLP's down projection: row-wise dot products over the stored rows read
    it faster than a transposed copy, 61 vs 79 us for 704 -> 256 at batch 1, cold); else a contiguous
    transposed copy."""
    if kind == "views" or w.shape[1] > w.shape[0]:
        return w.t()
    return w.t().contiguous()


def in_panels(layers: list[StepLayer]) -> bool:
    """Whether these layers' products run through `small_gemm`'s kernel (and so its elementwise calls can
    serve the step too)."""
    return all(isinstance(layer.qkv, _Panels) for layer in layers)


def _panels_fit(mats: list[torch.Tensor]) -> bool:
    """Whether the blocks' matrices (all but the last, the head) suit the small-row kernel: fp32, output
    widths in whole panels. A head that does not keeps the transposed product."""
    return mats[0].dtype == torch.float32 and all(w.shape[0] % small_gemm.PANEL == 0 for w in mats[:-1])


@functools.cache
def _packing_works() -> bool:
    """Whether this torch build has oneDNN's packed linear (checked once, on a small product)."""
    try:
        w, x = torch.randn(4, 3), torch.randn(8, 3)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 8)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(torch.allclose(got, x @ w.t(), atol=1e-5))
