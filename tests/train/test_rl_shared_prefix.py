"""The update's forward with each distinct prompt computed once (`train.rl.shared_prefix`) against the plain
forward over [prompt, response] rows: the same log-probs, entropies, values and parameter gradients, for
groups of unequal prompts and responses, a one-token prompt, an empty response, GQA, a Q/K/V bias and a
mixture of experts."""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from codefoundry.models.config import config_for_size  # noqa: E402
from codefoundry.models.transformer import Transformer  # noqa: E402
from codefoundry.train.rl.rollout import ResponseBatch, collate, response_forward  # noqa: E402
from codefoundry.train.rl.shared_prefix import distinct_prompts  # noqa: E402

VOCAB = 97


def _rows(seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Groups of 3 samples of 4 prompts (lengths 1, 9, 4, 13), responses of 0..11 tokens."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (1, 9, 4, 13)]
    lengths = [5, 11, 2, 0, 7, 7, 1, 9, 3, 10, 4, 6]
    responses = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in lengths]
    return [p for p in prompts for _ in range(3)], responses


def _plain(batch: ResponseBatch) -> ResponseBatch:
    return ResponseBatch(batch.ids, batch.index, batch.targets, batch.mask)  # no prompt lengths: plain path


def _outputs(model, batch, value_head):
    model.zero_grad()
    value_head.zero_grad()
    logp, ent, values = response_forward(
        model, batch, temperature=0.8, value_head=value_head, entropy=True, entropy_grad=True
    )
    m = batch.mask
    ((logp * m).sum() + 0.3 * (ent * m).sum() + 0.7 * (values * m).sum()).backward()
    grads = [p.grad.clone() for p in [*model.parameters(), *value_head.parameters()]]
    return logp * m, ent * m, values * m, grads


@pytest.mark.parametrize(
    "kw",
    [{}, {"qkv_bias": True, "tie_embeddings": False}, {"moe_experts": 4}],
    ids=["dense", "bias", "moe"],
)
def test_shared_prefix_forward_equals_the_plain_forward(kw):
    torch.manual_seed(0)
    model = Transformer(config_for_size("tiny", VOCAB, max_seq_len=64, init_std=0.1, **kw))
    value_head = torch.nn.Linear(model.cfg.dim, 1)
    prompts, responses = _rows()
    batch = collate(prompts, responses, device="cpu")
    assert distinct_prompts(batch.ids, batch.prompt_lens)[0] == [0, 3, 6, 9]
    shared = _outputs(model, batch, value_head)
    plain = _outputs(model, _plain(batch), value_head)
    for got, want in zip(shared[:3], plain[:3], strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    for got, want in zip(shared[3], plain[3], strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in shared[3])
    # A micro-batch of some of the rows (trimmed columns) too.
    sub = batch.rows(torch.tensor([1, 2, 4, 5, 11]))
    got = response_forward(model, sub, temperature=1.0)[0] * sub.mask
    want = response_forward(model, _plain(sub), temperature=1.0)[0] * sub.mask
    assert torch.allclose(got, want, atol=1e-5)


def test_moe_with_expert_capacity_keeps_the_plain_forward():
    # Which tokens overflow an expert depends on every token of the forward: no sharing there.
    import codefoundry.train.rl.rollout as rollout

    cfg = config_for_size("tiny", VOCAB, max_seq_len=64, moe_experts=4)
    model = Transformer(replace(cfg, moe=replace(cfg.moe, capacity_factor=1.0)))
    prompts, responses = _rows()
    assert rollout._shared_prompts(model, collate(prompts, responses, device="cpu")) is None
    dense = Transformer(config_for_size("tiny", VOCAB, max_seq_len=64))
    assert rollout._shared_prompts(dense, collate(prompts, responses, device="cpu")) is not None
    distinct = collate([[1, 2], [3, 4]], [[5], [6]], device="cpu")
    assert rollout._shared_prompts(dense, distinct) is None  # nothing to share
