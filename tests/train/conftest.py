"""Fixtures the pretraining tests share: a small corpus of standard-library modules and a byte-level BPE
tokenizer trained on it (module-scoped: built once per test file that uses them)."""

import shutil
from pathlib import Path

import pytest

CORPUS = ("textwrap", "bisect", "heapq", "functools", "string", "fnmatch", "shlex", "glob", "colorsys")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from codefoundry.models import tokenizer as cft

    root = tmp_path_factory.mktemp("corpus")
    by_stem = {p.stem: p for p in cft.default_corpus() if p.parent.name.startswith("python")}
    for stem in CORPUS:
        shutil.copyfile(by_stem[stem], root / f"{stem}.py")
    return root


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory) -> Path:
    from codefoundry.models import tokenizer as cft

    out = tmp_path_factory.mktemp("tok")
    cft.train(sorted(corpus.iterdir()), vocab_size=512, out=out)
    return out
