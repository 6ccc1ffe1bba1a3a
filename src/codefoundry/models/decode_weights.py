"""The decoding step's weight matrices, in the layout the CPU multiplies fastest at the step's batch size.

`step_weights(model, rows)` gives, per layer, the Q/K/V, output, gate/up and down projections, and the
output head, each as a function x -> x @ W.T (+ the Q/K/V bias); `generate`'s `_Step` calls them. The
layouts are copies of the weights, cached per model and remade when a weight changes (see below).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

from codefoundry.models.moe import SwiGLU
from codefoundry.models.transformer import Transformer

__all__ = ["COPY_LIMIT", "PACKED_MIN_ELEMENTS", "PACKED_MIN_ROWS", "step_weights"]

# The step's weight matrices in the layout the CPU multiplies fastest, per model, reused while the model's
# weights are the same tensors at the same version (an optimizer step or a load makes new copies):
# - batch 1 (`x @ W_t`, W_t a transposed copy stored (in, out)): reads the weights ~25% faster than
#   `F.linear(x, W)` where a matrix has more outputs than inputs, and the reverse where it has fewer (the
#   down projection keeps W as stored); a step at batch 1 is bound by reading the weights.
# - batch >= PACKED_MIN_ROWS: oneDNN's prepacked layout (`mkldnn._linear_pointwise`), which spares each
#   matmul the repacking of its weights that MKL does per call: ~18% less matmul time at batch 16 for
#   the 10m model. fp32 CPU models only; where the op is missing, the transposed copies. Only matrices of
#   at least PACKED_MIN_ELEMENTS entries: a packed product costs ~20 us more per call than `x @ W_t`, which
#   a small matrix never earns back (the `tiny` model generated 28k instead of 21k tok/s at batch 32
#   unpacked; `mini` at 16: 5.6k vs 5.0k; `10m` the same either way, its smallest matrix being 64k).
# Models whose matrices exceed COPY_LIMIT bytes, and other devices, use transposed views instead.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
COPY_LIMIT = 1 << 30
PACKED_MIN_ROWS = 8
PACKED_MIN_ELEMENTS = 1 << 16


def step_weights(model: Transformer, rows: int) -> tuple[list[tuple], Callable]:
    """Per layer (qkv, out, gate_up, down), the last two None for a mixture-of-experts MLP, then the
    output head: each a function x (rows, in) -> x @ W.T (+ the Q/K/V bias), for inputs of about `rows`
    rows."""
    mats: list[torch.Tensor | None] = []
    for block in model.layers:
        dense = type(block.mlp) is SwiGLU
        mats += [block.attn.qkv.weight, block.attn.out.weight]
        mats += [block.mlp.gate_up.weight, block.mlp.down.weight] if dense else [None, None]
    mats.append(model.lm_head.weight)
    biases = [None] * len(mats)
    biases[0 : len(mats) - 1 : 4] = [block.attn.qkv.bias for block in model.layers]
    present = [w for w in mats if w is not None]
    size = sum(w.numel() * w.element_size() for w in present)
    if present[0].device.type != "cpu" or size > COPY_LIMIT:
        kind = "views"
    elif rows >= PACKED_MIN_ROWS and present[0].dtype == torch.float32 and _packing_works():
        kind = "packed"
    else:
        kind = "transposed"
    versions = [None if w is None else w._version for w in mats]
    hit = _CACHE.get(model)
    if (
        hit
        and hit[0] == kind
        and all(a is b for a, b in zip(hit[1], mats, strict=True))
        and hit[2] == versions
    ):
        out = hit[3]
    else:
        # `rows` is only oneDNN's layout hint: a packed weight multiplies inputs of any number of rows.
        out = [None if w is None else _linear(kind, w, b, rows) for w, b in zip(mats, biases, strict=True)]
        if kind != "views":  # one layout per model at a time: each is a full copy of the weights
            _CACHE[model] = (kind, mats, versions, out)
    return [tuple(out[i : i + 4]) for i in range(0, len(out) - 1, 4)], out[-1]


def _linear(kind: str, w: torch.Tensor, bias: torch.Tensor | None, rows: int) -> Callable:
    if kind == "packed" and w.numel() < PACKED_MIN_ELEMENTS:
        kind = "transposed"
    if kind == "packed":
        packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows)
        b = None if bias is None else bias.detach()
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
    if kind == "transposed" and w.shape[1] > w.shape[0]:
        # More inputs than outputs (the MLP's down projection): row-wise dot products over the weight as
        # stored read it faster than x @ W_t (61 vs 79 us for 704 -> 256 at batch 1, cold), and need no copy.
        w = w.detach()
        return lambda x: F.linear(x, w, bias)
    wt = w.t() if kind == "views" else w.detach().t().contiguous()
    if bias is None:
        return lambda x: x @ wt
    return lambda x: torch.addmm(bias, x, wt)


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
