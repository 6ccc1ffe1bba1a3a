"""LLM-as-a-judge: rubric parsing, position-swap debiasing and agreement, with scripted judge models
that implement the backend protocol (fakes, not mocks)."""

import re

from codefoundry.models.backends import SamplingParams
from codefoundry.tasks import llm_judge
from codefoundry.tasks.llm_judge import pairwise, parse_score, parse_verdict, rubric_scores


class _FirstPositionJudge:
    """Always prefers whichever solution is shown first: pure order bias."""

    name = "fake:first"

    def complete(self, prompts, params):
        raise NotImplementedError

    def chat(self, conversations, params: SamplingParams):
        return [["Both look fine, but I lean to the first. Verdict: A"] * params.n for _ in conversations]


class _ReturnsSumJudge:
    """Prefers the solution that computes a + b (a judge with real, order-independent taste), and scores
    solutions 9 or 2 by the same rule."""

    name = "fake:sum"

    def complete(self, prompts, params):
        raise NotImplementedError

    def chat(self, conversations, params: SamplingParams):
        out = []
        for messages in conversations:
            text = messages[-1]["content"]
            blocks = re.findall(r"```python\n(.*?)```", text, re.S)
            if len(blocks) == 2:
                good = ["a + b" in b for b in blocks]
                verdict = "tie" if good[0] == good[1] else ("A" if good[0] else "B")
                out.append([f"Reasoning... Verdict: {verdict}"] * params.n)
            else:
                out.append([f"Score: {9 if 'a + b' in blocks[0] else 2}"] * params.n)
        return out


GOOD = "def add(a, b):\n    return a + b\n"
BAD = "def add(a, b):\n    return a - b\n"
TASK = "Write add(a, b) returning the sum."


def test_parsers():
    assert parse_score("blah\nScore: 7") == 7 and parse_score("score = 3.5 then Score: 8") == 8
    assert parse_score("no score here") is None and parse_score("Score: 42") is None
    assert parse_verdict("Verdict: **B**") == "B" and parse_verdict("verdict: tie") == "tie"
    assert parse_verdict("I cannot decide") == "tie"


def test_position_swap_removes_order_bias():
    items = [(TASK, GOOD, BAD), (TASK, BAD, GOOD)]
    biased = pairwise(_FirstPositionJudge(), items)
    assert [v.first for v in biased] == ["A", "A"]  # the raw judge says "first" both times
    assert [v.final for v in biased] == ["tie", "tie"]  # swapping exposes that it is only order
    fair = pairwise(_ReturnsSumJudge(), items)
    assert [v.final for v in fair] == ["A", "B"]
    assert all(v.first == v.swapped for v in fair)


def test_rubric_scores_and_agreement_with_execution():
    items = [(TASK, GOOD), (TASK, BAD), (TASK, GOOD), (TASK, BAD)]
    scores = rubric_scores(_ReturnsSumJudge(), items)
    assert [s.score for s in scores] == [9, 2, 9, 2]
    passed = [True, False, True, False]  # what execution says
    judged = [s.score >= 5 for s in scores]
    stats = llm_judge.agreement_with(passed, judged)
    assert stats["agreement"] == 1.0 and stats["kappa"] == 1.0
