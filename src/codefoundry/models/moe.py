"""The mixture-of-experts MLP: a top-k softmax router (computed in fp32), SwiGLU experts, an optional
always-on shared expert (optionally scaled per token by sigmoid(w . x), Qwen2-MoE's shared-expert gate),
the load-balancing auxiliary loss, and router statistics.

Dispatch sorts the (token, expert) assignments by expert and runs each expert once on its contiguous
slice, so the work is proportional to the tokens routed, not to n_experts * tokens. With a capacity
factor, an expert keeps its first `capacity` assignments in token order and the rest are dropped (the
token keeps its residual stream; the dropped fraction is reported). Dropless is the default. Tokens are
dropped in training mode only: in eval mode (generation, evaluation, the held-out loss) every token is
served, so a row's output does not depend on the other rows of its batch, on its padding, or on how many
tokens one forward holds (a prompt's prefill against one token a step), and the logits are those of the
dropless Hugging Face export.

Aux loss (Switch/GShard form, normalised as DeepSeek's): E * sum_e f_e * P_e, where f_e is the fraction
of the k*N assignments that chose expert e and P_e the mean router probability of e over the N tokens.
It is 1.0 for a perfectly uniform router and grows as load concentrates. Mixtral's and Qwen-MoE's (in
transformers) count f_e over the N tokens, so theirs is top_k times this; the HF export and import scale
the coefficient to match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codefoundry.models.config import MoEConfig


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up fused into one matmul."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(F.silu(gate) * up)


class MoE(nn.Module):
    def __init__(self, dim: int, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.router = nn.Linear(dim, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(dim, cfg.expert_dim) for _ in range(cfg.n_experts))
        self.shared = SwiGLU(dim, cfg.shared_expert_dim) if cfg.shared_expert_dim else None
        self.shared_gate = nn.Linear(dim, 1, bias=False) if cfg.shared_expert_gate else None
        # Filled by every forward: the aux loss (a graph tensor) and detached statistics.
        self.aux_loss: torch.Tensor | None = None
        self.stats: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, dim)
        n_tokens, k, n_exp = x.shape[0], self.cfg.top_k, self.cfg.n_experts
        # The router in fp32 even under autocast: bf16 softmax over experts flips top-k choices.
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.router.weight.float())  # (N, E)
        probs = logits.softmax(dim=-1)
        weights, chosen = probs.topk(k, dim=-1)  # (N, k)
        if self.cfg.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)

        flat_expert = chosen.reshape(-1)  # (N*k,) assignment a belongs to token a // k
        order = flat_expert.argsort(stable=True)  # stable: within an expert, earlier tokens first
        counts = torch.bincount(flat_expert, minlength=n_exp)  # (E,)
        keep = None
        if self.cfg.capacity_factor > 0 and self.training:
            capacity = max(1, int(self.cfg.capacity_factor * n_tokens * k / n_exp))
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(order.numel(), device=x.device) - starts.repeat_interleave(counts)
            keep = rank < capacity  # in sorted order
        token_of = order // k  # (N*k,) sorted by expert
        gate = weights.reshape(-1)[order].to(x.dtype)

        out = torch.zeros_like(x)
        bounds = torch.cumsum(counts, 0).tolist()
        start = 0
        for e, end in enumerate(bounds):
            if end > start:
                idx = token_of[start:end]
                g = gate[start:end]
                if keep is not None:
                    kept = keep[start:end]
                    idx, g = idx[kept], g[kept]
                if idx.numel():
                    y = self.experts[e](x.index_select(0, idx)) * g.unsqueeze(-1)
                    out.index_add_(0, idx, y.to(out.dtype))
            start = end
        if self.shared is not None:
            shared = self.shared(x)  # (N, dim)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared  # (N, 1) broadcast over dim
            out = out + shared

        load = counts.float() / max(1, n_tokens * k)  # f_e
        self.aux_loss = n_exp * (load.detach() * probs.mean(dim=0)).sum()
        dropped = (1 - keep.float().mean()) if keep is not None else torch.zeros((), device=x.device)
        self.stats = {"load": load.detach(), "dropped": dropped.detach()}
        return out.reshape(shape)
