"""Near-dedup quality against brute force: a synthetic code-like corpus with planted near-duplicate
families (edits spread their Jaccard over ~0.2..1), shared licence-style headers and unrelated documents;
the exact shingle Jaccard of *every* pair (a sparse incidence-matrix product, so all pairs are covered)
gives the truth; each method's clusters give its pairs (all pairs within a cluster, so chained pairs
count). Precision, recall and F1 per threshold, and the share of pairs reported per Jaccard bin.

Methods: ours (estimated-Jaccard verification, the default), ours without verification, ours with exact
verification (`texts=`), and datasketch MinHash + MinHashLSH (candidates linked as they come).

    python benchmarks/dedup_quality.py [--families 2000] [--unrelated 2000] [--thresholds 0.5,0.7,0.85] \\
        [--json benchmarks/results/dedup_quality.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

from codefoundry.data.dedup import DedupConfig, MinHasher, near_duplicate_clusters
from codefoundry.data.minhash import tokens
from dedup_throughput import datasketch_clusters  # the same datasketch recipe as the throughput run

KEYWORDS = ["def", "return", "if", "else", "for", "in", "import", "from", "self", "None", "True", "class"]
SEPARATORS = np.array([" ", " ", " ", "(", ")", ", ", ".", " = ", ":\n    ", "\n", "[", "]"])
BINS = [0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0001]


class Corpus:
    """Seeded synthetic documents: Zipf-distributed identifiers with code-like separators."""

    def __init__(self, seed: int, vocab: int = 4000) -> None:
        self.rng = np.random.default_rng(seed)
        self.vocab = np.array(KEYWORDS + [f"name{i}" for i in range(vocab)])
        weights = 1.0 / np.arange(1, len(self.vocab) + 1) ** 1.05
        self.p = weights / weights.sum()
        self.headers = [self.words(60) for _ in range(5)]

    def words(self, n: int) -> list[str]:
        return list(self.rng.choice(self.vocab, size=n, p=self.p))

    def document(self) -> list[str]:
        n = int(np.exp(self.rng.uniform(np.log(30), np.log(1500))))
        body = self.words(n)
        if self.rng.random() < 0.15:  # a shared header (licence, generated-file banner)
            body = self.headers[self.rng.integers(len(self.headers))] + body
        return body

    def variant(self, words: list[str], rate: float) -> list[str]:
        """Per token: replaced with probability rate/2, deleted rate/4, followed by an insertion rate/4."""
        out: list[str] = []
        for w in words:
            r = self.rng.random()
            if r < rate / 2:
                out.append(self.words(1)[0])
            elif r < 3 * rate / 4:
                continue
            else:
                out.append(w)
            if self.rng.random() < rate / 4:
                out.append(self.words(1)[0])
        return out

    def render(self, words: list[str]) -> str:
        seps = self.rng.choice(SEPARATORS, size=len(words))
        return "".join(w + s for w, s in zip(words, seps, strict=True))


def build(families: int, unrelated: int, seed: int) -> list[str]:
    corpus = Corpus(seed)
    docs: list[str] = []
    for _ in range(families):
        base = corpus.document()
        docs.append(corpus.render(base))
        for _ in range(int(corpus.rng.integers(1, 4))):
            docs.append(corpus.render(corpus.variant(base, float(corpus.rng.uniform(0.0, 0.45)))))
    docs += [corpus.render(corpus.document()) for _ in range(unrelated)]
    order = corpus.rng.permutation(len(docs))  # family members are not adjacent in the input
    return [docs[i] for i in order]


def all_pairs_jaccard(texts: list[str], k: int) -> dict[tuple[int, int], float]:
    """Exact Jaccard of every pair sharing at least one shingle (the others have J = 0), via the sparse
    product of the document x shingle incidence matrix with its transpose."""
    from scipy import sparse

    ids: dict[tuple[str, ...], int] = {}
    rows, cols = [], []
    for d, text in enumerate(texts):
        toks = tokens(text)
        grams = (
            {tuple(toks[i : i + k]) for i in range(len(toks) - k + 1)} if len(toks) >= k else {tuple(toks)}
        )
        for g in grams:
            if g:
                rows.append(d)
                cols.append(ids.setdefault(g, len(ids)))
    m = sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(texts), len(ids)))
    sizes = np.asarray(m.sum(axis=1)).ravel()
    inter = sparse.triu(m @ m.T, k=1).tocoo()
    jac = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    return {(int(i), int(j)): float(x) for i, j, x in zip(inter.row, inter.col, jac, strict=True)}


def cluster_pairs(clusters: list[list[int]]) -> set[tuple[int, int]]:
    return {(c[a], c[b]) for c in clusters for a in range(len(c)) for b in range(a + 1, len(c))}


def score(pairs: set[tuple[int, int]], jac: dict[tuple[int, int], float], threshold: float) -> dict:
    truth = {p for p, x in jac.items() if x >= threshold}
    hit = len(pairs & truth)
    precision, recall = hit / max(1, len(pairs)), hit / max(1, len(truth))
    by_bin = {}
    values = np.array([jac.get(p, 0.0) for p in pairs])
    all_values = np.array(list(jac.values()))
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        total = int(((all_values >= lo) & (all_values < hi)).sum())
        got = int(((values >= lo) & (values < hi)).sum())
        by_bin[f"{lo:.2f}-{min(hi, 1.0):.2f}"] = {"pairs": total, "reported": got,
                                                  "rate": round(got / total, 4) if total else None}  # fmt: skip
    return {"true_pairs": len(truth), "reported_pairs": len(pairs), "precision": round(precision, 4),
            "recall": round(recall, 4), "f1": round(2 * precision * recall / max(1e-12, precision + recall), 4),
            "by_jaccard": by_bin}  # fmt: skip


def estimator_error(texts: list[str], jac: dict[tuple[int, int], float], config, seeds: int) -> dict:
    """Bias and RMSE of the signature estimate of J over pairs with J >= 0.2, ours and datasketch's, for
    `seeds` seeds each (pairs share documents, so one seed's mean error is not an average of independent
    errors: the sign of its bias varies by seed), next to the binomial standard deviation
    sqrt(J(1-J)/num_perm) a perfectly min-wise independent family would give."""
    from datasketch import MinHash

    from dedup_throughput import shingle_bytes

    pairs = [(p, x) for p, x in jac.items() if x >= 0.2]
    i = np.array([p[0] for p, _ in pairs])
    j = np.array([p[1] for p, _ in pairs])
    exact = np.array([x for _, x in pairs])
    sets = [shingle_bytes(t, config.shingle_size) for t in texts]
    out: dict = {"pairs": len(pairs), "seeds": seeds,
                 "ideal_rmse": round(float(np.sqrt(np.mean(exact * (1 - exact) / config.num_perm))), 4)}  # fmt: skip
    for name in ("ours", "datasketch"):
        bias, rmse = [], []
        for seed in range(1, seeds + 1):
            if name == "ours":
                sig = MinHasher(DedupConfig(num_perm=config.num_perm, shingle_size=config.shingle_size,
                                            seed=seed)).signatures(texts)  # fmt: skip
            else:
                sig = np.array(
                    [m.hashvalues for m in MinHash.generator(sets, num_perm=config.num_perm, seed=seed)]
                )
            err = (sig[i] == sig[j]).mean(axis=1) - exact
            bias.append(round(float(err.mean()), 4))
            rmse.append(round(float(np.sqrt((err**2).mean())), 4))
        out[name] = {
            "bias_each_seed": bias,
            "rmse_each_seed": rmse,
            "rmse_mean": round(float(np.mean(rmse)), 4),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", type=int, default=2000)
    ap.add_argument("--unrelated", type=int, default=2000)
    ap.add_argument("--thresholds", default="0.5,0.7,0.85")
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--shingle-size", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="of the corpus")
    ap.add_argument("--seeds", type=int, default=3, help="hash seeds for the estimator's error")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    texts = build(args.families, args.unrelated, args.seed)
    t = time.perf_counter()
    jac = all_pairs_jaccard(texts, args.shingle_size)
    n = len(texts)
    print(f"{n} documents; {len(jac)} pairs share a shingle (brute force in {time.perf_counter() - t:.1f} s)")
    base = DedupConfig(num_perm=args.num_perm, shingle_size=args.shingle_size)
    sig = MinHasher(base).signatures(texts)
    est = estimator_error(texts, jac, base, args.seeds)
    print(
        f"estimate of J over {est['pairs']} pairs with J >= 0.2, {args.seeds} seeds (ideal rmse {est['ideal_rmse']}):"
    )
    for name in ("ours", "datasketch"):
        e = est[name]
        print(f"  {name:10s} bias {e['bias_each_seed']}  rmse {e['rmse_each_seed']}")
    results = {}
    for threshold in [float(x) for x in args.thresholds.split(",")]:
        config = DedupConfig(num_perm=args.num_perm, shingle_size=args.shingle_size, threshold=threshold)
        loose = DedupConfig(**{**config.__dict__, "verify": False})
        methods = {
            "ours": near_duplicate_clusters(sig, config),
            "ours_verify_off": near_duplicate_clusters(sig, loose),
            "ours_exact_verify": near_duplicate_clusters(sig, config, texts=texts),
            "datasketch": datasketch_clusters(texts, config),
        }
        results[str(threshold)] = {
            "bands_rows": list(config.lsh()),
            "bands_rows_verify_off_and_datasketch": list(loose.lsh()),
        } | {name: score(cluster_pairs(c), jac, threshold) for name, c in methods.items()}
        print(
            f"threshold {threshold}: (bands, rows) {config.lsh()}, without verification and in datasketch "
            f"{loose.lsh()}"
        )
        for name in methods:
            r = results[str(threshold)][name]
            print(f"  {name:18s} precision {r['precision']:.4f} recall {r['recall']:.4f} f1 {r['f1']:.4f} "
                  f"({r['reported_pairs']} reported, {r['true_pairs']} true)")  # fmt: skip
        print("  share of pairs reported, by exact Jaccard:")
        print("    " + " ".join(f"{b:>9s}" for b in results[str(threshold)]["ours"]["by_jaccard"]))
        for name in methods:
            rates = [v["rate"] for v in results[str(threshold)][name]["by_jaccard"].values()]
            print(f"    {' '.join('        -' if x is None else f'{x:9.4f}' for x in rates)}  {name}")
    if args.json:
        out = {"command": "python " + " ".join(sys.argv), "python": platform.python_version(), "documents": n,
               "pairs_sharing_a_shingle": len(jac), "num_perm": args.num_perm, "shingle_size": args.shingle_size,
               "estimator": est, "thresholds": results}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
