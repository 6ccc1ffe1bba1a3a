"""Operations of the decoder written for the eager CPU path, where PyTorch's own spend time they need not.

**Causal attention through a C kernel** (`attention.c`, built by `codefoundry.models.native`; fp32, head
sizes in multiples of 16, up to `NATIVE_MAX_TOKENS`). PyTorch's CPU flash-attention kernel runs at ~50-60
GFLOP/s at head dim 32. The C kernel does the same arithmetic as the chunks below (scores only up to each
block's last query, an exact softmax, backward from the saved log-sum-exp) with its products through
`panels.h`, one task per (batch row, key/value head) so no two threads write one gradient. Forward and
backward against PyTorch's path, `benchmarks/attention_chunks.py` (10m heads 8/4 x 32, 4096 tokens, 2
threads): 1.3-1.8x from 64 to 2048 tokens; 14/2 heads of 64 1.2-2.0x, 8 heads of 128 1.1-1.5x. A whole
10m training step at 8 x 512: 1.14x (median of 12 alternating steps). Values and gradients agree with
fp64 SDPA within 5e-6 / 2e-5 (tested). Where the kernels are unavailable, the chunked path below.

**Causal attention in query chunks.** PyTorch's CPU flash-attention kernel (torch 2.13) walks the keys in
blocks of 512 and, when causal, stops after the block that holds the diagonal, but computes that block
whole and masks the part above the diagonal afterwards. Up to 512 keys the causal kernel therefore does the
work of the full square. Split into query chunks of `CHUNK` rows, chunk i (queries a..b) attends to keys
0..b only, with an additive mask on its diagonal square: about (n + 1) / 2n of the square for n chunks.
Forward and backward call the kernel's own ops (`_scaled_dot_product_flash_attention_for_cpu` and its
backward), so the arithmetic per element is the kernel's; outputs agree with one causal call to within
float rounding (tested). Measured (`benchmarks/attention_chunks.py`, the 10m model's heads, 4096 tokens a
batch, 2 threads, 2-3 runs): in chunks of 64, forward and backward run 1.17x faster at 256 tokens,
1.16-1.49x at 384, 1.21-1.40x at 512 and 1.07-1.15x at 640. From 768 tokens the kernel takes 256 queries a
block and one call is faster (0.87-0.9x at 768; at 2048 its 512-key blocks already skip most of the upper
triangle), hence the window `MIN_TOKENS..MAX_TOKENS`.

**RMSNorm** with one reduction in forward and its backward written out (dx = r (g - x^ mean(g x^)), g = dy w,
x^ = x r), where `F.rms_norm` on CPU runs as its composite ops (a power, a mean, two products) and autograd
walks each back: 4.7 vs 9.0 ms forward and backward at 8 x 512 x 256, 1.1 vs 2.0 ms forward alone.

**Rotary embeddings** as x cos plus two half-width `addcmul_`s, forward and backward (the rotation's
transpose), where the rotate-half form concatenates a negated half and autograd walks back each op: 2.0 vs
4.0 ms forward and backward for the 10m model's queries at 8 x 512 tokens.

Below `MIN_ELEMENTS` an autograd function's fixed cost (~30 us) outweighs what these save, so decoding
keeps PyTorch's ops. Under CPU autocast the inputs that reach these functions are fp32 (the residual
stream, and Q/K/V cast back by `Attention`), so bf16 training keeps them. Everything else (CUDA,
torch.compile, bf16 tensors, an attention mask, a KV cache) goes through PyTorch's own
`scaled_dot_product_attention`, `rms_norm` and the rotate-half form unchanged.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from codefoundry.models import native

# attention.c up to this many tokens: measured faster than PyTorch's kernels from 64 to 2048 (see above)
NATIVE_MAX_TOKENS = 2048
CHUNK = 64  # query rows per attention kernel call
MIN_TOKENS = 256  # below this a single causal call wastes too little to pay for the calls
MAX_TOKENS = 640  # from 768 queries the kernel changes its blocking and one call is faster (measured)
# Norm and rotary functions from this size: at 16 x 64 x 256 (2^18) both norms take ~125 us, and at
# 16 x 256 (decoding) the function is slower (85 vs 50 us).
MIN_ELEMENTS = 1 << 19

_forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), causal) v for q (B, H, T, d) and k, v (B, Hkv, T, d), Hkv dividing H."""
    if native_attention(q, k):
        return NativeCausal.apply(q, k, v)
    if chunked(q):
        return ChunkedCausal.apply(q, k, v, CHUNK)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])


def native_attention(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether `causal_attention` runs through attention.c for these shapes."""
    return (
        _eager_cpu(q)
        and q.dtype == k.dtype == torch.float32
        and q.shape[2] <= NATIVE_MAX_TOKENS
        and q.shape[3] % 16 == 0
        and q.shape[1] % k.shape[1] == 0
        and native.library() is not None
    )


def chunked(q: torch.Tensor) -> bool:
    """Whether `causal_attention` takes the chunked path for this query."""
    return _eager_cpu(q) and MIN_TOKENS <= q.shape[2] <= MAX_TOKENS


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2, last dim) + eps) * weight."""
    if _eager_cpu(x) and x.numel() >= MIN_ELEMENTS and weight.dtype == x.dtype:
        return RMSNormFunction.apply(x, weight, eps)
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embeddings, rotate-half convention: x cos + (-x2, x1) sin for the halves x1, x2 of the last
    dim (x (..., T, d); cos and sin broadcast to it)."""
    tables = cos.dtype == sin.dtype == x.dtype and not (cos.requires_grad or sin.requires_grad)
    if _eager_cpu(x) and x.numel() >= MIN_ELEMENTS and tables:
        return RopeFunction.apply(x, cos, sin)
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def _eager_cpu(t: torch.Tensor) -> bool:
    return (
        t.device.type == "cpu"
        and t.dtype in (torch.float32, torch.float64)
        and not torch.compiler.is_compiling()
    )


def chunk_bounds(T: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, T)) for a in range(0, T, chunk)]


@functools.lru_cache(maxsize=128)
def _diagonal_mask(a: int, b: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask for queries a..b over keys 0..b: -inf where the key comes after the query."""
    later = torch.arange(b).unsqueeze(0) > torch.arange(a, b).unsqueeze(1)
    return torch.zeros(later.shape, dtype=dtype).masked_fill_(later, float("-inf"))


def _chunk_args(i: int, a: int, b: int, dtype: torch.dtype) -> dict:
    # The first chunk is a square: the kernel's own causal flag is exact there (top-left alignment).
    return {"is_causal": True} if i == 0 else {"is_causal": False, "attn_mask": _diagonal_mask(a, b, dtype)}


class ChunkedCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, chunk: int):
        bounds = chunk_bounds(q.shape[2], chunk)
        outs, lses = [], []
        for i, (a, b) in enumerate(bounds):
            out, lse = _forward(q[:, :, a:b], k[:, :, :b], v[:, :, :b], 0.0, **_chunk_args(i, a, b, q.dtype))
            outs.append(out)
            lses.append(lse)
        # Joined as (B, T, H, d) and returned as its (B, H, T, d) view, so that the caller's
        # transpose(1, 2).reshape(B, T, H * d) is a view, not a copy. Backward reads its chunks' rows of
        # this output, so the chunks' own outputs need not be kept.
        joined = torch.cat([part.transpose(1, 2) for part in outs], dim=1).transpose(1, 2)
        ctx.bounds = bounds
        ctx.save_for_backward(q, k, v, joined, *lses)
        return joined

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, *lses = ctx.saved_tensors
        bounds = ctx.bounds
        grad_q, grad_k, grad_v = [], None, None
        # Last chunk first: it sees every key, so its key/value gradients start the sums.
        for i in reversed(range(len(bounds))):
            a, b = bounds[i]
            gq, gk, gv = _backward(
                grad[:, :, a:b], q[:, :, a:b], k[:, :, :b], v[:, :, :b], out[:, :, a:b], lses[i], 0.0,
                **_chunk_args(i, a, b, q.dtype),
            )  # fmt: skip
            grad_q.append(gq)
            if grad_k is None:
                grad_k, grad_v = gk, gv
            else:
                grad_k[:, :, :b] += gk
                grad_v[:, :, :b] += gv
        return torch.cat(grad_q[::-1], dim=2), grad_k, grad_v, None


class NativeCausal(torch.autograd.Function):
    """Causal attention through attention.c (see the module docstring): outputs (B, H, T, d) as views of
    (B, T, H, d) tensors, as ChunkedCausal's, so that the caller's reshape to (B, T, H * d) is a view."""

    @staticmethod
    def forward(ctx, q, k, v):
        q, k, v = (_unit_last(t) for t in (q, k, v))
        (B, H, T, d), Hkv = q.shape, k.shape[1]
        out, lse = q.new_empty(B, T, H, d).transpose(1, 2), q.new_empty(B, H, T)
        failed = native.library().cf_attention_forward(
            q.data_ptr(), _strides(q), k.data_ptr(), _strides(k), v.data_ptr(), _strides(v), out.data_ptr(),
            _strides(out), lse.data_ptr(), B, H, Hkv, T, d, d**-0.5, torch.get_num_threads(),
        )  # fmt: skip
        _no_memory_if(failed, q)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        grad = _unit_last(grad)
        (B, H, T, d), Hkv = q.shape, k.shape[1]
        dq = q.new_empty(B, T, H, d).transpose(1, 2)
        dk, dv = (k.new_empty(B, T, Hkv, d).transpose(1, 2) for _ in range(2))
        failed = native.library().cf_attention_backward(
            q.data_ptr(), _strides(q), k.data_ptr(), _strides(k), v.data_ptr(), _strides(v), out.data_ptr(),
            _strides(out), grad.data_ptr(), _strides(grad), lse.data_ptr(), dq.data_ptr(), _strides(dq),
            dk.data_ptr(), _strides(dk), dv.data_ptr(), _strides(dv), B, H, Hkv, T, d, d**-0.5,
            torch.get_num_threads(),
        )  # fmt: skip
        _no_memory_if(failed, q)
        return dq, dk, dv


def _no_memory_if(failed: int, q: torch.Tensor) -> None:
    if failed:
        raise MemoryError(f"causal attention: no memory for the C kernel's buffers at q {tuple(q.shape)}")


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides(t: torch.Tensor) -> native.Strides:
    return native.Strides(t.stride(0), t.stride(1), t.stride(2))


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        dim = x.shape[-1]
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(dim).add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, r)
        return torch.mul(x, r).mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight, r = ctx.saved_tensors
        normed = x * r
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed).sum(dim=tuple(range(grad.dim() - 1)))
        if not ctx.needs_input_grad[0]:
            return None, grad_weight, None
        g = grad * weight
        mean = (g * normed).sum(dim=-1, keepdim=True).div_(x.shape[-1])  # mean(g x^) per row
        return g.sub_(normed.mul_(mean)).mul_(r), grad_weight, None


class RopeFunction(torch.autograd.Function):
    """x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1) for the halves x1, x2 of the last dim; the
    tables take no gradient."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        half = x.shape[-1] // 2
        out = x * cos
        out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
        out[..., half:].addcmul_(x[..., :half], sin[..., half:])
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        half = grad.shape[-1] // 2
        grad_x = grad * cos  # then the rotation's transpose: (g2, -g1), times sin
        grad_x[..., :half].addcmul_(grad[..., half:], sin[..., half:])
        grad_x[..., half:].addcmul_(grad[..., :half], sin[..., :half], value=-1)
        return grad_x, None, None
