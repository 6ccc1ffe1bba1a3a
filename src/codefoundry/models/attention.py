"""Causal self-attention, with the CPU kernel called in query chunks where that skips work it would waste.

PyTorch's CPU flash-attention kernel (torch 2.13) walks the keys in blocks of 512 and, when causal, stops
after the block that holds the diagonal, but computes that block whole and masks the part above the
diagonal afterwards. Up to 512 keys the causal kernel therefore does the work of the full square. Split
into query chunks of `CHUNK` rows, chunk i (queries a..b) attends to keys 0..b only, with an additive mask
on its diagonal square: about (n + 1) / 2n of the square for n chunks. Forward and backward call the
kernel's own ops (`_scaled_dot_product_flash_attention_for_cpu` and its backward), so the arithmetic per
element is the kernel's; outputs agree with one causal call to within float rounding (tested).

Measured (`benchmarks/attention_chunks.py`, the 10m model's heads, 4096 tokens a batch, 2 threads, 2-3
runs): in chunks of 64, forward and backward run 1.17x faster at 256 tokens, 1.16-1.49x at 384, 1.21-1.40x
at 512 and 1.07-1.15x at 640. From 768 tokens the kernel takes 256 queries a block and one call is faster
(0.87-0.9x at 768; at 2048 its 512-key blocks already skip most of the upper triangle), hence the window
`MIN_TOKENS..MAX_TOKENS`. Everything else (CUDA, torch.compile, autocast, bf16, a mask, a KV cache) goes
through `scaled_dot_product_attention` unchanged.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

CHUNK = 64  # query rows per kernel call
MIN_TOKENS = 256  # below this a single causal call wastes too little to pay for the calls
MAX_TOKENS = 640  # from 768 queries the kernel changes its blocking and one call is faster (measured)

_forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), causal) v for q (B, H, T, d) and k, v (B, Hkv, T, d), Hkv dividing H."""
    if chunked(q):
        return ChunkedCausal.apply(q, k, v, CHUNK)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])


def chunked(q: torch.Tensor) -> bool:
    """Whether `causal_attention` takes the chunked path for this query."""
    return (
        q.device.type == "cpu"
        and MIN_TOKENS <= q.shape[2] <= MAX_TOKENS
        and q.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
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
        ctx.bounds = bounds
        ctx.save_for_backward(q, k, v, *outs, *lses)
        # Joined as (B, T, H, d) and returned as its (B, H, T, d) view, so that the caller's
        # transpose(1, 2).reshape(B, T, H * d) is a view, not a copy.
        return torch.cat([out.transpose(1, 2) for out in outs], dim=1).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, *saved = ctx.saved_tensors
        bounds = ctx.bounds
        outs, lses = saved[: len(bounds)], saved[len(bounds) :]
        grad_q, grad_k, grad_v = [], None, None
        # Last chunk first: it sees every key, so its key/value gradients start the sums.
        for i in reversed(range(len(bounds))):
            a, b = bounds[i]
            gq, gk, gv = _backward(
                grad[:, :, a:b], q[:, :, a:b], k[:, :, :b], v[:, :, :b], outs[i], lses[i], 0.0,
                **_chunk_args(i, a, b, q.dtype),
            )  # fmt: skip
            grad_q.append(gq)
            if grad_k is None:
                grad_k, grad_v = gk, gv
            else:
                grad_k[:, :, :b] += gk
                grad_v[:, :, :b] += gv
        return torch.cat(grad_q[::-1], dim=2), grad_k, grad_v, None
