"""The update's forward with each distinct prompt computed once: the G rows of a GRPO group share their
prompt, and a plain forward over [prompt, response] rows computes it G times, forward and backward.

The rows are split at the prompt's last token: the prefix (the prompt but its last token) of each distinct
prompt is one sequence, and each row's suffix (the prompt's last token, then the response but its last
token) is another; suffix token j sits at position p_b - 1 + j, whose output predicts response token j.
Per layer the norms, projections and MLP run once over all prefix and suffix tokens together; attention
is causal within each prefix, and each suffix attends to its own prefix's keys and values (shared, not
recomputed) and causally to itself. Same arithmetic as `response_forward`'s plain path, so the same
log-probs up to float rounding (tested), and gradients from every row of a group flow into the one prefix.

With 4 prompts of ~32 tokens x 8 samples of up to 64 tokens (the RL benchmark's step) the update's forward
and backward take ~35% less time; the longer the prompts and the larger the groups, the more it saves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from codefoundry.models.transformer import Transformer, apply_rope

__all__ = ["distinct_prompts", "shared_prefix_hidden"]


def distinct_prompts(ids: torch.Tensor, prompt_lens: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """(first row of each distinct prompt, each row's prompt number (B,)); rows (B, L) start with their
    prompt of `prompt_lens[b]` tokens."""
    seen: dict[tuple[int, ...], int] = {}
    firsts, which = [], []
    for b, (row, n) in enumerate(zip(ids.tolist(), prompt_lens.tolist(), strict=True)):
        key = tuple(row[:n])
        if key not in seen:
            seen[key] = len(firsts)
            firsts.append(b)
        which.append(seen[key])
    return firsts, torch.tensor(which, dtype=torch.long, device=ids.device)


def shared_prefix_hidden(
    model: Transformer, ids: torch.Tensor, prompt_lens: torch.Tensor, index: torch.Tensor,
    firsts: list[int], which: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """The last block's output at each row's response positions `index` (B, R) -> (B, R, dim), as
    `response_forward` gathers it from a plain forward; `firsts`/`which` from `distinct_prompts`. Every
    prompt length must be at most ids.shape[1]."""
    cfg, device = model.cfg, ids.device
    H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    (B, R), U = index.shape, len(firsts)
    first = torch.tensor(firsts, dtype=torch.long, device=device)
    prefix_lens = prompt_lens.index_select(0, first) - 1  # (U,) tokens before each prompt's last one
    Lp = max(1, int(prefix_lens.max()))
    prefix = ids.index_select(0, first)[:, :Lp]  # (U, Lp): past a prefix's end, its prompt or padding
    suffix = ids.gather(1, index)  # (B, R): the inputs whose outputs predict the response tokens
    # Suffix query j of row b sees prefix keys before its prompt's last token, and suffix keys up to j.
    # Padding keys and queries only ever meet padding (masked later) or a causal past that is real.
    row_prefix = prefix_lens.index_select(0, which)  # (B,)
    sees_prefix = torch.arange(Lp, device=device)[None, :] < row_prefix[:, None]  # (B, Lp)
    causal = torch.ones(R, R, dtype=torch.bool, device=device).tril()
    sees = torch.cat([sees_prefix[:, None, :].expand(B, R, Lp), causal[None].expand(B, R, R)], dim=-1)
    mask = torch.zeros(B, 1, R, Lp + R, dtype=model.embed.weight.dtype, device=device)
    mask.masked_fill_(~sees.unsqueeze(1), float("-inf"))  # additive: same output, ~5% faster on CPU
    positions = torch.cat([torch.arange(Lp, device=device).repeat(U), index.reshape(-1)])
    cos, sin = model.rope_cos[positions][:, None], model.rope_sin[positions][:, None]  # (N, 1, hd)
    n_prefix = U * Lp
    x = model.embed(torch.cat([prefix.reshape(-1), suffix.reshape(-1)]))  # (N, dim)
    gqa = Hkv != H
    for layer in model.layers:
        attn = layer.attn
        q, k, v = attn.qkv(layer.attn_norm(x)).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
        v = v.view(-1, Hkv, hd)
        q = apply_rope(q.view(-1, H, hd), cos, sin).to(v.dtype)
        k = apply_rope(k.view(-1, Hkv, hd), cos, sin).to(v.dtype)
        qp, kp, vp = (t[:n_prefix].view(U, Lp, -1, hd).transpose(1, 2) for t in (q, k, v))
        qs, ks, vs = (t[n_prefix:].view(B, R, -1, hd).transpose(1, 2) for t in (q, k, v))
        yp = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=gqa)  # (U, H, Lp, hd)
        keys = torch.cat([kp.index_select(0, which), ks], dim=2)  # (B, Hkv, Lp + R, hd)
        values = torch.cat([vp.index_select(0, which), vs], dim=2)
        ys = F.scaled_dot_product_attention(qs, keys, values, attn_mask=mask, enable_gqa=gqa)
        y = torch.cat(
            [yp.transpose(1, 2).reshape(n_prefix, H * hd), ys.transpose(1, 2).reshape(B * R, H * hd)]
        )
        x = x + attn.out(y)
        x = x + layer.mlp(layer.mlp_norm(x))
    return x[n_prefix:].view(B, R, -1)
