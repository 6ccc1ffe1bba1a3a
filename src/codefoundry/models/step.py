"""The decoding step: a forward over a few new tokens per row of a KV-cached batch (`Step`), and its
fixed-buffer form for one new token per row (`StaticStep`), which `generate`'s decoding loop runs.

Both repeat the arithmetic of `Transformer.forward` in fewer operations, with the weights in the layouts of
`decode_weights`, and are checked token for token against the model's forward in the tests.
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F

from codefoundry.models import small_gemm
from codefoundry.models.decode_weights import in_panels, step_weights
from codefoundry.models.transformer import KVCache, Transformer

__all__ = ["StaticStep", "Step", "rms_norm"]


class Step:
    """A forward over a few new tokens per row (a decoding step, or a speculative check of drafts): the
    arithmetic of `Transformer.forward`, in fewer operations (one rotary op for Q and K, no mask for a
    single unpadded token, weights in the layout CPUs read fastest, the norm weights and the residual adds
    folded into the products: `decode_weights`), because at sampling batch sizes a step costs per
    operation and per byte of weights read, not per FLOP. Checked token for token against
    `Transformer.forward` in the tests."""

    def __init__(self, model: Transformer, cache: KVCache, keys: torch.Tensor | None, *,
                 static: bool = False) -> None:  # fmt: skip
        cfg = model.cfg
        self.model, self.cache = model, cache
        self.heads, self.kv_heads, self.eps = cfg.n_heads, cfg.n_kv_heads, cfg.norm_eps
        half = cfg.head_dim // 2
        # rotate_half(x) * sin == roll(x, half) * [-sin[:half], sin[half:]]: fold the sign into the table.
        self.cos = model.rope_cos  # (max_seq_len, hd), fp32
        self.sin = torch.cat([-model.rope_sin[:, :half], model.rope_sin[:, half:]], dim=-1)
        self.half, self.dtype = half, model.embed.weight.dtype
        self.keys = keys  # (B, 1, 1, S), -inf on padding, else 0; None for an unpadded batch
        self.layers, self.head = step_weights(model, cache.k[0].shape[0])
        self.dim_eps = torch.full((1,), cfg.dim * cfg.norm_eps, device=cache.k[0].device)  # folded norms
        # One new token per row through fixed buffers (`StaticStep`), where the layout allows: fp32 on the
        # CPU, every block dense with its norms folded. `static` is the caller's promise that it keeps
        # nothing the step returns past the next call (the hidden states are a buffer then).
        self.static = (
            static
            and cache.k[0].device.type == "cpu"
            and self.dtype == torch.float32
            and all(
                s.swiglu is not None and s.attn_scale is None and s.mlp_scale is None for s in self.layers
            )
        )
        self._fixed: StaticStep | None = None

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Follow `KVCache.keep_rows`: the padding mask keeps the same rows (the weights' layout stays the
        one chosen for the batch it started with; every layout multiplies any number of rows)."""
        if self.keys is not None:
            self.keys = self.keys.index_select(0, rows)
        self._fixed = None  # its buffers have the old number of rows

    def __call__(
        self, tokens: torch.Tensor, positions: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T) at `positions` (B, T), or unpadded from cache.length on -> (logits (B, T, V),
        hidden (B, T, dim): the last block's output, as `Output.hidden`)."""
        m, cache = self.model, self.cache
        (B, T), H, Hkv, start = tokens.shape, self.heads, self.kv_heads, cache.length
        if T == 1 and self.static:
            if self._fixed is None or self._fixed.rows != B:
                self._fixed = StaticStep(self, B)
            logits, x = self._fixed(tokens.view(B), positions)
            return logits.view(B, 1, -1), x.view(B, 1, -1)
        if positions is None:
            cos, sin = self.cos[start : start + T, None], self.sin[start : start + T, None]  # (T, 1, hd)
        else:
            cos, sin = self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)  # (B, T, 1, hd)
        x = F.embedding(tokens.reshape(-1), m.embed.weight)  # (B*T, dim)
        for i, (block, layer) in enumerate(zip(m.layers, self.layers, strict=True)):
            qkv = layer.qkv(self._norm(x, layer.attn_scale)).view(B, T, H + 2 * Hkv, -1)
            # narrow, not qkv[:, :, :n]: one view op instead of one per dimension (~2 us each)
            qk = qkv.narrow(2, 0, H + Hkv)  # (B, T, H + Hkv, hd): the query heads, then the key heads
            qk = torch.addcmul(qk * cos, qk.roll(self.half, dims=-1), sin)
            if qk.dtype != self.dtype:  # the tables are fp32, as in Transformer.forward
                qk = qk.to(self.dtype)
            x = layer.out(self._attend(i, qk, qkv.narrow(2, H + Hkv, Hkv), start), x)
            h = self._norm(x, layer.mlp_scale)
            # A mixture of experts (no swiglu) runs its own module.
            x = x + block.mlp(h) if layer.swiglu is None else layer.down(layer.swiglu(h), x)
        cache.length = start + T
        return self.head(rms_norm(x, m.norm.weight, self.eps)).view(B, T, -1), x.view(B, T, -1)

    def _norm(self, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """RMSNorm by `scale`, or, where the weight is folded into the next product (scale None, see
        `decode_weights`), x / sqrt(|x|^2 + dim * eps): three kernels (norm, eps + norm^2, rsqrt) before
        the multiply, half the time of squaring, summing and adding (~10 vs ~19 us at 1 and 16 rows)."""
        if scale is not None:
            return rms_norm(x, scale, self.eps)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        return x * torch.rsqrt(torch.addcmul(self.dim_eps, norm, norm))

    def _attend(self, layer: int, qk: torch.Tensor, v_new: torch.Tensor, start: int) -> torch.Tensor:
        """Write the new keys and values at `start`, attend; qk (B, T, H + Hkv, hd), v_new (B, T, Hkv, hd)
        -> (B*T, H*hd)."""
        (B, T), H, Hkv = qk.shape[:2], self.heads, self.kv_heads
        k, v = self.cache.k[layer], self.cache.v[layer]  # (B, Hkv, capacity, hd)
        k.narrow(2, start, T).copy_(qk.narrow(2, H, Hkv).transpose(1, 2))
        v.narrow(2, start, T).copy_(v_new.transpose(1, 2))
        k, v = k.narrow(2, 0, start + T), v.narrow(2, 0, start + T)
        if T == 1:
            # One query per row sees every cached key, padding aside. SDPA's CPU kernel is ~2x faster here
            # than attention as two batched matmuls at batch 1 (the same at 16), measured on torch 2.13.
            mask = None if self.keys is None else self.keys[..., : start + 1]
        elif self.keys is not None:
            raise ValueError("Step: several new tokens per row need an unpadded batch")
        else:
            # New queries see every cached key and, among themselves, only earlier ones.
            mask = torch.ones(T, start + T, dtype=torch.bool, device=qk.device).tril(start)
        y = F.scaled_dot_product_attention(
            qk.narrow(2, 0, H).transpose(1, 2), k, v, attn_mask=mask, enable_gqa=self.kv_heads != self.heads
        )
        return y.transpose(1, 2).reshape(B * T, -1)  # (B, H, T, hd) -> (B*T, H*hd)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`F.rms_norm(x, (dim,), weight, eps)`, for fp32 as five plain ops: on CPU for a few rows, ~3% of a
    decoding step faster than the fused op, which dispatches more sub-operations (same values, tested
    through the step's token-for-token checks). Other dtypes keep the fused op, which computes in fp32."""
    if x.dtype != torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps)) * weight


class StaticStep:
    """`Step` for one new token per row, its activations in buffers made once per number of rows: every
    product, norm, rotary op and residual add writes into a fixed buffer (`out=` or in place), and every
    view of the buffers is made here, once. The same operations on the same values as `Step` (the
    tokens are checked identical in the tests), minus the ~40 view ops and ~15 allocations a layer costs
    the eager step at sampling batch sizes (a view op or an allocation costs ~1-2.5 us: see
    benchmarks/README.md for what that is worth)."""

    def __init__(self, step: Step, rows: int) -> None:
        cfg, model = step.model.cfg, step.model
        H, Hkv, hd, half, dim = step.heads, step.kv_heads, cfg.head_dim, step.half, cfg.dim
        device, dtype = step.cache.k[0].device, step.dtype
        self.step, self.rows = step, rows

        def buffer(*shape: int) -> torch.Tensor:
            return torch.empty(*shape, device=device, dtype=dtype)

        self.x, self.h, self.act = buffer(rows, dim), buffer(rows, dim), buffer(rows, cfg.ffn_dim)
        self.norm, self.scale = buffer(rows, 1), buffer(rows, 1)
        qkv = buffer(rows, (H + 2 * Hkv) * hd)
        heads = qkv.view(rows, H + 2 * Hkv, hd)
        self.qk_in = heads.narrow(1, 0, H + Hkv)  # the query heads, then the key heads, before rotation
        self.qk = buffer(rows, H + Hkv, hd)
        self.halves = [  # (a half of the rotated output, the other half of the input), lower then upper
            (self.qk.narrow(2, 0, half), self.qk_in.narrow(2, half, half)),
            (self.qk.narrow(2, half, half), self.qk_in.narrow(2, 0, half)),
        ]
        # The rotary tables' rows of this step: one per row for a padded batch, else one for all.
        n = rows if step.keys is not None else 1
        self.cos, sin = buffer(n, 1, hd), buffer(n, 1, hd)
        self.cos_rows, self.sin_rows = self.cos.view(n, hd), sin.view(n, hd)
        self.sines = [sin.narrow(2, 0, half), sin.narrow(2, half, half)]
        self.start = torch.zeros(1, dtype=torch.long, device=device)
        self.q = self.qk.narrow(1, 0, H).unsqueeze(2)  # (rows, H, 1, hd)
        self.k_new = self.qk.narrow(1, H, Hkv).unsqueeze(2)  # (rows, Hkv, 1, hd), as the cache holds them
        self.v_new = heads.narrow(1, H + Hkv, Hkv).unsqueeze(2)
        self.calls = [
            (layer.qkv.bind(self.h, qkv), layer.out.bind(self.x), layer.swiglu.bind(self.h, self.act),
             layer.down.bind(self.x))
            for layer in step.layers
        ]  # fmt: skip
        self.embed = model.embed.weight.detach()
        self.gqa = Hkv != H
        self.native = self._native(qkv, n, rows, dim)

    def _native(self, qkv: torch.Tensor, table_rows: int, rows: int, dim: int):
        """Where the products run through `small_gemm`'s panels, its elementwise calls too: the folded norm
        (one call for four ops) and the rotary op with the cache writes (one for five). (norm, rotate) bound
        to this step's buffers, or None."""
        step, cache, native = self.step, self.step.cache, small_gemm.elementwise()
        k, v = cache.k[0], cache.v[0]
        if (
            native is None
            or not in_panels(step.layers)
            or dim % 8
            or k.stride() != v.stride()
            or k.stride(3) != 1
        ):
            return None
        norm_rows, rotate_store = native
        norm = functools.partial(norm_rows, self.x.data_ptr(), self.h.data_ptr(), rows, dim,
                                 ctypes.c_float(dim * step.eps))  # fmt: skip
        hd = self.qk.shape[2]
        rotate = functools.partial(
            rotate_store, qkv.data_ptr(), rows, step.heads, step.kv_heads, hd, self.cos.data_ptr(),
            self.sin_rows.data_ptr(), hd if table_rows > 1 else 0, self.qk.data_ptr(),
            self.qk.stride(0), *k.stride()[:3],
        )  # fmt: skip
        self.qkv_buffer = qkv  # the rotate call reads it: keep it alive with the step
        return norm, rotate

    def _normalise(self) -> None:
        """h = x / sqrt(|x|^2 + dim * eps), as `Step._norm` computes it (the weight is folded)."""
        torch.linalg.vector_norm(self.x, dim=-1, keepdim=True, out=self.norm)
        torch.addcmul(self.step.dim_eps, self.norm, self.norm, out=self.scale)
        torch.mul(self.x, self.scale.rsqrt_(), out=self.h)

    def __call__(
        self, tokens: torch.Tensor, positions: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (rows,) at `positions` (rows, 1) or at cache.length -> (logits (rows, V), the last block's
        output (rows, dim): a buffer, overwritten by the next call)."""
        step, cache = self.step, self.step.cache
        start = cache.length
        if positions is None:
            positions = self.start.fill_(start)
        torch.index_select(step.cos, 0, positions.view(-1), out=self.cos_rows)
        torch.index_select(step.sin, 0, positions.view(-1), out=self.sin_rows)
        mask = None if step.keys is None else step.keys[..., : start + 1]
        torch.index_select(self.embed, 0, tokens, out=self.x)
        norm, rotate = self.native or (self._normalise, None)
        if rotate is not None and start >= cache.k[0].shape[2]:  # the C call would write past the cache
            raise IndexError(f"StaticStep: position {start} is past the KV cache's {cache.k[0].shape[2]}")
        for i, (qkv, out, swiglu, down) in enumerate(self.calls):
            k, v = cache.k[i], cache.v[i]
            norm()
            qkv()
            if rotate is not None:
                rotate(k.data_ptr(), v.data_ptr(), start)
            else:
                torch.mul(self.qk_in, self.cos, out=self.qk)
                for (rotated, other), sine in zip(self.halves, self.sines, strict=True):
                    rotated.addcmul_(other, sine)
                k.narrow(2, start, 1).copy_(self.k_new)
                v.narrow(2, start, 1).copy_(self.v_new)
            keys, values = k.narrow(2, 0, start + 1), v.narrow(2, 0, start + 1)
            y = F.scaled_dot_product_attention(self.q, keys, values, attn_mask=mask, enable_gqa=self.gqa)
            out(y.view(self.rows, -1))
            norm()
            swiglu()
            down(self.act)
        cache.length = start + 1
        return step.head(rms_norm(self.x, step.model.norm.weight, step.eps)), self.x
