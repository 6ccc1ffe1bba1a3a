"""Decontamination: drop documents that share a long token n-gram with a benchmark's problems, reference
solutions or tests (HumanEval, MBPP, the built-in set, and any file the user names).

Tokens are the runs of `\\w` characters of the lower-cased text (`re.findall(r"\\w+", text.lower())`), so
whitespace, indentation, line breaks, operators and punctuation, quote style and letter case are all
invisible: a solution reformatted by black, re-indented with tabs, squeezed onto fewer lines or with `'`
swapped for `"` still yields the same token sequence. Renaming an identifier, or inserting a comment, breaks
the n-gram runs at that point only; any stretch of `ngram` (default 13) unchanged tokens still matches.

What is indexed, per problem: the prompt followed by the canonical solution (one text, so n-grams that
straddle the seam count), the tests, and for MBPP the task statement. `mbpp` and `mbpp-sanitized` mean every
split of that variant (prompt, train, validation and test): a model trained on MBPP's train split has seen
text shared with its test split. Other names load through `codefoundry.tasks.registry.TASKS` as they are
(`builtin` is the built-in test split, `builtin-all` both splits). An extra file is one benchmark named by
its file name: a `.jsonl` (or `.jsonl.gz`) file contributes each record's prompt/canonical_solution/
solution/code/completion/text/test/tests fields (or, with none of those, all its string fields); any other
file is one text.

Skipped n-grams: those with fewer than `min_distinct` different tokens or fewer than `min_alpha` word
tokens (two or more characters, one a letter). Number runs from the tests' literals (`1 0 2 0 3 9 4 0 ...`)
and letter runs (`a b c d e ...`) would otherwise match data tables and test strings everywhere. With the
defaults, none of the 1,786 `.py` files of CPython 3.11's standard library is flagged (at ngram=10, 14 are,
all on shared boilerplate such as `def __init__(self, a, b): self.a = a; self.b = b`), and 9 of 22,521
site-packages files are: nested index loops and `__init__` boilerplate shared with MBPP and HumanEval,
HumanEval/19's `'one': 1, 'two': 2, ...` table in number-name maps (rich, sympy), and a path-compressing
union-find `find` shared with the built-in set (torch.fx).

The index is a sorted numpy array of 64-bit n-gram hashes with a parallel bit mask of the benchmarks each
came from; a lookup is one `np.searchsorted` per document. Hashes are a polynomial over per-token random
64-bit values drawn from a fixed seed for the sorted benchmark vocabulary, so they are the same in every
process; tokens outside the benchmark vocabulary cannot be part of a match and are never hashed. The index
pickles to about 1 MB, or each worker rebuilds it from its `DecontamConfig` (about a second).

Limits: exact n-gram overlap, no fuzzy matching; a solution translated to another language, paraphrased, or
with every identifier renamed is not caught, and a benchmark text shorter than `ngram` tokens (160 of MBPP's
974 reference solutions, though their tests and statements are indexed too) can only be caught through its
other texts. A collision between two different n-grams' 64-bit hashes is possible but has probability about
(index size) / 2**64 per lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ContaminationIndex", "DecontamConfig", "benchmark_texts", "contaminated_by", "tokenize"]

_TOKEN = re.compile(r"\w+")
_SEED = 0x5EED_DEC0
_MULTIPLIER = np.uint64(0x9E37_79B9_7F4A_7C15)  # odd, so multiplication mod 2**64 loses no information
_RECORD_FIELDS = ("prompt", "canonical_solution", "solution", "code", "completion", "text", "test", "tests")
_MAX_BENCHMARKS = 64  # one bit each in a uint64 mask


@dataclass(frozen=True)
class DecontamConfig:
    """`ngram` tokens make one n-gram (see the module docstring for the tokenisation); a document is
    contaminated by a benchmark when it shares at least `min_matches` distinct n-grams with it. Benchmark
    n-grams with fewer than `min_distinct` different tokens or `min_alpha` word tokens are not indexed."""

    ngram: int = 13
    min_matches: int = 1
    benchmarks: tuple[str, ...] = ("humaneval", "mbpp", "builtin")
    extra_files: tuple[str, ...] = ()
    min_distinct: int = 4
    min_alpha: int = 3

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.min_matches < 1:
            raise ValueError(
                f"DecontamConfig: ngram ({self.ngram}) and min_matches ({self.min_matches}) must be >= 1"
            )


def tokenize(text: str) -> list[str]:
    """The tokens n-grams are made of: runs of word characters, lower-cased."""
    return _TOKEN.findall(text.lower())


# --- where the benchmark texts come from -------------------------------------------------------------------


def benchmark_texts(names: Sequence[str], extra_files: Sequence[str | Path] = ()) -> dict[str, list[str]]:
    """{benchmark name: its texts}, in the order given: named benchmarks first, then extra files."""
    texts: dict[str, list[str]] = {}
    for name in names:
        if name in texts:
            continue
        texts[name] = [t for problem in _load_problems(name) for t in _problem_texts(problem)]
    file_names = [Path(f).name for f in extra_files]
    for path, short in zip(extra_files, file_names, strict=True):
        label = short if file_names.count(short) == 1 and short not in texts else str(path)
        texts[label] = _file_texts(Path(path))
    return texts


def _load_problems(name: str) -> list:
    from codefoundry.tasks.registry import TASKS

    if name in ("mbpp", "mbpp-sanitized"):
        from codefoundry.tasks import mbpp

        return mbpp.load(variant="full" if name == "mbpp" else "sanitized", split="all")
    if name not in TASKS:
        raise ValueError(f"unknown benchmark {name!r} for decontamination; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


def _problem_texts(problem) -> list[str]:
    texts = [problem.prompt + problem.canonical_solution, "\n".join(problem.tests)]
    statement = problem.metadata.get("text")  # MBPP's task statement
    if isinstance(statement, str):
        texts.append(statement)
    return [t for t in texts if t.strip()]


def _file_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: decontamination file not found")
    if not path.name.endswith((".jsonl", ".jsonl.gz")):
        try:
            return [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    from codefoundry.jsonl import RecordError, iter_records

    texts: list[str] = []
    for line, record in iter_records(path):
        fields = [record[k] for k in _RECORD_FIELDS if k in record] or list(record.values())
        found = [f for f in fields if isinstance(f, str)]
        found += [s for f in fields if isinstance(f, list) for s in f if isinstance(s, str)]
        if not found:
            raise RecordError(f"{path}:{line}: no text field (looked for {', '.join(_RECORD_FIELDS)})")
        texts.extend(found)
    return texts


# --- the index ---------------------------------------------------------------------------------------------


class ContaminationIndex:
    """Hashed n-grams of benchmark texts, each with the set of benchmarks it came from."""

    def __init__(self, texts: Mapping[str, Iterable[str]], *, config: DecontamConfig | None = None) -> None:
        """Build from {benchmark name: texts}; `config` supplies ngram, min_matches and the n-gram filter
        (its `benchmarks` and `extra_files` are not read here: see `from_config`)."""
        self.config = config or DecontamConfig()
        self.names: tuple[str, ...] = tuple(texts)
        if len(self.names) > _MAX_BENCHMARKS:
            raise ValueError(
                f"at most {_MAX_BENCHMARKS} benchmarks and files per index, got {len(self.names)}"
            )
        token_lists = {name: [tokenize(t) for t in group] for name, group in texts.items()}
        vocabulary = sorted({tok for group in token_lists.values() for toks in group for tok in toks})
        self._vocab: dict[str, int] = {tok: i for i, tok in enumerate(vocabulary, start=1)}  # 0: unknown
        # Per-token random values, the same in every process for the same vocabulary.
        self._values = np.random.default_rng(_SEED).integers(
            1, 2**63, size=len(vocabulary) + 1, dtype=np.uint64
        )
        # "word" tokens: two or more characters with a letter (not `0`, `x`, `a b c d ...`)
        alpha = np.array([False] + [len(tok) > 1 and any(c.isalpha() for c in tok) for tok in vocabulary])
        hashes, masks = [np.zeros(0, dtype=np.uint64)], [np.zeros(0, dtype=np.uint64)]
        for bit, name in enumerate(self.names):
            for toks in token_lists[name]:
                h = self._kept_hashes(np.array([self._vocab[t] for t in toks], dtype=np.int64), alpha)
                hashes.append(h)
                masks.append(np.full(len(h), 1 << bit, dtype=np.uint64))
        self._hashes, self._masks = _merge(np.concatenate(hashes), np.concatenate(masks))

    @classmethod
    def from_benchmarks(
        cls,
        names: Sequence[str],
        extra_files: Sequence[str | Path] = (),
        *,
        config: DecontamConfig | None = None,
    ) -> ContaminationIndex:
        """Index the named benchmarks (keys of `codefoundry.tasks.registry.TASKS`) and extra files."""
        return cls(benchmark_texts(names, extra_files), config=config)

    @classmethod
    def from_config(cls, config: DecontamConfig) -> ContaminationIndex:
        return cls.from_benchmarks(config.benchmarks, config.extra_files, config=config)

    def __len__(self) -> int:
        """Distinct n-grams indexed."""
        return len(self._hashes)

    def _window_hashes(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, start positions) of the windows of `ids` (T,) made only of known tokens (id > 0)."""
        n = self.config.ngram
        m = len(ids) - n + 1
        if m <= 0:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        unknown = np.r_[0, np.cumsum(ids == 0)]  # (T+1,)
        whole = np.flatnonzero(unknown[n:] == unknown[:-n])  # (W,) windows without an unknown token
        if len(whole) == 0:
            return np.zeros(0, dtype=np.uint64), whole
        values = self._values[ids]  # (T,)
        h = np.zeros(m, dtype=np.uint64)
        for i in range(n):  # h = sum_i values[j+i] * P^(n-1-i), wrapping mod 2**64
            h = h * _MULTIPLIER + values[i : i + m]
        return h[whole], whole

    def _kept_hashes(self, ids: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """Hashes of the n-grams of one benchmark text that pass the degenerate-n-gram filter."""
        h, starts = self._window_hashes(ids)
        if len(h) == 0:
            return h
        windows = ids[starts[:, None] + np.arange(self.config.ngram)]  # (W, n)
        ordered = np.sort(windows, axis=1)
        distinct = 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(axis=1)
        keep = (distinct >= self.config.min_distinct) & (alpha[windows].sum(axis=1) >= self.config.min_alpha)
        return h[keep]

    def _ids(self, text: str) -> np.ndarray:
        get = self._vocab.get
        return np.array([get(t, 0) for t in tokenize(text)], dtype=np.int64)

    def _hits(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hashes, token start positions, benchmark masks) of the document's n-grams found in the index."""
        h, starts = self._window_hashes(self._ids(text))
        if len(h) == 0 or len(self._hashes) == 0:
            return h[:0], starts[:0], np.zeros(0, dtype=np.uint64)
        at = np.minimum(np.searchsorted(self._hashes, h), len(self._hashes) - 1)
        found = self._hashes[at] == h
        return h[found], starts[found], self._masks[at[found]]

    def counts(self, text: str) -> dict[str, int]:
        """{benchmark: distinct n-grams of `text` found in it}, for the benchmarks with any."""
        hashes, _, masks = self._hits(text)
        if len(masks) == 0:
            return {}
        out = {}
        for bit, name in enumerate(self.names):
            mine = (masks >> np.uint64(bit)) & np.uint64(1) == 1
            if mine.any():
                out[name] = len(np.unique(hashes[mine]))
        return out

    def matches(self, text: str) -> list[str]:
        """The benchmarks `text` shares at least `min_matches` distinct n-grams with, in index order."""
        return [name for name, k in self.counts(text).items() if k >= self.config.min_matches]

    def contaminated(self, text: str) -> str | None:
        """The benchmark to name as the drop reason (the one with most shared n-grams; ties: index order),
        or None when the text is clean."""
        counts = {name: k for name, k in self.counts(text).items() if k >= self.config.min_matches}
        return max(counts, key=counts.__getitem__) if counts else None

    def explain(self, text: str, *, limit: int = 5) -> dict[str, list[str]]:
        """{benchmark: up to `limit` of the shared n-grams as space-joined tokens}, for audits and reports."""
        _, starts, masks = self._hits(text)
        tokens = tokenize(text)
        out: dict[str, list[str]] = {}
        for start, mask in zip(starts.tolist(), masks.tolist(), strict=True):
            gram = " ".join(tokens[start : start + self.config.ngram])
            for bit, name in enumerate(self.names):
                shown = out.setdefault(name, []) if mask >> bit & 1 else None
                if shown is not None and len(shown) < limit and gram not in shown:
                    shown.append(gram)
        return {k: v for k, v in out.items() if v}


def _merge(hashes: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U,) sorted unique hashes, and for each the OR of the masks it was seen with."""
    if len(hashes) == 0:
        return hashes, masks
    order = np.argsort(hashes, kind="stable")
    hashes, masks = hashes[order], masks[order]
    starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
    return hashes[starts], np.bitwise_or.reduceat(masks, starts)


def contaminated_by(index: ContaminationIndex, text: str) -> str | None:
    """The benchmark `text` is contaminated by, or None; the pipeline's drop reason is `contaminated:NAME`."""
    return index.contaminated(text)
