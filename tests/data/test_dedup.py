"""Exact and near deduplication on corpora built here with planted facts: near-duplicate pairs whose exact
shingle Jaccard is known by construction, exact copies that differ only in line endings, empty and short
documents; plus determinism across instances, pickling and processes, and LSH parameters vs datasketch."""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle
import random
import re

import numpy as np
import pytest

import codefoundry.data.dedup as dedup_module
from codefoundry.data.dedup import (
    EMPTY,
    MAX_BUCKET,
    VERIFIED_WEIGHTS,
    DedupConfig,
    DedupResult,
    MinHasher,
    content_hash,
    deduplicate,
    deduplicate_keys,
    estimate_jaccard,
    jaccard,
    lsh_params,
    near_duplicate_clusters,
)
from codefoundry.data.minhash import shingles, tokens

K = 5
SEPARATORS = [" ", "\n", "(", ", ", " = ", ".", ")\n    ", ": ", "  # "]


def _words(rng: random.Random, n: int) -> list[str]:
    """n distinct fresh identifiers (distinct tokens make every shingle of a document distinct)."""
    return [f"w{rng.getrandbits(48):012x}" for _ in range(n)]


def _render(rng: random.Random, words: list[str]) -> str:
    """Words joined by code-like separators: punctuation and layout never change the shingles."""
    return "".join(w + rng.choice(SEPARATORS) for w in words)


def _planted_pair(rng: random.Random, n_shingles: int, edits: int) -> tuple[str, str, float]:
    """Two documents whose exact Jaccard is (S - edits*K) / (S + edits*K), S = n_shingles: each edit
    replaces one token by a fresh one, far enough (>= K) from ends and other edits that it removes
    exactly K shingles of the original and adds K new ones."""
    words = _words(rng, n_shingles + K - 1)
    spacing = (len(words) - 2 * K) // edits
    assert spacing >= K, "too many edits for this length"
    edited = list(words)
    for e in range(edits):
        edited[K + e * spacing] = _words(rng, 1)[0]
    expected = (n_shingles - edits * K) / (n_shingles + edits * K)
    return _render(rng, words), _render(rng, edited), expected


def test_planted_jaccard_matches_construction() -> None:
    rng = random.Random(0)
    for edits in (1, 2, 4, 8, 20, 40):
        a, b, expected = _planted_pair(rng, 400, edits)
        assert jaccard(a, b, K) == pytest.approx(expected, abs=1e-12)


def test_hashed_shingles_match_reference_tokens() -> None:
    """The vectorised byte-level tokenizer and shingler agree with the plain-Python reference, including
    non-ASCII identifiers, short and token-less documents, in one batch."""
    rng = random.Random(1)
    texts = [
        "",
        "  ((  )) ;",
        "x",
        "a b",
        "def résumé(naïve_x):\n    return naïve_x * 2  # 日本語 コメント\n",
        "é ü 𝔘 日本語 token_x — y",
        _render(rng, _words(rng, 300)),
        "a b c d e",
        "a b c d e f",
        " ".join(chr(c) * 2 + chr(c) + "x" for c in range(1, 256)),  # every ASCII/Latin-1 character
    ]
    hasher = MinHasher(DedupConfig(shingle_size=K))
    hashed = hasher.shingle_hashes(texts)
    for text, h in zip(texts, hashed, strict=True):
        assert len(h) == len(shingles(text, K)), text
    assert tokens("é ü 𝔘 日本語 token_x — y") == ["é", "ü", "𝔘", "日本語", "token_x", "—", "y"]
    for i in range(len(texts)):
        for j in range(len(texts)):
            a, b = hashed[i], hashed[j]
            inter = len(np.intersect1d(a, b))
            union = len(a) + len(b) - inter
            assert (inter / union if inter else 0.0) == pytest.approx(jaccard(texts[i], texts[j], K))


def test_estimate_tracks_exact_jaccard() -> None:
    rng = random.Random(2)
    hasher = MinHasher(DedupConfig(num_perm=256))
    for edits in (2, 8, 20, 40):
        a, b, expected = _planted_pair(rng, 400, edits)
        sa, sb = hasher.signatures([a, b])
        # 5 standard deviations of the estimator: deterministic here, and far from a coin flip
        assert abs(estimate_jaccard(sa, sb) - expected) < 5 * np.sqrt(expected * (1 - expected) / 256) + 1e-9


def _planted_corpus(seed: int) -> tuple[list[str], list[tuple[int, int]], list[tuple[int, int]], set[int]]:
    """Unrelated documents plus planted pairs: `high` well above a 0.7 threshold, `low` well below."""
    rng = random.Random(seed)
    texts: list[str] = []
    high, low = [], []
    for edits, bucket in [(2, high), (4, high), (6, high), (26, low), (40, low)] * 4:  # J .95 .90 .86 .51 .33
        a, b, _ = _planted_pair(rng, 400, edits)
        bucket.append((len(texts), len(texts) + 1))
        texts += [a, b]
    unrelated = set(range(len(texts), len(texts) + 40))
    texts += [_render(rng, _words(rng, rng.randint(20, 600))) for _ in unrelated]
    order = list(range(len(texts)))
    rng.shuffle(order)  # pairs are not adjacent in the input
    where = {old: new for new, old in enumerate(order)}
    shuffled = [texts[i] for i in order]
    return (shuffled, [(where[a], where[b]) for a, b in high], [(where[a], where[b]) for a, b in low],
            {where[i] for i in unrelated})  # fmt: skip


@pytest.mark.parametrize("use_texts", [False, True])
def test_near_duplicates_found_above_threshold_and_not_below(use_texts: bool) -> None:
    texts, high, low, unrelated = _planted_corpus(3)
    config = DedupConfig(threshold=0.7)
    sig = MinHasher(config).signatures(texts)
    clusters = near_duplicate_clusters(sig, config, texts=texts if use_texts else None)
    cluster_of = {i: n for n, c in enumerate(clusters) for i in c}
    for a, b in high:
        assert a in cluster_of and cluster_of.get(a) == cluster_of.get(b), (a, b, jaccard(texts[a], texts[b]))
    for a, b in low:
        assert a not in cluster_of or cluster_of[a] != cluster_of.get(b), (a, b)
    assert not unrelated & set(cluster_of)
    assert all(c == sorted(c) and len(c) >= 2 for c in clusters) and clusters == sorted(clusters)


def test_verify_off_only_adds_pairs() -> None:
    """With the same bands and rows, verification can only remove candidate pairs."""
    texts, high, _, _ = _planted_corpus(4)
    on, off = DedupConfig(bands=14, rows=9, verify=True), DedupConfig(bands=14, rows=9, verify=False)
    sig = MinHasher(on).signatures(texts)
    loose = near_duplicate_clusters(sig, off)
    for cluster in near_duplicate_clusters(sig, on):
        assert any(set(cluster) <= set(c) for c in loose)
    assert len(loose) >= len(high)


def test_exact_then_near_keeps_first_in_input_order() -> None:
    rng = random.Random(5)
    words = _words(rng, 200)
    base = "\n".join(" ".join(words[i : i + 8]) for i in range(0, 200, 8)) + "\n"
    crlf = base.replace("\n", "  \r\n") + "\n\n"  # CRLF, trailing spaces, extra blank lines: exact copy
    reflowed = " ".join(words)  # same tokens, other layout: near duplicate (J = 1), not exact
    edited = base.replace(words[100], "changed_token")  # J = (196 - 5) / (196 + 5) = 0.95
    other = _render(rng, _words(rng, 200))
    texts = [other, reflowed, base, crlf, edited]
    assert content_hash(base) == content_hash(crlf) != content_hash(reflowed)
    assert len(content_hash(base)) == 32
    result = deduplicate(texts)
    assert result.dropped() == {2: "near_duplicate", 3: "exact_duplicate", 4: "near_duplicate"}
    assert {d.index: d.kept for d in result.duplicates} == {2: 1, 3: 2, 4: 1}
    assert result.exact_clusters == [[2, 3]] and result.near_clusters == [[1, 2, 4]]
    # the same from precomputed keys, as worker processes would send them
    keys = deduplicate_keys([content_hash(t) for t in texts], MinHasher().signatures(texts))
    assert keys == result


def test_content_hash_normalises_only_trailing_whitespace() -> None:
    """Same as the plain definition (regex over each line end, then trailing newlines) on random texts."""
    rng = random.Random(9)
    alphabet = ["a", "b", " ", "\t", "\n", "\r", "\r\n", "\f", "\v", "é"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        norm = re.sub(r"[ \t\r\f\v]+$", "", text, flags=re.MULTILINE).rstrip("\n")
        assert content_hash(text) == hashlib.sha256(norm.encode()).digest(), repr(text)
    assert content_hash("a b") != content_hash("a  b") and content_hash("\ta") != content_hash("a")


def test_empty_and_short_documents() -> None:
    """No tokens: EMPTY signature, never a near duplicate, exact duplicate only of the same (normalised)
    text. Fewer tokens than the shingle size: one shingle, the whole sequence."""
    texts = ["", "\n\n", "()", "  ;;  ", "a b", "a  (b);", "a c", "x"]
    hasher = MinHasher()
    sig = hasher.signatures(texts)
    assert (sig[:4] == EMPTY).all() and not (sig[4:] == EMPTY).all(axis=1).any()
    assert estimate_jaccard(sig[0], sig[1]) == 0.0 and jaccard("", "") == 0.0
    assert (
        shingles("a b", K) == {("a", "b")} and jaccard("a b", "a  (b);") == 1.0 and jaccard("a b", "a c") == 0
    )
    result = deduplicate(texts)
    assert result.dropped() == {1: "exact_duplicate", 5: "near_duplicate"}
    assert result.near_clusters == [[4, 5]]
    assert deduplicate([]) == DedupResult([], [], []) == deduplicate_keys([], [])


def test_batches_do_not_leak_between_documents() -> None:
    """A document's signature is the same alone and amid others, across the ~1 MiB batch boundary and
    next to short documents whose one shingle must stop at their end."""
    rng = random.Random(6)
    texts = ["a b", _render(rng, _words(rng, 50)), "c", "d e f g", ""]
    texts += [_render(rng, _words(rng, rng.randint(1, 3000))) for _ in range(60)]  # ~2 MiB in all
    texts += ["z" * 20 + " y" * 600_000, "a b"]  # one document larger than a batch
    hasher = MinHasher()
    together = hasher.signatures(texts)
    for i in [0, 1, 2, 3, 4, 30, 59, len(texts) - 2, len(texts) - 1]:
        np.testing.assert_array_equal(together[i], hasher.signature(texts[i]))
    np.testing.assert_array_equal(together[0], together[-1])


def test_signatures_deterministic_across_instances_pickles_and_processes() -> None:
    rng = random.Random(7)
    texts = [_render(rng, _words(rng, rng.randint(1, 400))) for _ in range(20)] + [""]
    config = DedupConfig(num_perm=64, seed=11)
    here = MinHasher(config).signatures(texts)
    np.testing.assert_array_equal(here, MinHasher(config).signatures(texts))
    np.testing.assert_array_equal(here, pickle.loads(pickle.dumps(MinHasher(config))).signatures(texts))
    # a fresh interpreter with its own (salted) str hashing computes the same signatures
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        there = pool.apply(MinHasher(config).signatures, (texts,))
    np.testing.assert_array_equal(here, there)
    assert here.dtype == np.uint32 and here.shape == (len(texts), 64)
    assert not np.array_equal(here[:-1], MinHasher(DedupConfig(num_perm=64, seed=12)).signatures(texts)[:-1])


def test_signature_pinned() -> None:
    """Signatures are stored by the pipeline; a change to tokens, hashing or permutations must show."""
    sig = MinHasher().signature("def add(a, b):\n    return a + b  # the sum of a and b\n")
    assert hashlib.sha256(sig.tobytes()).hexdigest()[:16] == PINNED


PINNED = "dbbcdf863334d989"


def test_lsh_params_match_datasketch_and_are_sane() -> None:
    lsh = pytest.importorskip("datasketch.lsh")
    for threshold, num_perm in [(0.5, 128), (0.7, 128), (0.8, 256), (0.9, 64), (0.3, 32), (0.85, 100)]:
        for weights in [(0.5, 0.5), VERIFIED_WEIGHTS]:
            bands, rows = lsh_params(threshold, num_perm, weights=weights)
            assert (bands, rows) == lsh._optimal_param(threshold, num_perm, *weights)
            assert bands * rows <= num_perm
            assert abs((1 / bands) ** (1 / rows) - threshold) < 0.15  # the S-curve rises near the threshold
    # weighing false negatives more moves the S-curve's midpoint below the threshold: more candidates
    assert DedupConfig(threshold=0.7, verify=False).lsh() == lsh_params(0.7, 128) == (14, 9)
    assert DedupConfig(threshold=0.7).lsh() == lsh_params(0.7, 128, weights=VERIFIED_WEIGHTS) == (18, 7)
    assert DedupConfig(bands=16).lsh() == (16, 8) and DedupConfig(rows=5).lsh() == (25, 5)
    assert DedupConfig(threshold=1.0).lsh()[0] == 1


@pytest.mark.parametrize(
    "options",
    [{"num_perm": 0}, {"threshold": 0.0}, {"threshold": 1.5}, {"bands": 20, "rows": 10}, {"bands": 0}],
)
def test_bad_config_is_one_clear_error(options: dict) -> None:
    with pytest.raises(ValueError, match="DedupConfig"):
        DedupConfig(**options)


def test_bad_inputs_are_one_clear_error() -> None:
    config = DedupConfig()
    with pytest.raises(ValueError, match=r"shape \(N, 128\)"):
        near_duplicate_clusters(np.zeros((3, 64), dtype=np.uint32), config)
    with pytest.raises(ValueError, match="2 texts for 3 signatures"):
        near_duplicate_clusters(np.zeros((3, 128), dtype=np.uint32), config, texts=["a", "b"])
    with pytest.raises(TypeError, match="expected str documents, got bytes"):
        MinHasher().signatures([b"bytes"])  # type: ignore[list-item]


def test_bucket_larger_than_cap_still_one_cluster() -> None:
    """Over MAX_BUCKET distinct near-identical documents in one bucket are linked star-wise."""
    rng = random.Random(8)
    base = " ".join(_words(rng, 400))
    # 4 own tokens each: J ~ 0.98, and most signatures differ, so the shared bucket of every band holds
    # well over MAX_BUCKET distinct signatures
    texts = [f"{base} {' '.join(_words(rng, 4))}" for _ in range(2 * MAX_BUCKET)]
    config = DedupConfig()
    clusters = near_duplicate_clusters(MinHasher(config).signatures(texts), config)
    assert clusters == [list(range(len(texts)))]


def test_public_api() -> None:
    for name in dedup_module.__all__:
        assert hasattr(dedup_module, name), name
