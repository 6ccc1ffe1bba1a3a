"""LLM-as-a-judge through the one backend interface: rubric scores, pairwise preferences with a position
swap to cancel order bias, and agreement with a reference (execution verdicts or human labels).

Execution stays the verdict for correctness (`tasks.evaluate`); a judge model is for what tests cannot
see (readability, explanation quality) and for studying how well judges track execution.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from codefoundry.models.backends import Backend, SamplingParams
from codefoundry.tasks import metrics

DEFAULT_RUBRIC = (
    "Score the solution from 1 to 10 for how well it solves the task: 10 = correct, handles edge cases, "
    "clear; 5 = partly correct or hard to follow; 1 = wrong or unrelated."
)
_SCORE = re.compile(r"score\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_VERDICT = re.compile(r"verdict\s*[:=]\s*\**\s*(A|B|tie)\b", re.IGNORECASE)
_GREEDY = SamplingParams(n=1, temperature=0.0, max_tokens=512)


@dataclass(frozen=True)
class RubricScore:
    score: float | None  # None when the answer holds no parseable score
    raw: str


@dataclass(frozen=True)
class PairwiseVerdict:
    first: str  # "A", "B" or "tie", in the original order (A = first candidate)
    swapped: str  # the verdict with the candidates swapped, mapped back to the original labels
    final: str  # agreed verdict, or "tie" when the two orders disagree


def rubric_messages(task: str, code: str, rubric: str = DEFAULT_RUBRIC) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a strict reviewer of code. End your answer with 'Score: N'."},
        {"role": "user", "content": f"{rubric}\n\nTask:\n{task}\n\nSolution:\n```python\n{code}\n```"},
    ]


def pairwise_messages(task: str, code_a: str, code_b: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You compare two solutions. End with 'Verdict: A', 'Verdict: B' or 'Verdict: tie'."},
        {"role": "user", "content": f"Task:\n{task}\n\nSolution A:\n```python\n{code_a}\n```\n\n"
                                    f"Solution B:\n```python\n{code_b}\n```\n\nWhich solution is better?"},
    ]  # fmt: skip


def parse_score(text: str, *, low: float = 1, high: float = 10) -> float | None:
    found = _SCORE.findall(text)
    if not found:
        return None
    value = float(found[-1])
    return value if low <= value <= high else None


def parse_verdict(text: str) -> str:
    found = _VERDICT.findall(text)
    return {"a": "A", "b": "B", "tie": "tie"}[found[-1].lower()] if found else "tie"


def rubric_scores(backend: Backend, items: Sequence[tuple[str, str]], *, rubric: str = DEFAULT_RUBRIC,
                  params: SamplingParams = _GREEDY) -> list[RubricScore]:  # fmt: skip
    """Score (task, code) pairs, one chat per pair."""
    answers = backend.chat([rubric_messages(t, c, rubric) for t, c in items], params)
    return [RubricScore(parse_score(a[0]), a[0]) for a in answers]


def pairwise(backend: Backend, items: Sequence[tuple[str, str, str]], *,
             params: SamplingParams = _GREEDY) -> list[PairwiseVerdict]:  # fmt: skip
    """Compare (task, code_a, code_b) in both orders; keep a preference only when both orders agree."""
    forward = backend.chat([pairwise_messages(t, a, b) for t, a, b in items], params)
    backward = backend.chat([pairwise_messages(t, b, a) for t, a, b in items], params)
    first = [parse_verdict(x[0]) for x in forward]
    raw_swapped = [parse_verdict(x[0]) for x in backward]  # in the swapped order's labels
    final = metrics.debias_pairwise(first, raw_swapped)
    return [PairwiseVerdict(f, _mirror(s), v) for f, s, v in zip(first, raw_swapped, final, strict=True)]


def _mirror(verdict: str) -> str:
    return {"A": "B", "B": "A", "tie": "tie"}[verdict]


def agreement_with(reference: Sequence[object], judged: Sequence[object]) -> dict[str, float]:
    """Raw agreement and Cohen's kappa between a judge's labels and reference labels."""
    return metrics.agreement(list(reference), list(judged))
