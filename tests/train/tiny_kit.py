"""A tiny random checkpoint with its own small tokenizer, for the post-training tests."""

from __future__ import annotations

import random
from dataclasses import replace
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


def fine_tuned_policy(out: Path, problems, train, *, steps: int, **config_changes) -> Path:
    """A `tiny` policy (with `config_changes`) and a 300-token BPE trained on `problems`' prompts and
    bodies, fine-tuned for `steps` (batches of 16 drawn with a fixed seed, loss on real tokens only) on
    `train`'s prompts and canonical bodies, saved in `out`: sampling at temperature 1 passes some of the
    time and fails some of the time."""
    tok = cft.train_texts([p.prompt + p.canonical_solution for p in problems], vocab_size=300, out=out)
    eot = tok.token_to_id(cft.EOT)
    # Prompt and body tokenized apart, as at sampling time (the prompt's last "\n" stays its own token).
    seqs = [tok.encode(p.prompt).ids + tok.encode(p.canonical_solution).ids + [eot] for p in train]
    torch.manual_seed(0)
    model = Transformer(
        replace(config_for_size("tiny", tok.get_vocab_size(), max_seq_len=96), **config_changes)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    L, rng = max(map(len, seqs)), random.Random(0)
    for _ in range(steps):
        ids, targets = torch.zeros(16, L, dtype=torch.long), torch.full((16, L), -100)
        for i, s in enumerate(rng.sample(seqs, 16)):
            ids[i, : len(s)] = torch.tensor(s)
            targets[i, : len(s) - 1] = torch.tensor(s[1:])
        model(ids, targets).loss.backward()
        opt.step()
        opt.zero_grad()
    checkpoint.save(model, out, tokenizer=out)
    return out


def flag_everything(problem, completion: str) -> float:
    """A safety check (`RLConfig.safety_check="tiny_kit:flag_everything"`) that calls every completion risky."""
    return 1.0
