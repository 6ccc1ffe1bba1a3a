"""MinHash signatures of code documents, computed in bulk with numpy; exact and estimated Jaccard.

Definitions (the reference functions `tokens`, `shingles` and `jaccard` spell them out in plain Python):

- **Token**: a maximal run of ASCII letters, digits, `_` and non-ASCII characters. Operators, brackets,
  quotes and whitespace only separate tokens. For code this keeps identifiers, keywords, numbers and the
  words of strings and comments, and makes a re-indented or re-formatted copy (black vs. hand layout,
  CRLF, tabs) look identical. Punctuation tokens would double the token count (and the cost) while
  adding shingles like `) : return` that nearly every file shares.
- **Shingle**: `shingle_size` consecutive tokens; a document is the *set* of its shingles. A document with
  fewer tokens than `shingle_size` (but at least one) has one shingle: its whole token sequence. A
  document without tokens has no shingles and gets the `EMPTY` signature, which never matches anything.

Hashing, all vectorised over a batch of documents joined into one byte buffer:

1. Each token's UTF-8 bytes get a 64-bit polynomial hash from a prefix sum (mod 2^64, odd base),
   then the MurmurHash3 64-bit finaliser. No Python-level loop per token, and the hash is a pure function
   of the bytes, so it is the same in every process and run (unlike Python's salted `hash()`).
2. A shingle's 64-bit hash is the finalised sum of its token hashes times per-position odd constants.
3. Each of `num_perm` hash functions is Dietzfelbinger's multiply-add-shift `(a*x + b) mod 2^64 >> 32`
   on the shingle hash's top 32 bits `x`, with `a`, `b` 64-bit values drawn from splitmix64(seed). That
   family is 2-universal into 32 bits; the minimum is taken over the full 64-bit value, which has the same
   argmin as its top 32 bits, so the shift is applied to `num_perm` minima instead of every shingle.

Limits: the token and shingle hashes are 64-bit, so two different shingles can collide (probability
about n^2 / 2^65 within a document of n shingles; the permutation input keeps 32 bits, so about
n^2 / 2^33 there, i.e. ~1 collision in a 100k-shingle file, which moves an estimate negligibly). The
polynomial hash mod 2^64 has known crafted collisions (Thue-Morse strings thousands of bytes long); it is
not meant to resist an adversary. Memory is about 40 bytes per input byte of the largest batch (batches are
~512 KiB unless one document is larger) plus 8192 x num_perm x 8 bytes of products (8 MiB at 128).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "EMPTY",
    "DedupConfig",
    "VERIFIED_WEIGHTS",
    "MinHasher",
    "estimate_jaccard",
    "is_empty",
    "jaccard",
    "lsh_params",
    "shingles",
    "tokens",
]

#: Value of every slot of the signature of a document without tokens (no real signature is all EMPTY
#: except with probability 2^-(32 x num_perm)).
EMPTY = np.uint32(0xFFFFFFFF)

_MASK64 = (1 << 64) - 1
_TOKEN_RE = re.compile(r"[0-9A-Za-z_\u0080-\U0010ffff]+")

#: (false positive, false negative) weights of `lsh_params` when candidate pairs are verified.
VERIFIED_WEIGHTS = (0.2, 0.8)
_BASE = 0x9E3779B97F4A7C15 | 1  # odd, so invertible mod 2^64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_BATCH_BYTES = 1 << 19  # documents are hashed in ~512 KiB buffers: large enough to amortise numpy calls
_CHUNK = 8192  # shingles per (num_perm, chunk) product block: 8 MiB at 128 permutations (measured best)


def tokens(text: str) -> list[str]:
    """The tokens of `text` (reference definition; `MinHasher` computes the same on bytes)."""
    return _TOKEN_RE.findall(text)


def shingles(text: str, shingle_size: int = 5) -> set[tuple[str, ...]]:
    """The shingle set of `text`: runs of `shingle_size` tokens, or the whole sequence if shorter."""
    toks = tokens(text)
    if len(toks) < shingle_size:
        return {tuple(toks)} if toks else set()
    return {tuple(toks[i : i + shingle_size]) for i in range(len(toks) - shingle_size + 1)}


def jaccard(text_a: str, text_b: str, shingle_size: int = 5) -> float:
    """Exact Jaccard similarity of the two shingle sets; 0.0 when either text has no tokens."""
    a, b = shingles(text_a, shingle_size), shingles(text_b, shingle_size)
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def is_empty(signatures: np.ndarray) -> np.ndarray | bool:
    """Whether a signature (or each row of a signature matrix) is the `EMPTY` signature."""
    return np.all(signatures == EMPTY, axis=-1)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal slots: an unbiased estimate of the Jaccard similarity (std about
    sqrt(J(1-J)/num_perm)). 0.0 when either signature is `EMPTY`."""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signatures differ in shape: {sig_a.shape} vs {sig_b.shape}")
    if is_empty(sig_a) or is_empty(sig_b):
        return 0.0
    return float(np.count_nonzero(sig_a == sig_b)) / sig_a.shape[-1]


@functools.lru_cache(maxsize=64)
def lsh_params(
    threshold: float, num_perm: int, *, weights: tuple[float, float] = (0.5, 0.5)
) -> tuple[int, int]:
    """(bands, rows) with bands x rows <= num_perm minimising the weighted false-positive area
    w_fp * integral_0^t P(s) ds plus false-negative area w_fn * integral_t^1 (1 - P(s)) ds, where
    P(s) = 1 - (1 - s^rows)^bands is the chance that a pair of similarity s shares a band.

    The rule of datasketch's `MinHashLSH` (same loop order, first strict minimum wins). P is a polynomial
    of degree <= num_perm, so Gauss-Legendre quadrature with num_perm // 2 + 1 nodes integrates it exactly."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    nodes, w = np.polynomial.legendre.leggauss(num_perm // 2 + 1)
    s_lo, w_lo = (nodes + 1) * threshold / 2, w * threshold / 2  # nodes mapped onto [0, t]
    s_hi, w_hi = threshold + (nodes + 1) * (1 - threshold) / 2, w * (1 - threshold) / 2  # onto [t, 1]
    best, best_err = (0, 0), float("inf")
    for b in range(1, num_perm + 1):
        r = np.arange(1, num_perm // b + 1, dtype=np.float64)[:, None]  # (R, 1)
        fp = (1 - (1 - s_lo[None, :] ** r) ** b) @ w_lo  # (R,)
        fn = ((1 - s_hi[None, :] ** r) ** b) @ w_hi
        err = weights[0] * fp + weights[1] * fn
        i = int(np.argmin(err))
        if err[i] < best_err:
            best, best_err = (b, i + 1), float(err[i])
    return best


def _token_bytes(buf: np.ndarray) -> np.ndarray:
    """Which bytes belong to tokens: ASCII letters, digits, `_`, and every byte of a multi-byte UTF-8
    sequence (>= 0x80). The byte-level twin of `_TOKEN_RE`, since every non-ASCII character encodes to
    bytes >= 0x80 only. Comparisons rather than a lookup table: numpy gathers are ~6x slower."""
    is_token = (buf | np.uint8(0x20)) - np.uint8(ord("a")) < 26  # setting bit 0x20 lowercases A-Z
    is_token |= buf - np.uint8(ord("0")) < 10  # uint8 wraps, so one comparison checks a range
    is_token |= buf >= 0x80
    is_token |= buf == ord("_")
    return is_token


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, elementwise (wrapping uint64 arithmetic); a bijection."""
    x = x ^ (x >> np.uint64(33))
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


def _splitmix64(seed: int, n: int) -> list[int]:
    """n 64-bit values from splitmix64 seeded with `seed`: plain integer arithmetic, so the permutations
    do not depend on numpy's random generators (whose streams may change between versions)."""
    out, state = [], seed & _MASK64
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append(z ^ (z >> 31))
    return out


@dataclass(frozen=True)
class DedupConfig:
    """Near-dedup settings. `verify` keeps an LSH candidate pair only if its estimated (or, given texts,
    exact) Jaccard similarity reaches `threshold`. `bands` x `rows` of the LSH: both None picks them with
    `lsh_params` for the threshold, weighing false positives and negatives (0.5, 0.5) as datasketch does
    without `verify`, and (0.2, 0.8) with it, since the check removes false positives but cannot bring
    back a missed pair (measured in benchmarks/dedup_quality.py); one given, the other is num_perm // it."""

    num_perm: int = 128
    shingle_size: int = 5
    threshold: float = 0.7
    bands: int | None = None
    rows: int | None = None
    seed: int = 1
    verify: bool = True

    def __post_init__(self) -> None:
        if self.num_perm < 1 or self.shingle_size < 1:
            raise ValueError(f"DedupConfig: num_perm and shingle_size must be >= 1, got {self.num_perm}, "
                             f"{self.shingle_size}")  # fmt: skip
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"DedupConfig: threshold must be in (0, 1], got {self.threshold}")
        bands, rows = self.lsh()
        if bands < 1 or rows < 1 or bands * rows > self.num_perm:
            raise ValueError(f"DedupConfig: bands x rows = {bands} x {rows} must be >= 1 and at most "
                             f"num_perm = {self.num_perm}")  # fmt: skip

    def lsh(self) -> tuple[int, int]:
        """(bands, rows) of the LSH index."""
        if self.bands is None and self.rows is None:
            return lsh_params(
                self.threshold, self.num_perm, weights=VERIFIED_WEIGHTS if self.verify else (0.5, 0.5)
            )
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        given = self.bands if self.bands is not None else self.rows
        other = self.num_perm // given if given and given > 0 else 0
        return (given, other) if self.bands is not None else (other, given)  # type: ignore[return-value]


class MinHasher:
    """Computes MinHash signatures, shape (num_perm,) uint32, of many texts at once.

    Deterministic for a given (num_perm, shingle_size, seed) across processes, runs and platforms, and
    picklable (cached tables are dropped on pickling), so worker processes can compute signatures that the
    parent compares. Signatures of different configurations must not be compared."""

    def __init__(self, config: DedupConfig | None = None) -> None:
        config = config or DedupConfig()
        num_perm, shingle_size, seed = config.num_perm, config.shingle_size, config.seed
        self.num_perm, self.shingle_size, self.seed = num_perm, shingle_size, seed
        ab = _splitmix64(seed, 2 * num_perm)
        self._a = np.array(ab[:num_perm], dtype=np.uint64)
        self._b = np.array(ab[num_perm:], dtype=np.uint64)
        # per-position odd multipliers, so a shingle's hash depends on the order of its tokens
        self._pos = np.array([v | 1 for v in _splitmix64(0x5EED, shingle_size)], dtype=np.uint64)
        self._pow: np.ndarray | None = None  # _BASE^i, then _BASE^-i, grown on demand
        self._inv: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pow": None, "_inv": None}

    def __repr__(self) -> str:
        return f"MinHasher(num_perm={self.num_perm}, shingle_size={self.shingle_size}, seed={self.seed})"

    def signature(self, text: str) -> np.ndarray:
        """MinHash signature of one text, shape (num_perm,) uint32."""
        return self.signatures([text])[0]

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """MinHash signatures, shape (len(texts), num_perm) uint32, in input order."""
        parts: list[np.ndarray] = []
        for blobs in _batches(texts):
            sh, counts = self._shingle_batch(blobs)
            parts.append(self._minhash(sh, counts))
        return np.concatenate(parts) if parts else np.empty((0, self.num_perm), dtype=np.uint32)

    def shingle_hashes(self, texts: Iterable[str]) -> list[np.ndarray]:
        """Per text, the sorted distinct 64-bit hashes of its shingles (for exact Jaccard checks)."""
        out: list[np.ndarray] = []
        for blobs in _batches(texts):
            sh, counts = self._shingle_batch(blobs)
            out.extend(_sorted_distinct(part) for part in np.split(sh, np.cumsum(counts)[:-1]))
        return out

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._pow is None or len(self._pow) < n:
            size = max(n, 2 * len(self._pow) if self._pow is not None else _BATCH_BYTES + 1)
            tables = []
            for base in (_BASE, _BASE_INV):
                t = np.full(size, base, dtype=np.uint64)
                t[0] = 1
                tables.append(np.cumprod(t, out=t))  # wraps mod 2^64, as intended
            self._pow, self._inv = tables
        assert self._inv is not None
        return self._pow, self._inv

    def _token_hashes(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Hashes (T,) uint64 and start offsets (T,) of the tokens in `data`."""
        buf = np.frombuffer(data, dtype=np.uint8)
        edges = np.flatnonzero(np.diff(_token_bytes(buf), prepend=False, append=False))
        starts, ends = edges[0::2], edges[1::2]  # runs of token bytes alternate start, end
        pw, inv = self._powers(len(buf) + 1)
        prefix = np.zeros(len(buf) + 1, dtype=np.uint64)
        vals = buf.astype(np.uint64)
        vals += np.uint64(1)  # no byte contributes zero
        vals *= pw[: len(buf)]
        np.cumsum(vals, out=prefix[1:])
        # (prefix[e] - prefix[s]) = sum_t c_{s+t} B^(s+t); times B^-s it no longer depends on the position
        h = prefix[ends] - prefix[starts]
        h *= inv[starts]
        return _fmix64(h), starts

    def _shingle_batch(self, blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """64-bit shingle hashes of a batch, grouped by document in input order, and the count per document.
        Duplicates within a document are kept (the minimum does not care)."""
        k = self.shingle_size
        th, starts = self._token_hashes(b"\n".join(blobs))  # "\n" is no token byte: no token spans two docs
        lens = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        doc_start = np.zeros(len(blobs), dtype=np.int64)
        np.cumsum(lens[:-1] + 1, out=doc_start[1:])
        first = np.searchsorted(starts, doc_start)  # (D,) index of each document's first token
        ntok = np.diff(first, append=len(starts))
        acc = th * self._pos[0]  # acc[i] = sum_j th[i+j] * pos[j], windows cut at the end of the batch
        for j in range(1, k):
            acc[:-j] += th[j:] * self._pos[j]
        short = np.flatnonzero((ntok > 0) & (ntok < k))
        if len(short):  # a short document's one shingle must not reach into the next document
            s, m = first[short], ntok[short]
            val = th[s] * self._pos[0]
            for j in range(1, k - 1):
                sel = m > j
                val[sel] += th[s[sel] + j] * self._pos[j]
            acc[s] = val
        counts = np.where(ntok >= k, ntok - k + 1, np.minimum(ntok, 1))  # shingles per document
        seg = np.cumsum(counts) - counts
        pos = np.repeat(first - seg, counts) + np.arange(counts.sum())  # window starts, grouped by doc
        return _fmix64(acc[pos]), counts

    def _minhash(self, sh: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Minima of (a*x + b) over each document's shingles x, per permutation, in cache-sized chunks."""
        x = sh >> np.uint64(32)  # the family is 2-universal for 32-bit keys
        out = np.full((self.num_perm, len(counts)), np.iinfo(np.uint64).max, dtype=np.uint64)
        nonempty = np.flatnonzero(counts)
        seg = (np.cumsum(counts) - counts)[nonempty]  # (D',) first shingle of each non-empty document
        a, b = self._a[:, None], self._b[:, None]
        buf = np.empty((self.num_perm, _CHUNK), dtype=np.uint64)
        for c0 in range(0, len(x), _CHUNK):
            c1 = min(c0 + _CHUNK, len(x))
            # (num_perm, c): permutations along rows, so each document's shingles are a contiguous run
            # of every row, which np.minimum.reduceat scans several times faster than strided columns
            block = buf[:, : c1 - c0]
            np.multiply(a, x[None, c0:c1], out=block)
            block += b
            d0 = int(np.searchsorted(seg, c0, side="right")) - 1  # documents overlapping [c0, c1)
            d1 = int(np.searchsorted(seg, c1, side="left"))
            local = np.maximum(seg[d0:d1], c0) - c0  # strictly increasing, starts at 0
            cols = nonempty[d0:d1]
            out[:, cols] = np.minimum(out[:, cols], np.minimum.reduceat(block, local, axis=1))
        sig = (out.T >> np.uint64(32)).astype(np.uint32)  # (D, num_perm)
        sig[counts == 0] = EMPTY
        return sig


def _sorted_distinct(x: np.ndarray) -> np.ndarray:
    """np.unique for 1-D integers by sort and compare (numpy 2's np.unique is far slower on large input)."""
    x = np.sort(x)
    keep = np.ones(len(x), dtype=bool)
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


def _batches(texts: Iterable[str]) -> Iterable[list[bytes]]:
    """UTF-8 encodings of `texts` in groups of about `_BATCH_BYTES` (a larger document goes alone)."""
    batch: list[bytes] = []
    size = 0
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"expected str documents, got {type(text).__name__}")
        blob = text.encode("utf-8", "surrogatepass")
        if batch and size + len(blob) > _BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(blob)
        size += len(blob) + 1
    if batch:
        yield batch
