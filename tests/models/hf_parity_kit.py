"""Shared by the HF parity tests: token ids of a tiny vocabulary, and the logits' largest difference."""

import torch

from codefoundry.models.transformer import Transformer

VOCAB = 96


def ids(seed: int = 1, shape=(2, 12)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def max_diff(ours: Transformer, theirs) -> float:
    x = ids()
    with torch.no_grad():
        expected = theirs(x).logits
        assert expected.abs().max() > 1.0  # not a degenerate near-zero comparison
        return (ours(x).logits - expected).abs().max().item()
