"""Review s36: a training window that starts inside a file path longer than LOOK_BACK tokens. The look-back
found no marker and called the path's tail file text, which FIM then rearranged with the file's text."""

from __future__ import annotations

import pytest

pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

from codefoundry.data.packing import RepoFile, encode_pieces, repo_pieces  # noqa: E402
from codefoundry.data.shards import write_shards  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.models.vocab_bytes import token_bytes  # noqa: E402
from codefoundry.train.data import DataConfig, PretrainData, fim_sentinels  # noqa: E402
from codefoundry.train.repo_sections import LOOK_BACK, RepoSections  # noqa: E402


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return cft.train(cft.default_corpus()[:40], vocab_size=512, out=tmp_path_factory.mktemp("tok"))


def _path(r: int, i: int) -> str:
    # Deep enough to be several times LOOK_BACK tokens; "seg" appears in no file's text.
    return "src/" + "/".join(f"seg{r}x{i}x{k}qz" for k in range(80)) + f"/mod_{r}_{i}.py"


def _text(r: int, i: int) -> str:
    return f"def f_{r}_{i}(x, y):\n    total = x * {i + 1} + y\n    return total - {r}\n"


REPOS = {f"org/r{r}": [RepoFile(_path(r, i), _text(r, i)) for i in range(3)] for r in range(6)}
PATHS = [f.path for files in REPOS.values() for f in files]
TEXTS = [f.text.encode() for files in REPOS.values() for f in files]


def _stream(tok, name: str, files: list[RepoFile]) -> list[int]:
    return list(encode_pieces(cft.plain_text_copy(tok), repo_pieces(name, files)))


def test_a_window_deep_in_a_long_path_keeps_the_path_as_a_header(tok):
    sections, table = RepoSections(tok, tok.token_to_id(cft.EOT)), token_bytes(tok)
    ids = _stream(tok, "org/r0", REPOS["org/r0"][:1])
    file_sep = ids.index(tok.token_to_id(cft.FILE_SEP))
    path_end = next(k for k in range(file_sep, len(ids)) if b"\n" in table[ids[k]])  # the header's last
    assert path_end - file_sep > 2 * LOOK_BACK  # the premise: a path far longer than the look-back
    for start in range(file_sep + 1, path_end + 1, 37):
        before = torch.tensor(ids[max(0, start - LOOK_BACK) : start]).numpy()
        assert sections.in_header(before), start - file_sep
        (header, body), *_ = sections.split(torch.tensor(ids[start:]).numpy(), True)
        assert b"".join(table[t] for t in header).endswith(b"mod_0_0.py\n")
        assert b"".join(table[t] for t in body) == TEXTS[0][: len(b"".join(table[t] for t in body))]
    # right after the path line: the file's text, as before
    after = torch.tensor(ids[path_end + 1 - LOOK_BACK : path_end + 1]).numpy()
    assert not sections.in_header(after)


def test_a_window_near_the_stream_start_is_decided_by_what_it_sees(tok):
    sections = RepoSections(tok, tok.token_to_id(cft.EOT))
    text = cft.plain_text_copy(tok).encode("x = 1 " * 10).ids
    assert not sections.in_header(torch.tensor(text).numpy())  # the stream's start: no line is open
    assert not sections.in_header(torch.tensor([], dtype=torch.int64).numpy())


@pytest.fixture(scope="module")
def shards(tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("repo")
    plain = cft.plain_text_copy(tok)
    write_shards(
        [encode_pieces(plain, repo_pieces(name, files)) for name, files in REPOS.items()], out, tok,
        shard_tokens=1 << 20,
    )  # fmt: skip
    return out


def test_fim_never_rearranges_the_tail_of_a_long_path(tok, shards):
    """With fim_rate 1 every file's text is a FIM example: each example's text must be one file's text,
    never a path's tail, also when the window starts more than LOOK_BACK tokens into the path."""
    d = PretrainData(DataConfig(str(shards), seq_len=128, holdout=0.0, fim_rate=1.0), tok)
    table, (pre, mid, suf) = token_bytes(tok), fim_sentinels(tok)
    eot, markers = tok.token_to_id(cft.EOT), {tok.token_to_id(cft.FILE_SEP), tok.token_to_id(cft.REPO_NAME)}
    deep_in_path = n_fim = 0
    for step in range(16):
        x, y = d.batch(step, 0, 8)
        for row in torch.cat([x, y[:, -1:]], dim=1).tolist():
            for i in (k for k, t in enumerate(row) if t == pre and mid in row[k:]):
                i_suf, i_mid = row.index(suf, i), row.index(mid, i)
                end = row.index(eot, i_mid) if eot in row[i_mid:] else len(row)
                text = b"".join(
                    table[t] for t in [*row[i + 1 : i_suf], *row[i_mid + 1 : end], *row[i_suf + 1 : i_mid]]
                )
                assert not markers & set(row[i:end]) and b"seg" not in text, text[:80]
                assert any(text in t for t in TEXTS), text[:80]
                n_fim += 1
            line, newline, _ = b"".join(table[t] for t in row).partition(b"\n")
            if row[0] not in markers and b"seg" in line:
                deep_in_path += 1  # a window that starts in a path: its tail stays, then the file's text
                whole = (p.encode().endswith(line) if newline else line in p.encode() for p in PATHS)
                assert any(whole), line[:80]
    assert n_fim > 10 and deep_in_path > 10, (n_fim, deep_in_path)
