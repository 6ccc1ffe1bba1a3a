"""Bugs found in the session-32 review of the model code, each pinned by the test that first failed."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from codefoundry.models.config import config_for_size  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402

VOCAB = 300


def _mtp_model() -> Transformer:
    torch.manual_seed(0)
    # init_std 0.3: attention far from uniform, so attending to the wrong keys shows in the loss
    return Transformer(config_for_size("tiny", VOCAB, max_seq_len=32, mtp_depth=1, init_std=0.3)).eval()


def _mtp_reference(model: Transformer, ids, targets, hidden, mask=None) -> torch.Tensor:
    """Depth 1 by its definition: the trunk's hidden state at i and the embedding of the real token i+1
    (whatever its target says) predict target i+1, attending as the trunk attended."""
    T = ids.shape[1]
    module = model.mtp[0]
    cos, sin = model.rope_cos[: T - 1], model.rope_sin[: T - 1]
    sub_mask = None if mask is None else mask[..., : T - 1, : T - 1]
    h = module(hidden[:, : T - 1], model.embed(ids[:, 1:T]), cos, sin, mask=sub_mask)
    logits = model.lm_head(module.norm(h))
    return F.cross_entropy(logits.flatten(0, 1), targets[:, 1:].flatten(), ignore_index=-100)


@torch.no_grad()
def test_mtp_embeds_the_real_next_token_where_its_target_is_ignored():
    # An SFT-style row: no loss on the prompt's tokens. Depth 1 at the prompt's second-last position sees
    # the prompt's last token and predicts the first response token, which counts. The embedding used to
    # come from the (ignored, clamped to id 0) target instead of the token itself.
    model = _mtp_model()
    ids = torch.randint(20, VOCAB, (2, 12))
    targets = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    targets[:, :5] = -100
    out = model(ids, targets)
    expected = _mtp_reference(model, ids, targets, out.hidden)
    assert float(out.parts["mtp_1"]) == pytest.approx(float(expected), rel=1e-5)


@torch.no_grad()
def test_mtp_attends_under_the_mask_the_trunk_was_given():
    # Two examples packed in one row (block-diagonal causal mask): the MTP block must not look across.
    model = _mtp_model()
    ids = torch.randint(20, VOCAB, (1, 12))
    targets = torch.cat([ids[:, 1:], torch.full((1, 1), -100)], dim=1)
    segment = (torch.arange(12) >= 6).long()
    mask = (segment[:, None] == segment[None, :]) & torch.ones(12, 12, dtype=torch.bool).tril()
    mask = mask.view(1, 1, 12, 12)
    positions = (torch.arange(12) % 6).unsqueeze(0)
    out = model(ids, targets, positions=positions, mask=mask)
    # positions restart at 6: the reference's rotary tables are those of positions % 6
    T = 12
    module = model.mtp[0]
    cos = model.rope_cos[positions[:, : T - 1]].unsqueeze(1)
    sin = model.rope_sin[positions[:, : T - 1]].unsqueeze(1)
    h = module(out.hidden[:, : T - 1], model.embed(ids[:, 1:T]), cos, sin, mask=mask[..., : T - 1, : T - 1])
    logits = model.lm_head(module.norm(h))
    expected = F.cross_entropy(logits.flatten(0, 1), targets[:, 1:].flatten(), ignore_index=-100)
    assert float(out.parts["mtp_1"]) == pytest.approx(float(expected), rel=1e-5)


@torch.no_grad()
def test_mtp_loss_is_unchanged_for_plain_shifted_targets():
    model = _mtp_model()
    ids = torch.randint(0, VOCAB, (2, 13))
    out = model(ids[:, :-1], ids[:, 1:])
    expected = _mtp_reference(model, ids[:, :-1], ids[:, 1:], out.hidden)
    assert float(out.parts["mtp_1"]) == pytest.approx(float(expected), rel=1e-5)


def test_the_load_balancing_loss_covers_the_mtp_blocks_moe_layers():
    # An MTP module's block is an MoE block too, but only the trunk's routers were balanced: with
    # mtp_weight 0 the MTP router got no gradient at all, and nothing kept its load from collapsing.
    torch.manual_seed(0)
    cfg = config_for_size("tiny", VOCAB, max_seq_len=32, moe_experts=4, mtp_depth=1, mtp_weight=0.0)
    model = Transformer(cfg).train()
    ids = torch.randint(0, VOCAB, (2, 17))
    out = model(ids[:, :-1], ids[:, 1:])
    routers = [layer.mlp for layer in model.layers] + [module.block.mlp for module in model.mtp]
    expected = torch.stack([moe.aux_loss.detach() for moe in routers]).mean()
    assert float(out.parts["aux"]) == pytest.approx(float(expected), rel=1e-6)
    out.loss.backward()
    assert model.mtp[0].block.mlp.router.weight.grad.abs().sum() > 0
