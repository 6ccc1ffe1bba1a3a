"""A tiny random checkpoint with its own small tokenizer, for the post-training tests."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from codefoundry.models import checkpoint
from codefoundry.models import tokenizer as cft
from codefoundry.models.config import config_for_size
from codefoundry.models.transformer import Transformer


def tiny_checkpoint(root: Path) -> Path:
    """A seeded `tiny` model (128-token context) and a 400-token BPE trained on 15 stdlib files."""
    tok = cft.train(cft.default_corpus()[:15], vocab_size=400, out=root / "tok")
    torch.manual_seed(0)
    model = Transformer(config_for_size("tiny", tok.get_vocab_size(), max_seq_len=128))
    return checkpoint.save(model, root / "ckpt", tokenizer=root / "tok")


def fit_sequences(
    model: Transformer, seqs: list[list[int]], *, steps: int, batch: int = 16, lr: float = 3e-3
) -> None:
    """Next-token training on token sequences (right-padded, loss on real tokens only), batches drawn with a
    fixed seed: a policy that has seen the bodies it will be asked for."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    L, rng = max(map(len, seqs)), random.Random(0)
    for _ in range(steps):
        ids, targets = torch.zeros(batch, L, dtype=torch.long), torch.full((batch, L), -100)
        for i, s in enumerate(rng.sample(seqs, batch)):
            ids[i, : len(s)] = torch.tensor(s)
            targets[i, : len(s) - 1] = torch.tensor(s[1:])
        model(ids, targets).loss.backward()
        opt.step()
        opt.zero_grad()


def flag_everything(problem, completion: str) -> float:
    """A safety check (`RLConfig.safety_check="tiny_kit:flag_everything"`) that calls every completion risky."""
    return 1.0
