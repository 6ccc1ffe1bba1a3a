"""The decoder: a Llama/Qwen2-style transformer with optional mixture-of-experts MLPs and
DeepSeek-V3-style multi-token-prediction (MTP) modules.

Pre-norm blocks: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x)). Attention is grouped-query with rotary
embeddings in the rotate-half convention that Hugging Face Llama/Qwen2 checkpoints use, so weights map
one to one (the fused Q/K/V and gate/up projections are split on export). Attention runs through
`scaled_dot_product_attention`.

MTP (DeepSeek-V3, section 2.2): module k (1..D) takes the previous depth's hidden state at position i and
the embedding of token i+k, normalises both, concatenates, projects back to `dim`, runs one transformer
block, and predicts token i+k+1 through the shared output head. The MTP loss is
mtp_weight * mean_k CE_k. At inference the modules draft tokens for self-speculative decoding.

KV cache: `KVCache` holds preallocated K/V per layer; a forward with a cache writes the new positions at
`cache.length` and attends over everything before them. Rows of a batch may start at different offsets
(left padding); the caller passes `positions` and the key mask (see `codefoundry.models.generate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from codefoundry.models.config import ModelConfig
from codefoundry.models.cpu_ops import causal_attention, rms_norm, rope
from codefoundry.models.fused_ce import IGNORE, linear_cross_entropy
from codefoundry.models.moe import MoE, SwiGLU


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rope_tables(cfg: ModelConfig, length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (length, head_dim), in fp32; the two halves of head_dim share frequencies. Every
    path that rotates (the forward, the KV-cache decode, the native decode step) reads these tables, so a
    scaling applied here applies everywhere."""
    pos_freqs = cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim)
    inv_freq, scale, scaling = 1.0 / pos_freqs, 1.0, cfg.rope_scaling  # inv_freq: (hd/2,)
    if scaling is not None and scaling["rope_type"] == "yarn":
        inv_freq, scale = yarn_inv_freq(pos_freqs, scaling, cfg.rope_theta), scaling["attention_factor"]
    elif scaling is not None:
        inv_freq = scaled_inv_freq(inv_freq, scaling)
    angles = torch.outer(torch.arange(length, device=device).float(), inv_freq)  # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hd)
    if scale == 1.0:
        return angles.cos(), angles.sin()
    return angles.cos() * scale, angles.sin() * scale


def scaled_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """`inv_freq` (hd/2,) stretched for contexts past the trained one (`ModelConfig.rope_scaling`).

    linear: every position divided by `factor`. llama3 (Llama 3.1): only the slow bands are stretched.
    A band that turned fewer than low_freq_factor times over the trained context (wavelength longer than
    original_max / low_freq_factor) is divided by `factor`; one that turned more than high_freq_factor
    times (wavelength shorter than original_max / high_freq_factor) already saw every angle and is kept;
    in between, smooth = (original_max / wavelength - low) / (high - low) blends the two, so the
    frequencies stay continuous across the bands. (yarn: `yarn_inv_freq`.)
    """
    factor = scaling["factor"]
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    wavelength = 2 * math.pi / inv_freq
    # Clamped, smooth is 0 exactly where wavelength >= original_max / low and 1 where <= original_max / high.
    smooth = ((scaling["original_max_position_embeddings"] / wavelength - low) / (high - low)).clamp(0, 1)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def yarn_inv_freq(pos_freqs: torch.Tensor, scaling: dict, theta: float) -> torch.Tensor:
    """YaRN's frequencies (Peng et al. 2023, "YaRN", section 3.2) from the wavelengths over 2 pi,
    `pos_freqs` (hd/2,) = theta ** (2i / hd). Band i turns original_max / (2 pi pos_freqs[i]) times over
    the trained context; the band index at which that count is r is
    d(r) = hd * ln(original_max / (2 pi r)) / (2 ln theta). Bands below d(beta_fast) (more than beta_fast
    turns) keep their frequency, bands above d(beta_slow) (fewer than beta_slow turns) are divided by
    `factor`, and a linear ramp over the band index blends the two in between. `truncate` rounds the two
    ends outward to whole bands. The cos/sin scale (attention_factor) is applied by `rope_tables`.
    Written as transformers computes it (the same fp32 operations), so the tables agree bit for bit."""
    half = pos_freqs.shape[0]
    dim, original = 2 * half, scaling["original_max_position_embeddings"]

    def band(turns: float) -> float:
        return dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = band(scaling["beta_fast"]), band(scaling["beta_slow"])
    if scaling["truncate"]:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a ramp of no width would divide by zero
    ramp = ((torch.arange(half, dtype=torch.float32) - low) / (high - low)).clamp(0, 1).to(pos_freqs.device)
    keep = 1 - ramp  # 1 where a band is kept as it is, 0 where it is divided by factor
    return 1.0 / (scaling["factor"] * pos_freqs) * (1 - keep) + 1.0 / pos_freqs * keep


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, hd); cos/sin broadcast as (T, hd) or (B, 1, T, hd)
    return rope(x, cos, sin)


@dataclass
class KVCache:
    """Preallocated keys and values for every layer (and every MTP block): (B, n_kv, max_len, hd)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0  # positions filled so far (the same for every row; padding is masked, not skipped)

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, *, layers: int, device, dtype) -> KVCache:
        shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        return cls(
            [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)],
            [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)],
        )

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only batch rows `rows`, renumbered 0, 1, ... in that order; row rows[i] must be i or a row
        at or past len(rows) (the order `generate` drops finished rows in: the last rows fill the holes).
        Each moved row's filled positions are copied down in place and every tensor becomes a view of its
        first len(rows) rows, so nothing is allocated."""
        n_rows = self.k[0].shape[0]
        if not rows or len(set(rows)) != len(rows) or any(not (r == i or r >= len(rows)) or r >= n_rows
                                                          for i, r in enumerate(rows)):  # fmt: skip
            raise ValueError(
                f"KVCache.keep_rows: rows must be distinct rows of the {n_rows}, rows[i] being i or "
                f">= {len(rows)}; got {rows}"
            )
        n = self.length
        for tensors in (self.k, self.v):
            for i, t in enumerate(tensors):
                for to, row in enumerate(rows):
                    if row != to:
                        t[to, :, :n].copy_(t[row, :, :n])
                tensors[i] = t[: len(rows)]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=cfg.qkv_bias)
        self.out = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None, layer: int, mask: torch.Tensor | None):
        B, T, _ = x.shape
        qkv = self.qkv(x)
        if qkv.dtype != x.dtype and x.device.type == "cpu":
            # CPU autocast: the products run in bf16, attention in fp32 (see cpu_ops: the C kernel is
            # fp32, and PyTorch's bf16 CPU flash kernel was the slower of the two).
            qkv = qkv.to(x.dtype)
        q, k, v = qkv.split([self.n_heads * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], dim=-1)
        q = q.view(B, T, self.n_heads, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin).to(v.dtype), apply_rope(k, cos, sin).to(v.dtype)
        causal = mask is None
        if cache is not None:
            start = cache.length
            cache.k[layer][:, :, start : start + T] = k
            cache.v[layer][:, :, start : start + T] = v
            k, v = cache.k[layer][:, :, : start + T], cache.v[layer][:, :, : start + T]
            if mask is None and start > 0:
                # New queries see every cached key and, among themselves, only earlier ones.
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
            causal = mask is None and T > 1
        if causal and cache is None:
            y = causal_attention(q, k, v)  # (B, H, T, hd)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=self.n_kv != self.n_heads
            )
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MoE(cfg.dim, cfg.moe) if cfg.moe else SwiGLU(cfg.dim, cfg.ffn_dim)

    def forward(self, x, cos, sin, cache=None, layer=0, mask=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer, mask)
        return x + self.mlp(self.mlp_norm(x))


class MTPModule(nn.Module):
    """One DeepSeek-V3 MTP depth: proj([norm(h_prev); norm(emb(next token))]) -> block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.hidden_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.embed_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.proj = nn.Linear(2 * cfg.dim, cfg.dim, bias=False)
        self.block = Block(cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)  # before the shared output head

    def forward(self, h_prev, emb_next, cos, sin, cache=None, layer=0, mask=None):
        x = self.proj(torch.cat([self.hidden_norm(h_prev), self.embed_norm(emb_next)], dim=-1))
        # Under autocast the projection comes out in bf16: the residual stream stays in the trunk's dtype.
        return self.block(x.to(h_prev.dtype), cos, sin, cache, layer, mask)


@dataclass
class Output:
    logits: torch.Tensor | None  # (B, T, V); None when only the loss was asked for
    hidden: torch.Tensor  # (B, T, dim): the last block's output, before the final norm (MTP's input)
    loss: torch.Tensor | None = None  # the total training loss
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # detached: ntp, mtp, mtp_k, aux, ...


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.mtp = nn.ModuleList(MTPModule(cfg) for _ in range(cfg.mtp_depth))
        cos, sin = rope_tables(cfg, cfg.max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        # GPT-2/nanoGPT: residual output projections scaled by 1/sqrt(2 * depth) at init.
        for name, p in self.named_parameters():
            if name.endswith(("out.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def num_params(self, *, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.weight.numel()
        return n

    def rope(self, positions: torch.Tensor | None, start: int, T: int):
        """cos/sin for `positions` ((B, T) absolute positions) or for start..start+T."""
        if positions is None:
            if start + T > self.rope_cos.shape[0]:
                raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
            return self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        # Past the table, indexing raised a bare IndexError, and a negative position silently read the
        # table from its end. Checked on the CPU only: on a GPU the check would wait for the device at every
        # decoding step (there an index past the table is a device assert), and under compile it would be a
        # data-dependent branch.
        n = self.rope_cos.shape[0]
        on_cpu = positions.device.type == "cpu" and not torch.compiler.is_compiling()
        if on_cpu and bool(((positions < 0) | (positions >= n)).any()):
            raise ValueError(
                f"positions must lie in [0, max_seq_len={self.cfg.max_seq_len}), got "
                f"{int(positions.min())}..{int(positions.max())}"
            )
        return self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)  # (B, 1, T, hd)

    def forward(
        self,
        ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        logits: bool = True,
    ) -> Output:
        """ids: (B, T). With `targets` ((B, T), -100 = ignore) the output carries the training loss;
        `logits=False` skips the logits (the loss then goes through the fused head, see `head_loss`).

        `mask` (bool, (B, 1, T, S), True = attend) and `positions` are for padded batches with a cache;
        without them attention is causal from position `cache.length` (or 0).
        """
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        cos, sin = self.rope(positions, start, T)
        x = self.embed(ids)  # (B, T, dim)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, mask)
        if cache is not None:
            cache.length += T
        h = self.norm(x) if logits or targets is not None else None
        out = Output(logits=self.lm_head(h) if logits else None, hidden=x)
        if targets is not None:
            self._loss(out, h, x, ids, targets, cos, sin, mask)
        return out

    def head_loss(
        self, h: torch.Tensor, targets: torch.Tensor, *, logits: torch.Tensor | None = None, reduction="mean"
    ) -> torch.Tensor:
        """Cross-entropy (fp32; mean over counted targets, or their sum) of the output head on `h` (final
        norm already applied, (B, T, dim)) against `targets` ((B, T), -100 = ignore). Without `logits`
        already computed, through the fused head + loss, which never stores them (`models.fused_ce`).

        With no counted target (an SFT row all prompt, an MTP depth past a short example's last target)
        the mean is 0 with a zero gradient: F.cross_entropy's mean (and transformers' loss) is 0/0 = NaN
        there, and one such batch made the whole step's loss and weights NaN."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"Transformer.head_loss: reduction must be 'mean' or 'sum', not {reduction!r}")
        if logits is not None:
            total = F.cross_entropy(
                logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
            )
        else:
            total = linear_cross_entropy(
                h.flatten(0, 1), self.lm_head.weight, targets.flatten(), reduction="sum"
            )
        if reduction == "sum":
            return total
        return total / (targets != IGNORE).sum().clamp_min(1)  # a tensor: no host-device sync

    def _loss(self, out: Output, h, x, ids, targets, cos, sin, mask) -> None:
        ntp = self.head_loss(h, targets, logits=out.logits)
        total, parts = ntp, {"ntp": ntp.detach()}
        ran = 0  # MTP modules run by this forward (a sequence of T tokens runs up to T - 1)
        if self.mtp:
            mtp = self._mtp_loss(x, ids, targets, cos, sin, mask, parts)
            total = total + self.cfg.mtp_weight * mtp
            parts["mtp"] = mtp.detach()
            ran = min(len(self.mtp), ids.shape[1] - 1)
        if self.cfg.moe:
            # Every MoE layer this forward ran is balanced, the MTP blocks' included: left out, their
            # routers had no balancing signal at all.
            moes = [layer.mlp for layer in self.layers] + [module.block.mlp for module in self.mtp[:ran]]
            aux = torch.stack([moe.aux_loss for moe in moes]).mean()
            total = total + self.cfg.moe.aux_loss_coef * aux
            parts["aux"] = aux.detach()
        out.loss, out.parts = total, parts

    def _mtp_loss(self, x, ids, targets, cos, sin, mask, parts) -> torch.Tensor:
        # targets[:, i] is token i+1. Depth k pairs hidden i with the embedding of token i+k (= ids[:, i+k])
        # and predicts token i+k+1 (= targets[:, i+k]); the last k positions have no target. The embedding
        # comes from ids, not targets: an ignored target (a prompt's token in SFT) is still a real token,
        # and the first counted prediction after it needs it (clamped to id 0 it was another token).
        T = ids.shape[1]
        h, losses = x, []
        for k, module in enumerate(self.mtp, start=1):
            if T - k <= 0:
                break
            nxt = ids[:, k:T]  # (B, T-k)
            # cos/sin are (T, hd) or (B, 1, T, hd), mask (B, 1, T, T): keep the first T-k positions. A
            # packed batch's mask keeps each MTP block inside its example, as it keeps the trunk.
            sub = None if mask is None else mask[..., : T - k, : T - k]
            h = module(h[:, : T - k], self.embed(nxt), cos[..., : T - k, :], sin[..., : T - k, :], mask=sub)
            ce = self.head_loss(module.norm(h), targets[:, k:])
            parts[f"mtp_{k}"] = ce.detach()
            losses.append(ce)
        return torch.stack(losses).mean() if losses else torch.zeros((), device=ids.device)

    def router_stats(self) -> dict[str, float]:
        """Mean over MoE layers of the last forward's router statistics (empty for a dense model)."""
        if not self.cfg.moe:
            return {}
        loads = torch.stack([layer.mlp.stats["load"] for layer in self.layers])  # (L, E)
        dropped = torch.stack([layer.mlp.stats["dropped"] for layer in self.layers]).mean()
        n_exp = loads.shape[1]
        return {
            "expert_load_max": float(loads.max(dim=1).values.mean() * n_exp),  # 1.0 = perfectly balanced
            "expert_load_min": float(loads.min(dim=1).values.mean() * n_exp),
            "dropped_tokens": float(dropped),
        }
