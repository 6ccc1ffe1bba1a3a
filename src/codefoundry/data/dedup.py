"""Exact and near deduplication: content hashes first, then MinHash signatures grouped by LSH banding,
candidate pairs checked against the threshold, and connected components.

Rule for what survives: in every group of duplicates the document with the lowest index, i.e. the first
in input order, is kept (the pipeline feeds documents in a stable sorted order, so the choice is stable
across runs and worker counts). Exact duplicates go first; near-duplicates are looked for among the rest.

- **Exact**: `content_hash` is SHA-256 of the UTF-8 text after stripping trailing whitespace (spaces,
  tabs, `\\r`, form feeds) from every line and blank lines from the end, so copies that differ only in
  CRLF vs LF, trailing spaces or the final newline count as exact duplicates. Nothing else is normalised.
- **Near** (`near_duplicate_clusters`), on `MinHasher` signatures (see `minhash.py` for tokens and
  shingles):
  1. documents with identical signatures are joined directly (for two documents below the threshold
     that happens with probability < threshold^num_perm, 1e-20 at 0.7 and 128);
  2. one representative per distinct signature goes through LSH: each of `bands` slices of `rows`
     slots is hashed to a 64-bit key, and documents sharing a key in any band are candidate pairs
     (`DedupConfig.lsh` says how bands and rows are chosen);
  3. with `verify`, a pair is kept only if its estimated Jaccard (equal slots / num_perm), or its exact
     shingle Jaccard when `texts` are given, reaches the threshold; without, every candidate pair counts;
  4. clusters are the connected components of the kept pairs (union-find).

Limits, stated plainly:
- A cluster is a connected component, so a chain A~B~C lands in one cluster even when J(A, C) is below
  the threshold, and the kept document may be less similar than the threshold to one it replaces.
- LSH misses some pairs just above the threshold and proposes some below it (the S-curve of
  `lsh_params`); the estimate has a standard deviation of about sqrt(J(1-J)/num_perm), 0.04 at 0.7/128,
  so `verify` drops some true pairs near the threshold too. `benchmarks/dedup_quality.py` measures both.
- A bucket with more than `MAX_BUCKET` distinct signatures has its members checked against the bucket's
  first member only, not every pair, to bound the work to O(n) per bucket.
- Everything is in memory: N x num_perm x 4 bytes of signatures plus the candidate pairs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from codefoundry.data.minhash import (
    EMPTY,
    VERIFIED_WEIGHTS,
    DedupConfig,
    MinHasher,
    estimate_jaccard,
    is_empty,
    jaccard,
    lsh_params,
)

__all__ = [
    "EMPTY",
    "MAX_BUCKET",
    "VERIFIED_WEIGHTS",
    "DedupConfig",
    "DedupResult",
    "Duplicate",
    "MinHasher",
    "content_hash",
    "deduplicate",
    "deduplicate_keys",
    "estimate_jaccard",
    "jaccard",
    "lsh_params",
    "near_duplicate_clusters",
]

#: Buckets with more distinct signatures than this are checked star-wise (against their first member).
MAX_BUCKET = 1000
_LINE_WS = " \t\r\f\v"
# a line other than the last has trailing whitespace only if one of these occurs (a regex over every
# whitespace run is 30x slower than these substring checks)
_TRAILING_MARKERS = ("\r", " \n", "\t\n", "\f\n", "\v\n")
_PAIR_CHUNK = 1 << 16  # pairs compared per numpy call when verifying: (65536, 128) uint32 is 32 MiB


def content_hash(text: str) -> bytes:
    """32-byte SHA-256 of `text` with trailing whitespace stripped from each line and blank lines from
    the end: the key of exact deduplication."""
    if any(marker in text for marker in _TRAILING_MARKERS):  # most files have no trailing whitespace
        text = "\n".join(line.rstrip(_LINE_WS) for line in text.split("\n"))
    return hashlib.sha256(text.rstrip(_LINE_WS + "\n").encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Duplicate:
    """Document `index` is dropped as a duplicate (`exact_duplicate` or `near_duplicate`) of `kept`."""

    index: int
    kept: int
    reason: str


@dataclass
class DedupResult:
    """What deduplication decided. Clusters hold input indices, sorted; the first of each is the kept one."""

    duplicates: list[Duplicate]
    exact_clusters: list[list[int]]
    near_clusters: list[list[int]]

    def dropped(self) -> dict[int, str]:
        """Input index -> reason, for every dropped document."""
        return {d.index: d.reason for d in self.duplicates}


def deduplicate(
    texts: Sequence[str], config: DedupConfig | None = None, *, signatures: np.ndarray | None = None
) -> DedupResult:
    """Exact then near deduplication of `texts`, keeping the first document of every group.
    `signatures` (N, num_perm), if given, must come from `MinHasher(config)` on the same texts."""
    config = config or DedupConfig()
    if signatures is None:
        signatures = MinHasher(config).signatures(texts)
    return deduplicate_keys([content_hash(t) for t in texts], signatures, config)


def deduplicate_keys(
    hashes: Sequence[bytes],
    signatures: np.ndarray,
    config: DedupConfig | None = None,
    *,
    texts: Sequence[str] | None = None,
) -> DedupResult:
    """`deduplicate` on precomputed keys (content hashes and signatures, e.g. from worker processes), so
    the texts need not be in memory. `texts`, if given, make near-dedup verify pairs exactly."""
    config = config or DedupConfig()
    signatures = np.asarray(signatures)
    if len(signatures) == 0:
        signatures = signatures.reshape(0, config.num_perm)
    if len(hashes) != len(signatures):
        raise ValueError(f"{len(hashes)} content hashes but {len(signatures)} signatures")
    first: dict[bytes, int] = {}
    exact: dict[int, list[int]] = {}
    duplicates: list[Duplicate] = []
    for i, h in enumerate(hashes):
        j = first.setdefault(h, i)
        if j != i:
            duplicates.append(Duplicate(i, j, "exact_duplicate"))
            exact.setdefault(j, [j]).append(i)
    rest = np.array(sorted(first.values()), dtype=np.int64)
    rest_texts = [texts[i] for i in rest] if texts is not None else None
    near = [
        [int(rest[j]) for j in c] for c in near_duplicate_clusters(signatures[rest], config, texts=rest_texts)
    ]
    duplicates += [Duplicate(i, c[0], "near_duplicate") for c in near for i in c[1:]]
    duplicates.sort(key=lambda d: d.index)
    return DedupResult(duplicates, [exact[j] for j in sorted(exact)], near)


def near_duplicate_clusters(
    signatures: np.ndarray, config: DedupConfig, *, texts: Sequence[str] | None = None
) -> list[list[int]]:
    """Clusters (size >= 2) of near-duplicate rows of `signatures` (N, num_perm) by LSH banding, optional
    verification and connected components. Each cluster is sorted; clusters are sorted by first index.
    `EMPTY` rows (documents without tokens) are never in a cluster. `texts`, if given, are the documents
    of the rows and make `verify` use exact shingle Jaccard instead of the signature estimate."""
    sig = np.asarray(signatures)
    if sig.ndim != 2 or sig.shape[1] != config.num_perm:
        raise ValueError(f"signatures must have shape (N, {config.num_perm}), got {sig.shape}")
    if texts is not None and len(texts) != len(sig):
        raise ValueError(f"{len(texts)} texts for {len(sig)} signatures")
    live = np.flatnonzero(~is_empty(sig))
    # 1. identical signatures: joined without LSH; the key-collision guard keeps only true equality
    order, starts, lens = _runs(_row_keys(sig[live]))
    u, v = _star_pairs(order, starts, lens)
    same = np.all(sig[live[u]] == sig[live[v]], axis=1)
    us, vs = [live[u[same]]], [live[v[same]]]
    rep = np.ones(len(live), dtype=bool)
    rep[v[same]] = False
    reps = live[rep]  # (R,) one row per distinct signature, ascending
    # 2. LSH: rows sharing a band key are candidates
    bands, rows = config.lsh()
    cu, cv = [], []
    for band in range(bands):
        order, starts, lens = _runs(_row_keys(sig[reps, band * rows : (band + 1) * rows]))
        u, v = _star_pairs(order, starts, lens) if not config.verify else _all_pairs(order, starts, lens)
        cu.append(reps[u])
        cv.append(reps[v])
    if cu:
        u, v = np.concatenate(cu), np.concatenate(cv)
        pair = _distinct(np.minimum(u, v) * len(sig) + np.maximum(u, v))  # each pair once, sorted
        u, v = pair // len(sig), pair % len(sig)
        # 3. verification
        if config.verify:
            keep = (
                _verify_exact(u, v, texts, config)
                if texts is not None
                else _verify_estimate(sig, u, v, config)
            )
            u, v = u[keep], v[keep]
        us.append(u)
        vs.append(v)
    # 4. connected components
    return _components(len(sig), np.concatenate(us), np.concatenate(vs))


def _distinct(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D integer array (sort and compare: numpy 2's np.unique is far slower)."""
    x = np.sort(x)
    return x[np.concatenate(([True], x[1:] != x[:-1]))] if len(x) else x


def _row_keys(block: np.ndarray) -> np.ndarray:
    """A 64-bit key per row of a (N, r) unsigned block: a polynomial in the slots, then finalised.
    Different rows share a key with probability about 2^-64; callers treat keys as candidates only."""
    acc = np.zeros(len(block), dtype=np.uint64)
    for j in range(block.shape[1]):
        acc *= np.uint64(0x100000001B3)  # FNV-1a's odd 64-bit prime: the order of slots matters
        acc += block[:, j].astype(np.uint64) + np.uint64(1)
    acc ^= acc >> np.uint64(33)
    acc *= np.uint64(0xFF51AFD7ED558CCD)
    acc ^= acc >> np.uint64(33)
    return acc


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorting permutation of `keys` and the start and length of each run of >= 2 equal keys in it.
    The sort is stable, so within a run positions ascend and the run's first is its lowest position."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    lens = np.diff(np.append(starts, len(k)))
    big = lens >= 2
    return order, starts[big], lens[big]


def _star_pairs(order: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first member, other member) for every other member of every run: enough for connectivity."""
    others = lens - 1
    offset = np.arange(others.sum()) - np.repeat(np.cumsum(others) - others, others)  # 0.. within run
    return order[np.repeat(starts, others)], order[np.repeat(starts, others) + 1 + offset]


def _all_pairs(order: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair within each run; runs longer than MAX_BUCKET give star pairs instead."""
    big = lens > MAX_BUCKET
    us, vs = list(_star_pairs(order, starts[big], lens[big]))
    us, vs = [us], [vs]
    for m in np.unique(lens[~big]).tolist():  # few distinct sizes: one vectorised step each
        i, j = np.triu_indices(m, 1)
        base = starts[lens == m][:, None]  # (runs, 1)
        us.append(order[(base + i).ravel()])
        vs.append(order[(base + j).ravel()])
    return np.concatenate(us), np.concatenate(vs)


def _verify_estimate(sig: np.ndarray, u: np.ndarray, v: np.ndarray, config: DedupConfig) -> np.ndarray:
    keep = np.empty(len(u), dtype=bool)
    for c0 in range(0, len(u), _PAIR_CHUNK):
        a, b = sig[u[c0 : c0 + _PAIR_CHUNK]], sig[v[c0 : c0 + _PAIR_CHUNK]]
        keep[c0 : c0 + _PAIR_CHUNK] = np.count_nonzero(a == b, axis=1) / config.num_perm >= config.threshold
    return keep


def _verify_exact(u: np.ndarray, v: np.ndarray, texts: Sequence[str], config: DedupConfig) -> np.ndarray:
    """Exact shingle Jaccard of each pair (over 64-bit shingle hashes), against the threshold."""
    involved = _distinct(np.concatenate([u, v])).tolist()
    sets = dict(zip(involved, MinHasher(config).shingle_hashes([texts[i] for i in involved]), strict=True))
    keep = np.empty(len(u), dtype=bool)
    for n, (i, j) in enumerate(zip(u.tolist(), v.tolist(), strict=True)):
        a, b = sets[i], sets[j]
        inter = len(np.intersect1d(a, b, assume_unique=True))
        union = len(a) + len(b) - inter
        keep[n] = union > 0 and inter / union >= config.threshold
    return keep


def _components(n: int, u: np.ndarray, v: np.ndarray) -> list[list[int]]:
    """Connected components with >= 2 members of the graph on n nodes with edges (u[i], v[i])."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving keeps the trees shallow
            x = parent[x]
        return x

    for a, b in zip(u.tolist(), v.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the root is always a component's lowest index
    groups: dict[int, list[int]] = {}
    for x in _distinct(np.concatenate([u, v])).tolist():
        groups.setdefault(find(x), []).append(x)
    return [groups[r] for r in sorted(groups) if len(groups[r]) >= 2]
