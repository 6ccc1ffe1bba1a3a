"""`metrics.flops_per_token` against torch's own count of the matrix products a training step runs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from codefoundry.models.config import ModelConfig, MoEConfig
from codefoundry.models.transformer import Transformer
from codefoundry.train.metrics import flops_per_token

V, D, L, T = 512, 64, 2, 64


def _model(**changes) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=V, dim=D, n_layers=L, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=T, **changes
    )
    return Transformer(cfg)


def _counted_per_token(model: Transformer) -> float:
    """FLOPs torch counts for one forward + backward with logits materialised (the head an nn.Linear)."""
    ids = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    with FlopCounterMode(display=False) as counter:
        model(ids, ids).loss.backward()
    return counter.get_total_flops() / ids.numel()


def _not_products(model: Transformer) -> float:
    """What the formula counts that the counter does not see here: attention's scores and values (the CPU
    path runs them in our C kernel, outside torch's operators) and the norms' weights (elementwise)."""
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    return 12.0 * model.cfg.n_layers * T * D + 6.0 * norms


@pytest.mark.parametrize(
    "changes", [{}, {"tie_embeddings": False}, {"moe": MoEConfig(n_experts=4, top_k=2, expert_dim=96)}]
)
def test_every_product_a_step_runs_is_counted_the_output_head_included(changes):
    model = _model(**changes)
    # The old count (6 x non-embedding parameters) left out a tied head: 6 V d a token, a quarter here.
    assert flops_per_token(model, T) - _not_products(model) == _counted_per_token(model)


def test_a_tied_head_costs_what_an_untied_one_does():
    assert flops_per_token(_model(), T) == flops_per_token(_model(tie_embeddings=False), T)


def test_each_mtp_depth_adds_a_block_a_projection_and_a_pass_through_the_shared_head():
    base, mtp = _model(), _model(mtp_depth=2)
    module = sum(p.numel() for p in mtp.mtp[0].parameters())
    per_depth = 6.0 * (module + V * D) + 12.0 * T * D
    assert flops_per_token(mtp, T) == flops_per_token(base, T) + 2 * per_depth
