"""A tiny random checkpoint with its own small tokenizer, for the post-training tests."""

from __future__ import annotations

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
