"""Review of the pretraining data path (`train.data`): where line-level FIM cuts a document, and the
held-out texts of repository-level documents."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tokenizers")

from codefoundry.data.packing import RepoFile, encode_pieces, repo_pieces  # noqa: E402
from codefoundry.data.shards import write_shards  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.models.infill_eval import heldout_functions  # noqa: E402
from codefoundry.train.data import DataConfig, PretrainData, fim_split  # noqa: E402


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return cft.train(cft.default_corpus()[:40], vocab_size=512, out=tmp_path_factory.mktemp("tok"))


def _cuts(text: str, draws: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        prefix, middle, suffix = fim_split(text, rng, lines=True)
        assert prefix + middle + suffix == text
        out.append((len(prefix), len(prefix) + len(middle)))
    return out


def test_line_cuts_are_uniform_over_line_starts_and_the_end():
    """After a final newline the end was listed twice (as the end and as the start of an empty last
    line): with positions {0, 2, 4}, an empty suffix came 3/4 of the time instead of 5/9."""
    cuts = _cuts("a\nb\n", 6000)
    assert {b for _, b in cuts} | {a for a, _ in cuts} == {0, 2, 4}
    empty_suffix = sum(b == 4 for _, b in cuts) / len(cuts)
    assert abs(empty_suffix - 5 / 9) < 0.03, empty_suffix
    both_at_start = sum(b == 0 for _, b in cuts) / len(cuts)
    assert abs(both_at_start - 1 / 9) < 0.03, both_at_start


def test_line_cuts_follow_carriage_return_line_ends():
    """Lines end where Python's do; a file with "\\r" line ends had no line start but 0, so its middle
    was always empty or the whole file."""
    text = "x = 1\ry = 2\rz = 3\r\n"
    assert {p for cut in _cuts(text, 300) for p in cut} == {0, 6, 12, 19}
    crlf = "x = 1\r\ny = 2\r\n"
    assert {p for cut in _cuts(crlf, 300) for p in cut} == {0, 7, 14}


def test_held_out_repository_documents_give_their_files_texts(tmp_path, tok):
    """A `layout: repo` data build writes `<|repo_name|>r` `<|file_sep|>path` text ... documents; whole,
    they parse as no Python, and the final checks found no held-out function to infill."""
    files = {
        "pkg/util.py": "def double(x):\n    y = x * 2\n    return y\n",
        "pkg/main.py": "from pkg.util import double\n\n\ndef run(n):\n    total = double(n)\n    return total\n",
    }
    plain = cft.plain_text_copy(tok)
    repo = encode_pieces(plain, repo_pieces("org/demo", [RepoFile(p, t) for p, t in files.items()]))
    first = "def train_only(a):\n    return a + 1\n"
    write_shards([first, repo, "x = 1\n" * 40], tmp_path, tok, shard_tokens=1 << 20)
    data = PretrainData(DataConfig(str(tmp_path), seq_len=8, holdout=0.5, fim_rate=0.0), tok)
    assert data.val_texts() == [files["pkg/util.py"], files["pkg/main.py"], "x = 1\n" * 40]
    names = sorted(e.name for e in heldout_functions(data.val_texts(), limit=10, seed=0))
    assert names == ["0:double:1", "1:run:4"]
