"""The pretraining data path: deterministic windows, FIM layouts, the held-out split, shards, the unigram
baseline and the errors."""

import math

import numpy as np
import pytest

pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

from codefoundry.data.shards import write_shards  # noqa: E402
from codefoundry.models import tokenizer as cft  # noqa: E402
from codefoundry.train import data as D  # noqa: E402

# Small documents (so windows hold whole ones), some with multi-byte characters and one with a literal
# special-token string, which must stay text.
DOCS = [
    f"def f{i}(x):\n    # {'αβγ ' * (i % 3)}step {i} 中文\n    return x * {i} + {'1' * (i % 5 + 1)}\n"
    for i in range(30)
] + [
    'EOT = "<|endoftext|>"  # not a document boundary\n',
    "class A:\n    def m(self):\n        return '\U0001f600' * 3\n",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return cft.train(cft.default_corpus()[:40], vocab_size=512, out=tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """DOCS as files in nested folders; returns (root, texts in sorted relative-path order)."""
    root = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(DOCS):
        path = root / f"pkg{i % 3}" / f"mod_{i:02d}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    files = sorted(p for p in root.rglob("*.py"))
    return root, [p.read_text(encoding="utf-8") for p in files]


def data(source, tok, **kw) -> D.PretrainData:
    rank, world = kw.pop("rank", 0), kw.pop("world_size", 4)
    return D.PretrainData(D.DataConfig(str(source), **kw), tok, rank=rank, world_size=world)


def decode(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


def reference_stream(tok, texts) -> np.ndarray:
    """Each text encoded with special strings as text, then EOT: what the directory source must give."""
    plain, eot = D.plain_text_tokenizer(tok), tok.token_to_id(cft.EOT)
    return np.array([i for t in texts for i in [*plain.encode(t, add_special_tokens=False).ids, eot]])


def test_batch_is_a_pure_function_of_seed_step_micro_rank(corpus, tok):
    root, _ = corpus
    d = data(root, tok, seq_len=64, holdout=0)
    x, y = d.batch(3, 1, 8)
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.int64
    x2, y2 = data(root, tok, seq_len=64, holdout=0).batch(3, 1, 8)  # a fresh object: nothing carried over
    assert torch.equal(x, x2) and torch.equal(y, y2)
    other = [
        d.batch(4, 1, 8)[0],
        d.batch(3, 0, 8)[0],
        data(root, tok, seq_len=64, holdout=0, rank=1).batch(3, 1, 8)[0],
    ]
    other.append(data(root, tok, seq_len=64, holdout=0, seed=1).batch(3, 1, 8)[0])
    assert not any(torch.equal(x, o) for o in other)


def test_targets_are_inputs_shifted_by_one(corpus, tok):
    root, _ = corpus
    for fim_rate in (0.0, 1.0):
        x, y = data(root, tok, seq_len=48, fim_rate=fim_rate).batch(0, 0, 6)
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_plain_windows_are_contiguous_corpus_tokens_and_text(corpus, tok):
    root, texts = corpus
    stream = reference_stream(tok, texts)
    d = data(root, tok, seq_len=40, fim_rate=0.0, holdout=0)
    assert d.n_train_tokens == len(stream) and d.n_documents == len(DOCS) and d.n_val_tokens == 0
    np.testing.assert_array_equal(d.train.read(0, len(stream)), stream)
    joined = "".join(t + cft.EOT for t in texts)
    windows = np.lib.stride_tricks.sliding_window_view(stream, 41)  # (N - 40, T + 1)
    for step in range(5):
        x, y = d.batch(step, 0, 4)
        for row in torch.cat([x, y[:, -1:]], dim=1).tolist():  # (B, T + 1)
            assert (windows == row).all(axis=1).any()
            text = decode(tok, row).strip("\ufffd")  # the window edges may cut a multi-byte character
            assert text in joined


def test_literal_special_token_string_in_a_file_stays_text(corpus, tok):
    root, texts = corpus
    d = data(root, tok, seq_len=32, fim_rate=0.0, holdout=0)
    eot = tok.token_to_id(cft.EOT)
    assert int((d.train.read(0, d.n_train_tokens) == eot).sum()) == len(DOCS)


def reconstruct(tok, seg: list[int]) -> str:
    """The document text of one FIM segment (PSM or SPM), in document order."""
    pre, mid, suf = D.fim_sentinels(tok)
    assert seg[0] == pre and seg.count(mid) == 1 and seg.count(suf) == 1, seg
    i_suf, i_mid = seg.index(suf), seg.index(mid)
    s = decode(tok, seg[i_suf + 1 : i_mid])
    if i_suf == 1:  # SPM (or PSM with an empty prefix): prefix and middle are contiguous after <|fim_middle|>
        return decode(tok, seg[i_mid + 1 :]) + s
    return decode(tok, seg[1:i_suf]) + decode(tok, seg[i_mid + 1 :]) + s


@pytest.mark.parametrize("spm", [False, True])
def test_fim_example_layout_reconstructs_the_document(tok, spm):
    plain = D.plain_text_tokenizer(tok)
    pre, mid, suf = D.fim_sentinels(tok)
    rng = np.random.default_rng(7)
    for text in DOCS[:8] + DOCS[-2:] + ["", "x"]:
        ids = D.fim_example(text, plain, rng, spm=spm)
        assert [i for i in ids if i in (pre, mid, suf)] == [pre, suf, mid]
        assert reconstruct(tok, ids) == text
        if spm:  # <|fim_prefix|> <|fim_suffix|> S <|fim_middle|> P M: prefix + middle decode as one run
            assert ids[1] == suf and text.startswith(decode(tok, ids[ids.index(mid) + 1 :]))
        else:  # <|fim_prefix|> P <|fim_suffix|> S <|fim_middle|> M
            assert text.startswith(decode(tok, ids[1 : ids.index(suf)]))
            assert text.endswith(decode(tok, ids[ids.index(suf) + 1 : ids.index(mid)]))


@pytest.mark.parametrize("spm_rate", [0.0, 1.0])
def test_fim_rows_hold_whole_documents_in_the_chosen_order(corpus, tok, spm_rate):
    root, texts = corpus
    d = data(root, tok, seq_len=256, fim_rate=1.0, spm_rate=spm_rate, holdout=0)
    pre, mid, suf = D.fim_sentinels(tok)
    eot = tok.token_to_id(cft.EOT)
    raw, corpus_bytes = token_bytes(tok), "".join(texts).encode("utf-8")
    whole = n_psm_with_prefix = fitted = 0
    for step in range(4):
        x, y = d.batch(step, 0, 4)
        for row in torch.cat([x, y[:, -1:]], dim=1).tolist():
            segs = np.split(np.array(row), np.flatnonzero(np.array(row) == eot))
            # segments strictly between two EOTs are complete documents, all turned into FIM ...
            last = len(segs) - 2 if row[-1] == eot else len(segs) - 1
            for seg in (s[1:].tolist() for s in segs[1:last]):
                if not seg:
                    continue
                assert reconstruct(tok, seg) in texts
                n_psm_with_prefix += seg[1] != suf
                whole += 1
            # ... but the one that ends the row: fitted to it, its suffix's end and prefix's head may be
            # gone, never its middle, so prefix, middle and suffix are still one run of the corpus
            if row[-1] == eot and len(segs) > 2 and len(segs[-2]) > 1:
                seg = segs[-2][1:].tolist()
                i_suf, i_mid = seg.index(suf), seg.index(mid)
                p_, s_, m_ = seg[1:i_suf], seg[i_suf + 1 : i_mid], seg[i_mid + 1 :]
                if i_suf == 1:  # SPM: prefix and middle both after <|fim_middle|>
                    p_ = []
                assert b"".join(raw[i] for i in [*p_, *m_, *s_]) in corpus_bytes
                fitted += 1
            # the first segment is the tail of a document (its first tokens may hold a cut character)
            first = segs[0].tolist()
            if len(segs) > 1 and first and first[0] == pre:
                assert any(t.endswith(reconstruct(tok, first).lstrip("\ufffd")) for t in texts)
    assert whole > 10 and fitted > 5
    assert (n_psm_with_prefix > 0) == (spm_rate == 0.0)


def test_fim_middles_end_with_an_eot_when_the_window_cuts_the_document(tmp_path, tok):
    """Documents longer than the window: the piece is cut at the window's end, yet its middle must end
    inside the row and be followed by <|endoftext|>, as a model's middle has to stop at inference."""
    text = "".join(f"def g{i}(a, b):\n    return a * {i} + b\n\n" for i in range(400))
    (tmp_path / "long.py").write_text(text, encoding="utf-8")
    d = data(tmp_path, tok, seq_len=128, fim_rate=1.0, holdout=0, world_size=1)
    pre, mid, suf = D.fim_sentinels(tok)
    eot = tok.token_to_id(cft.EOT)
    raw, text_bytes = token_bytes(tok), text.encode("utf-8")
    ends = []
    for step in range(6):
        x, y = d.batch(step, 0, 4)
        for row in torch.cat([x, y[:, -1:]], dim=1).tolist():
            assert row[0] == pre and row.count(mid) == 1
            i_suf, i_mid = row.index(suf), row.index(mid)
            if eot not in row:  # only a middle too long for the row is cut
                assert len(row) - i_mid - 1 > 128 // 4
                continue
            i_end = row.index(eot)
            assert i_end > i_mid
            ends.append(i_end)
            before = [] if i_suf == 1 else row[1:i_suf]  # PSM's prefix; SPM has it after <|fim_middle|>
            run = [*before, *row[i_mid + 1 : i_end], *row[i_suf + 1 : i_mid]]  # prefix, middle, suffix
            assert b"".join(raw[i] for i in run) in text_bytes  # one run of the text: the middle is whole
            assert b"".join(raw[i] for i in row[i_end + 1 :]) in text_bytes  # then plain text
    # where the middle ends varies: always at the row's end, the EOT's position would give it away
    assert len(ends) >= 20 and len(set(ends)) >= 10 and sum(e == 128 for e in ends) < len(ends) / 4


def test_line_level_fim_splits_at_line_starts(corpus, tok):
    rng = np.random.default_rng(3)
    text = "def f(x):\n    y = x + 1\n    return y\n\nprint(f(2))"
    seen = set()
    for _ in range(200):
        prefix, middle, suffix = D.fim_split(text, rng, lines=True)
        assert prefix + middle + suffix == text
        assert prefix in ("", text) or prefix.endswith("\n")  # the text's end counts as a line start
        assert suffix in ("", text) or text[len(text) - len(suffix) - 1] == "\n"  # it starts a line
        seen.add(middle)
    assert "    y = x + 1\n    return y\n" in seen and "" in seen
    # in the rows: PSM prefixes of whole documents end at a line start (the documents are ASCII-led)
    root, texts = corpus
    d = data(root, tok, seq_len=256, fim_rate=1.0, spm_rate=0.0, fim_line_rate=1.0, holdout=0)
    pre, mid, suf = D.fim_sentinels(tok)
    eot = tok.token_to_id(cft.EOT)
    checked = 0
    for step in range(3):
        x, y = d.batch(step, 0, 4)
        for row in torch.cat([x, y[:, -1:]], dim=1).tolist():
            segs = np.split(np.array(row), np.flatnonzero(np.array(row) == eot))
            for seg in (s[1:].tolist() for s in segs[1:-2]):
                if seg and seg.index(suf) > 1:
                    assert decode(tok, seg[1 : seg.index(suf)]).endswith("\n")
                    checked += 1
    assert checked > 5
    with pytest.raises(ValueError, match="fim_line_rate"):
        D.DataConfig(str(root), fim_line_rate=1.5)


def token_bytes(tok) -> list[bytes]:
    """Each id's bytes, undoing the byte-level alphabet (printable bytes stand for themselves, the other
    bytes for the code points from 256 up, in byte order)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), 256),
    ]
    others = [b for b in range(256) if b not in printable]
    to_byte = {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}
    specials = set(cft.SPECIAL_TOKENS)
    return [
        b"" if (t := tok.id_to_token(i)) in specials else bytes(to_byte[c] for c in t)
        for i in range(tok.get_vocab_size())
    ]


def test_fim_never_corrupts_a_character_cut_at_a_window_edge(corpus, tok):
    """Windows start and end at arbitrary tokens, often inside a multi-byte character (the corpus is full of
    them and the vocabulary is tiny). Every run of tokens between sentinels and EOTs must still be bytes
    of the corpus: a cut character decoded to U+FFFD and encoded back would not be."""
    root, texts = corpus
    raw = token_bytes(tok)
    corpus_bytes = "".join(texts).encode("utf-8")
    stops = {*D.fim_sentinels(tok), tok.token_to_id(cft.EOT)}
    d = data(root, tok, seq_len=24, fim_rate=1.0, holdout=0)
    cut_at_start = 0
    for step in range(25):
        x, y = d.batch(step, 0, 8)
        for row in torch.cat([x, y[:, -1:]], dim=1).tolist():
            run: list[int] = []
            for i in [*row, -1]:
                if i in stops or i == -1:
                    assert b"".join(raw[j] for j in run) in corpus_bytes
                    run = []
                else:
                    run.append(i)
            cut_at_start += decode(tok, row[1:3]).startswith("\ufffd")
    assert cut_at_start > 0  # the test did meet cut characters


def test_fim_needs_the_sentinel_tokens(tmp_path, corpus):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bare = Tokenizer(models.BPE())
    bare.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bare.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[cft.EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bare.train_from_iterator(DOCS, trainer=trainer)
    root, _ = corpus
    with pytest.raises(ValueError, match=r"no <\|fim_prefix\|> token.*fim_rate=0.5"):
        data(root, bare, seq_len=16)
    assert data(root, bare, seq_len=16, fim_rate=0.0).batch(0, 0, 2)[0].shape == (2, 16)


def test_holdout_is_by_path_hash_and_stable_when_files_are_added(tmp_path, tok):
    assert D.holdout_score("pkg/mod.py") == D.holdout_score("pkg/mod.py")
    assert D.holdout_score("pkg/mod.py") == 0.6982199491256277  # blake2b: the same in every process

    def held_out(root, numbers):
        root.mkdir()
        for i in numbers:
            (root / f"m{i}.py").write_text(f"{i}\nx = {i} * 2\n")
        return {int(t.split("\n")[0]) for t in data(root, tok, seq_len=4, holdout=0.3).val_texts()}

    # the same rule in any creation order, and a file's side does not change when files are added
    assert held_out(tmp_path / "a", range(20)) == {1, 2, 4, 9, 11, 15}
    assert held_out(tmp_path / "b", range(39, -1, -1)) == {1, 2, 4, 9, 11, 15, 22, 23, 25, 26, 29, 31, 32, 39}


def test_holdout_keeps_at_least_one_file_each_side(tmp_path, tok):
    for i in range(2):
        (tmp_path / f"f{i}.py").write_text(f"value_{i} = {i} * 2\n" * 4)
    d = data(tmp_path, tok, seq_len=4, holdout=1e-9)
    assert len(d.val_texts()) == 1 and d.n_documents == 2 and d.n_train_tokens > 0
    assert data(tmp_path, tok, seq_len=4, holdout=0.99).n_train_tokens > 0


def test_non_utf8_files_are_skipped_and_counted(tmp_path, tok):
    (tmp_path / "good.py").write_text("print('ok')\n" * 20)
    (tmp_path / "bad.py").write_bytes(b"x = '\xff\xfe latin-1 \xe9'\n" * 20)
    d = data(tmp_path, tok, seq_len=8, holdout=0)
    assert d.n_documents == 1 and d.n_skipped == 1
    assert "1 skipped" in d.describe()


def test_shards_give_the_same_stream_and_batches_as_the_directory(tmp_path, corpus, tok):
    root, texts = corpus
    paths = write_shards(texts, tmp_path / "shards", tok, shard_tokens=200)
    assert len(paths) > 2 and (tmp_path / "shards" / "tokenizer.json").exists()
    from_dir = data(root, tok, seq_len=64, holdout=0)
    from_shards = data(tmp_path / "shards", tok, seq_len=64, holdout=0)
    assert all(isinstance(p, np.memmap) for p in from_shards.train.parts)
    assert from_shards.n_train_tokens == from_dir.n_train_tokens and from_shards.n_documents == len(texts)
    n = from_dir.n_train_tokens
    np.testing.assert_array_equal(from_shards.train.read(0, n), from_dir.train.read(0, n))
    for step in range(3):
        for a, b in zip(from_dir.batch(step, 0, 4), from_shards.batch(step, 0, 4), strict=True):
            assert torch.equal(a, b)


def test_shard_holdout_is_the_last_documents_of_the_stream(tmp_path, corpus, tok):
    _, texts = corpus
    paths = write_shards(texts, tmp_path, tok, shard_tokens=len(reference_stream(tok, texts)) // 2)
    d = data(tmp_path, tok, seq_len=16, holdout=0.25)
    k = round(0.25 * len(texts))  # a fraction of all the documents (session 32: of the last shard's only)
    assert len(paths) == 2 and k >= 2
    assert d.val_texts() == texts[-k:]
    assert d.n_val_tokens == len(reference_stream(tok, texts[-k:]))
    assert d.n_train_tokens + d.n_val_tokens == len(reference_stream(tok, texts))
    one = tmp_path / "shard_00000.npy"  # a single .npy file is a source too
    assert isinstance(data(one, tok, seq_len=16, holdout=0).train.parts[0], np.memmap)


def test_val_batches_are_fixed_plain_and_rank_independent(tmp_path, corpus, tok):
    root, texts = corpus
    write_shards(texts, tmp_path, tok, shard_tokens=10_000)
    d0, d1 = (data(tmp_path, tok, seq_len=16, holdout=0.5, fim_rate=1.0, rank=r) for r in (0, 1))
    a, b = d0.val_batches(4, 3), d1.val_batches(4, 3)
    assert len(a) == 3 and all(x.shape == (4, 16) for x, _ in a)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(xa[:, 1:], ya[:, :-1])
    val = reference_stream(tok, d0.val_texts())
    sentinels = set(D.fim_sentinels(tok))
    for x, y in a:
        for row in torch.cat([x, y[:, -1:]], dim=1).tolist():
            assert not sentinels & set(row)
            assert any((val[s : s + 17] == row).all() for s in range(0, len(val) - 16, 16))
    assert data(tmp_path, tok, seq_len=16, holdout=0).val_batches(4, 3) == []
    with pytest.raises(ValueError, match="held-out stream has .* tokens, fewer than seq_len"):
        n_val = data(tmp_path, tok, seq_len=16, holdout=0.1).n_val_tokens
        data(tmp_path, tok, seq_len=n_val + 5, holdout=0.1).val_batches(1, 1)


def test_unigram_loss_matches_the_entropy_of_a_known_distribution(tmp_path, tok):
    rng = np.random.default_rng(0)
    ids, p = np.arange(20, 28), np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.03, 0.02])
    doc_len, n_docs = 5000, 40
    docs = [rng.choice(ids, size=doc_len, p=p) for _ in range(n_docs)]
    write_shards(docs, tmp_path, tok, shard_tokens=50_000)
    d = data(tmp_path, tok, seq_len=64, holdout=0.25, fim_rate=0.0)
    # every document ends with EOT, so the true token distribution is p scaled by L/(L+1) plus EOT at 1/(L+1)
    q = np.append(p * doc_len / (doc_len + 1), 1 / (doc_len + 1))
    entropy = float(-(q * np.log(q)).sum())
    assert abs(d.unigram_loss() - entropy) < 0.01
    assert d.unigram_loss() < math.log(tok.get_vocab_size())


def test_bad_sources_give_one_line_errors_naming_the_path(tmp_path, tok):
    cases = []
    missing = tmp_path / "missing"
    cases.append((missing, f"{missing}: no such file or directory"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    cases.append((empty, f"{empty}: no \\*.npy token shards and no source files with suffixes"))
    txt = empty / "notes.txt"
    cases.append((txt, f"{txt}: a data source is a directory or a .npy token shard"))
    big = tmp_path / "big"
    big.mkdir()
    np.save(big / "shard_00000.npy", np.array([5, 999, 0], dtype=np.uint16))
    cases.append((big, f"{big / 'shard_00000.npy'}: token id 999 >= the tokenizer's vocabulary size 512"))
    flat = tmp_path / "flat"
    flat.mkdir()
    np.save(flat / "a.npy", np.zeros((2, 3), dtype=np.uint16))
    cases.append((flat, f"{flat / 'a.npy'}: a shard must be a 1-D uint16 or uint32 array"))
    hollow = tmp_path / "hollow"
    hollow.mkdir()
    np.save(hollow / "a.npy", np.zeros(0, dtype=np.uint32))
    cases.append((hollow / "a.npy", f"{hollow / 'a.npy'}: the token shards hold no tokens"))
    short = tmp_path / "short"
    short.mkdir()
    (short / "a.py").write_text("x = 1\n")
    cases.append((short, f"{short}: the training stream has .* tokens, fewer than seq_len \\+ 1 = 4097"))
    for source, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            data(source, tok, seq_len=4096, holdout=0)
        assert "\n" not in str(err.value)


def test_bad_arguments_are_refused(corpus, tok):
    root, _ = corpus
    with pytest.raises(ValueError, match="DataConfig.fim_rate"):
        D.DataConfig(str(root), fim_rate=1.5)
    assert D.DataConfig(str(root), suffixes=".py").suffixes == (".py",)  # as a command line gives it
    with pytest.raises(ValueError, match="DataConfig.holdout"):
        D.DataConfig(str(root), holdout=1.0)
    with pytest.raises(ValueError, match="rank 4 outside"):
        data(root, tok, rank=4, world_size=4)
    with pytest.raises(ValueError, match="PretrainData.batch: need step >= 0"):
        data(root, tok, seq_len=8).batch(-1, 0, 2)
    with pytest.raises(ValueError, match="write_shards: a token-id document has ids outside"):
        write_shards([[1, 2, 10_000]], root.parent / "bad_shards", tok, shard_tokens=10)
