"""Muon for the hidden matrices, AdamW for the rest (`codefoundry pretrain --optimizer muon`).

Muon (Jordan et al. 2024; "Muon is Scalable for LLM Training", Liu et al. 2025) keeps SGD momentum per
matrix and applies, instead of the momentum itself, its nearest semi-orthogonal matrix: five quintic
Newton-Schulz iterations push every singular value of the (Nesterov) momentum towards 1. Each update then
moves every direction of the matrix by the same amount; Liu et al. measure about twice AdamW's compute
efficiency. On the 10m model here it reaches AdamW's held-out loss in a little over half the steps
(benchmarks/README.md, "Syntax-valid bodies").

Here:
- Muon takes the blocks' 2-D weights: attention, MLP and experts, MTP projections. The embedding (and a
  tied head), the norms' gains and the MoE router stay with AdamW: they are lookups or vectors, or (the
  router) a softmax whose scale must not be normalised away.
- A fused weight is orthogonalised per part: Q, K and V of `qkv` separately, gate and up of `gate_up`
  separately (the parts are different maps that share a product only for speed).
- The update is scaled by 0.2 * sqrt(max(rows, cols)) (Liu et al.), so its RMS matches AdamW's and both
  optimizers share one learning rate, one schedule and one decoupled weight decay.
- Equal-shaped blocks are orthogonalised together in one batched product, in bf16 where the device
  multiplies bf16 natively and in fp32 elsewhere (an emulated bf16 product is slower than fp32).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch import nn

# The quintic's coefficients (Jordan): the steepest slope at zero that still maps (0, 1] into ~[0.7, 1.2].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(x: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with `x`'s singular vectors, for a batch `x` (..., m, n):
    `steps` Newton-Schulz iterations in `dtype` after scaling each matrix to Frobenius norm 1 (so every
    singular value starts in (0, 1]). Returned in `dtype`."""
    a, b, c = NS_COEFFICIENTS
    wide = x.size(-2) <= x.size(-1)
    y = x.to(dtype) if wide else x.to(dtype).mT  # iterate on the Gram of the short side
    y = y.reshape(-1, *y.shape[-2:])
    y = y / y.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)
    for _ in range(steps):
        gram = y @ y.mT
        # y <- (a I + b G + c G^2) y, each product fused with its sum (fewer passes over memory)
        y = torch.baddbmm(y, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), y, beta=a)
    y = y.reshape(*x.shape[:-2], *y.shape[-2:])
    return y if wide else y.mT


class Muon(torch.optim.Optimizer):
    """Muon over 2-D parameters. A group may carry `splits`: the row counts of a fused weight's parts,
    each orthogonalised on its own."""

    def __init__(
        self,
        params: Any,
        *,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                    "ns_steps": ns_steps, "splits": None}  # fmt: skip
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                rows = p.shape[0] if p.ndim == 2 else None
                if rows is None or (group["splits"] and sum(group["splits"]) != rows):
                    raise ValueError(
                        f"Muon: a parameter of shape {tuple(p.shape)} does not fit {group['splits']}"
                    )

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        if closure is not None:
            raise ValueError("Muon.step takes no closure")
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            buckets: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                buf = state["momentum"]
                buf.lerp_(p.grad, 1 - mu)
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                p.mul_(1 - lr * group["weight_decay"])
                parts = group["splits"] or (p.shape[0],)
                for target, block in zip(p.split(parts), update.split(parts), strict=True):
                    buckets[block.shape].append((target, block))
            for shape, pairs in buckets.items():
                ortho = orthogonalize(torch.stack([b for _, b in pairs]), group["ns_steps"], self.ns_dtype)
                scale = -lr * 0.2 * math.sqrt(max(shape))
                for (target, _), o in zip(pairs, ortho.unbind(), strict=True):
                    target.add_(o.to(target.dtype), alpha=scale)


class Optimizers:
    """Several optimizers stepped as one: the interface the training loop and checkpoints use
    (`param_groups` for the schedule, `step`, `zero_grad`, `state_dict`, `load_state_dict`)."""

    def __init__(self, **optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(
                f"optimizer state holds {sorted(state)}, this run steps {sorted(self.optimizers)}"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def muon_groups(model: nn.Module) -> tuple[list[dict[str, Any]], list[nn.Parameter]]:
    """(Muon's groups, the parameters left for AdamW). A fused `qkv` splits into Q, K and V, a fused
    `gate_up` into its halves; every other block matrix is one part."""
    parts: dict[tuple[int, ...] | None, list[nn.Parameter]] = defaultdict(list)
    rest, seen = [], set()
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            leaf = f"{name}.{pname}".split(".")
            if p.ndim != 2 or leaf[-2] in ("embed", "lm_head", "router"):
                rest.append(p)
            elif leaf[-2] == "qkv":
                q, kv = model.cfg.n_heads * model.cfg.head_dim, model.cfg.n_kv_heads * model.cfg.head_dim
                parts[(q, kv, kv)].append(p)
            elif leaf[-2] == "gate_up":
                parts[(p.shape[0] // 2, p.shape[0] // 2)].append(p)
            else:
                parts[None].append(p)
    return [{"params": ps, "splits": splits} for splits, ps in parts.items()], rest
