"""Near-dedup throughput: codefoundry's MinHasher + near_duplicate_clusters vs datasketch's MinHash
(update_batch through MinHash.generator) + MinHashLSH insert and query, on the same corpus (text files of
this interpreter's standard library and site-packages), same shingles, permutations and threshold, same
run. Documents/s end to end: shingling, signatures, LSH, clustering; reading files is not timed.

Recall and precision of both against exact shingle Jaccard, on a random sample of documents: for each
sampled document every partner in the *whole* corpus with J >= threshold is found exactly (an inverted
index over shingles with the prefix filter: a partner must contain one of the sampled document's
|A| - ceil(t|A|) + 1 rarest shingles, so nothing is missed), and every document a method put in its
cluster is checked. Pairs that both methods miss count against both, unlike a truth set made only of
the methods' own candidates.

    python benchmarks/dedup_throughput.py [--limit 20000] [--sample 2000] [--workers 2] \\
        [--json benchmarks/results/dedup_throughput.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import platform
import random
import site
import statistics
import sys
import sysconfig
import time

import numpy as np

from codefoundry.data.dedup import DedupConfig, MinHasher, lsh_params, near_duplicate_clusters
from codefoundry.data.minhash import tokens

MAX_BYTES = 1_000_000


def load_corpus(limit: int | None, seed: int) -> tuple[list[str], list[str]]:
    """Texts and paths of the UTF-8 text files (no NUL byte, at most 1 MB) of the standard library and
    site-packages, each real file once; a seeded random `limit` of them, in sorted path order."""
    roots = [sysconfig.get_paths()["stdlib"], *site.getsitepackages()]
    paths: set[str] = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            paths.update(os.path.realpath(os.path.join(dirpath, f)) for f in filenames)
    candidates = sorted(paths)
    random.Random(seed).shuffle(candidates)
    chosen: list[tuple[str, str]] = []
    for path in candidates:
        if limit is not None and len(chosen) >= limit:
            break
        try:
            if not os.path.isfile(path) or os.path.getsize(path) > MAX_BYTES:
                continue
            with open(path, "rb") as f:
                data = f.read()
            if b"\0" in data:
                continue
            chosen.append((path, data.decode("utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    chosen.sort()
    return [t for _, t in chosen], [p for p, _ in chosen]


# ---------------------------------------------------------------- the two methods, timed end to end


def ours(texts: list[str], config: DedupConfig) -> list[list[int]]:
    return near_duplicate_clusters(MinHasher(config).signatures(texts), config)


_SHARED: list[str] = []  # the corpus, inherited by forked workers as the pipeline's workers hold their chunk


def _signatures_part(args: tuple[MinHasher, int, int]) -> np.ndarray:
    hasher, lo, hi = args
    return hasher.signatures(_SHARED[lo:hi])


def ours_parallel(n: int, config: DedupConfig, pool, workers: int) -> list[list[int]]:
    """Signatures in `workers` forked processes (8 ranges per worker, texts already in the workers; only
    the signatures travel back), clustering here."""
    hasher = MinHasher(config)
    step = math.ceil(n / (workers * 8))
    parts = pool.map(_signatures_part, [(hasher, i, min(i + step, n)) for i in range(0, n, step)])
    return near_duplicate_clusters(np.concatenate(parts), config)


def shingle_bytes(text: str, k: int) -> list[bytes]:
    """The same shingles as MinHasher's, as the strings datasketch hashes."""
    toks = tokens(text)
    if len(toks) < k:
        return [" ".join(toks).encode()] if toks else []
    return [" ".join(toks[i : i + k]).encode() for i in range(len(toks) - k + 1)]


def datasketch_clusters(texts: list[str], config: DedupConfig) -> list[list[int]]:
    """datasketch as its docs suggest for many sets: MinHash.generator (update_batch on a copied
    template), MinHashLSH(threshold, num_perm) insert, then query every document; candidates are
    linked as they come (no verification); documents without shingles are left out, as in ours."""
    from datasketch import MinHash, MinHashLSH

    sets = [shingle_bytes(t, config.shingle_size) for t in texts]
    keep = [i for i, s in enumerate(sets) if s]
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
    minhashes = MinHash.generator((sets[i] for i in keep), num_perm=config.num_perm, seed=config.seed)
    hashes = []
    with lsh.insertion_session() as session:
        for i, m in zip(keep, minhashes, strict=True):
            session.insert(i, m)
            hashes.append(m)
    u, v = [], []
    for i, m in zip(keep, hashes, strict=True):
        for j in lsh.query(m):
            if j != i:
                u.append(i)
                v.append(j)
    return union_find(len(texts), u, v)


def union_find(n: int, u: list[int], v: list[int]) -> list[list[int]]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(u, v, strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in sorted(set(u) | set(v)):
        groups.setdefault(find(x), []).append(x)
    return sorted(g for g in groups.values() if len(g) >= 2)


# ---------------------------------------------------------------- ground truth on a sample


class ExactIndex:
    """Shingle sets (64-bit hashes of the shingle tuples; Python's string hash, consistent within this
    process) of every document, and an inverted index to find every partner with J >= t exactly."""

    def __init__(self, texts: list[str], k: int) -> None:
        self.sets = []
        for t in texts:
            toks = tokens(t)
            grams = (
                [tuple(toks[i : i + k]) for i in range(len(toks) - k + 1)]
                if len(toks) >= k
                else [tuple(toks)]
            )
            self.sets.append(np.unique(np.array([hash(g) for g in grams if g], dtype=np.int64)))
        sizes = np.array([len(s) for s in self.sets])
        flat = np.concatenate(self.sets) if self.sets else np.empty(0, np.int64)
        docs = np.repeat(np.arange(len(texts)), sizes)
        order = np.argsort(flat, kind="stable")
        self.keys, self.docs = flat[order], docs[order]
        self.sizes = sizes

    def jaccard(self, i: int, j: int) -> float:
        a, b = self.sets[i], self.sets[j]
        if not len(a) or not len(b):
            return 0.0
        inter = len(np.intersect1d(a, b, assume_unique=True))
        return inter / (len(a) + len(b) - inter)

    def partners(self, i: int, threshold: float) -> set[int]:
        a = self.sets[i]
        if not len(a):
            return set()
        lo = np.searchsorted(self.keys, a, side="left")
        df = np.searchsorted(self.keys, a, side="right") - lo  # document frequency of each shingle
        p = len(a) - math.ceil(threshold * len(a) - 1e-9) + 1
        rare = np.argsort(df, kind="stable")[:p]
        cand = np.unique(np.concatenate([self.docs[lo[r] : lo[r] + df[r]] for r in rare]))
        sizes = self.sizes[cand]
        cand = cand[(cand != i) & (sizes >= threshold * len(a)) & (sizes * threshold <= len(a))]
        return {int(j) for j in cand if self.jaccard(i, int(j)) >= threshold}


def sample_quality(
    index: ExactIndex,
    clusters: list[list[int]],
    sample: list[int],
    threshold: float,
    mates_cap: int,
    seed: int,
) -> dict[str, float | int]:
    """Pair level: recall over the sample's true partners, precision over its cluster mates (a capped
    random subset, checked exactly; a cluster is a connected component, so chained mates can be below
    the threshold). Document level: of the sampled documents with a true partner, the share that are in a
    cluster (recall); of those in a cluster, the share that have a true partner (precision)."""
    cluster_of = {i: c for c in clusters for i in c}
    rng = random.Random(seed)
    true_pairs = found = predicted = 0
    correct = 0.0
    docs_true = docs_clustered = docs_both = 0
    for i in sample:
        truth = index.partners(i, threshold)
        mates = [j for j in cluster_of.get(i, []) if j != i]
        true_pairs += len(truth)
        found += len(truth & set(mates))
        checked = mates if len(mates) <= mates_cap else rng.sample(mates, mates_cap)
        predicted += len(mates)
        correct += len(mates) / max(1, len(checked)) * sum(index.jaccard(i, j) >= threshold for j in checked)
        docs_true += bool(truth)
        docs_clustered += bool(mates)
        docs_both += bool(truth) and bool(mates)
    return {"true_pairs": true_pairs, "found": found, "pair_recall": round(found / max(1, true_pairs), 4),
            "predicted_pairs": predicted, "pair_precision": round(correct / max(1, predicted), 4),
            "docs_with_partner": docs_true, "docs_clustered": docs_clustered,
            "doc_recall": round(docs_both / max(1, docs_true), 4),
            "doc_precision": round(docs_both / max(1, docs_clustered), 4)}  # fmt: skip


# ---------------------------------------------------------------- the run


def timed(fn, *args) -> tuple[float, list[list[int]]]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=20000, help="documents (seeded random sample); 0 = all")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--shingle-size", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="runs of ours (median); datasketch runs once")
    ap.add_argument(
        "--workers", type=int, default=2, help="also time ours with this many processes; 0 = skip"
    )
    ap.add_argument("--sample", type=int, default=2000, help="documents checked exactly for recall/precision")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    config = DedupConfig(num_perm=args.num_perm, shingle_size=args.shingle_size, threshold=args.threshold)
    t = time.perf_counter()
    texts, _ = load_corpus(args.limit or None, args.seed)
    n, mb = len(texts), sum(len(x.encode()) for x in texts) / 1e6
    print(f"corpus: {n} files, {mb:.1f} MB, read in {time.perf_counter() - t:.1f} s; (bands, rows) {config.lsh()}, "
          f"without verification and in datasketch {lsh_params(config.threshold, config.num_perm)}")  # fmt: skip

    load_before = os.getloadavg()
    ours_s, ours_clusters = [], None
    for _ in range(args.repeat):
        s, ours_clusters = timed(ours, texts, config)
        ours_s.append(s)
        print(f"ours: {s:.2f} s, {n / s:.0f} docs/s, {len(ours_clusters)} clusters")
    loose_s, loose_clusters = timed(ours, texts, DedupConfig(**{**config.__dict__, "verify": False}))
    print(f"ours, verify=False: {loose_s:.2f} s, {n / loose_s:.0f} docs/s, {len(loose_clusters)} clusters")
    par = None
    if args.workers:
        _SHARED[:] = texts
        gc.freeze()  # forked workers would otherwise copy every inherited object the first time gc runs
        with multiprocessing.get_context("fork").Pool(args.workers) as pool:  # started before timing
            pool.map(_signatures_part, [(MinHasher(config), 0, 1)] * args.workers)
            par_s, par_clusters = timed(ours_parallel, n, config, pool, args.workers)
        gc.unfreeze()
        assert par_clusters == ours_clusters, "parallel signatures must give the same clusters"
        par = {"workers": args.workers, "seconds": round(par_s, 2), "docs_per_s": round(n / par_s, 1)}
        print(f"ours, {args.workers} worker processes: {par_s:.2f} s, {n / par_s:.0f} docs/s")
    ds_s, ds_clusters = timed(datasketch_clusters, texts, config)
    print(f"datasketch: {ds_s:.2f} s, {n / ds_s:.0f} docs/s, {len(ds_clusters)} clusters")
    load_after = os.getloadavg()

    t = time.perf_counter()
    index = ExactIndex(texts, config.shingle_size)
    sample = sorted(random.Random(args.seed + 1).sample(range(n), min(args.sample, n)))
    quality = {name: sample_quality(index, c, sample, config.threshold, 200, args.seed)
               for name, c in [("ours", ours_clusters), ("ours_verify_off", loose_clusters),
                               ("datasketch", ds_clusters)]}  # fmt: skip
    print(f"ground truth on {len(sample)} sampled documents in {time.perf_counter() - t:.1f} s")
    for name, q in quality.items():
        print(
            f"  {name}: pair recall {q['pair_recall']} ({q['found']}/{q['true_pairs']}), pair precision "
            f"{q['pair_precision']}; doc recall {q['doc_recall']}, doc precision {q['doc_precision']}"
        )

    ours_med = statistics.median(ours_s)
    result = {
        "command": "python " + " ".join(sys.argv),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "documents": n,
        "megabytes": round(mb, 1),
        "config": {**config.__dict__, "bands_rows": list(config.lsh()),
                   "bands_rows_verify_off_and_datasketch": list(lsh_params(config.threshold, config.num_perm))},
        "ours": {"seconds_each": [round(s, 2) for s in ours_s], "docs_per_s": round(n / ours_med, 1),
                 "clusters": len(ours_clusters), "clustered_docs": sum(map(len, ours_clusters))},
        "ours_verify_off": {"seconds": round(loose_s, 2), "docs_per_s": round(n / loose_s, 1),
                            "clusters": len(loose_clusters)},
        "datasketch": {"seconds": round(ds_s, 2), "docs_per_s": round(n / ds_s, 1), "clusters": len(ds_clusters),
                       "clustered_docs": sum(map(len, ds_clusters))},
        "ours_parallel": par,
        "speedup_single_process": round(ds_s / ours_med, 2),
        "quality_on_sample": {"sampled_documents": len(sample), **quality},
    }  # fmt: skip
    print(f"speedup (single process): {result['speedup_single_process']}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
