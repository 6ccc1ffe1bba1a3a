"""Held-out pass@1 of a policy: sample (or decode greedily) completions for problems the policy never
trained on and score them in the sandbox with `evaluate_many`, the same verdict the RL reward uses.

pass@1 is the unbiased estimator over n samples per problem (n = 1 and temperature 0 is greedy pass@1),
with a percentile-bootstrap confidence interval over problems (`tasks.metrics.pass_at_k_with_ci`).
Samples that hit a sandbox error are left out of their problem's count (a problem left with none is
dropped) and reported as `sandbox_errors`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from codefoundry.models.sampling import child_seed
from codefoundry.models.transformer import Transformer
from codefoundry.sandbox import Limits
from codefoundry.tasks.metrics import pass_at_k_with_ci
from codefoundry.tasks.problem import Problem, evaluate_many
from codefoundry.train.rl.rollout import PromptCodec, sample_completions

__all__ = ["evaluate_pass_at_1"]


def evaluate_pass_at_1(
    model: Transformer, tokenizer, problems: Sequence[Problem], *, n: int = 1, temperature: float = 0.0,
    top_p: float = 1.0, max_new_tokens: int = 64, seed: int = 0, chat: bool = False,
    limits: Limits | None = None, workers: int | None = None, batch_rows: int = 64,
) -> dict[str, Any]:  # fmt: skip
    """{"pass@1", "low", "high", "problems", "samples", "sandbox_errors", "seconds"} for `problems`.
    Greedy when `temperature` is 0 (then one sample per problem whatever `n` says)."""
    if not problems:
        raise ValueError("evaluate_pass_at_1: no problems to evaluate")
    if n < 1:
        raise ValueError(f"evaluate_pass_at_1: n must be >= 1, got {n}")
    t0 = time.perf_counter()
    n = 1 if temperature == 0 else n
    codec = PromptCodec(tokenizer, chat=chat)
    rows = [p for p in problems for _ in range(n)]
    was_training = model.training
    model.eval()
    completions: list[str] = []
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        part = sample_completions(
            model, codec, chunk, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            seed=[child_seed(seed, start + j) for j in range(len(chunk))],
        )  # fmt: skip
        completions += part.completions
    model.train(was_training)
    scores = evaluate_many(
        list(zip(rows, completions, strict=True)), limits=limits, workers=workers, progress=False
    )
    results: dict[str, list[bool]] = {}
    errors = 0
    for problem, score in zip(rows, scores, strict=True):
        if score.infrastructure_error:
            errors += 1
            continue
        results.setdefault(problem.task_id, []).append(score.passed)
    if not results:
        raise RuntimeError(f"evaluate_pass_at_1: every one of {len(rows)} samples hit a sandbox error")
    ci = pass_at_k_with_ci(results, [1], seed=seed)["pass@1"]
    return {
        "pass@1": ci["mean"],
        "low": ci["low"],
        "high": ci["high"],
        "problems": len(results),
        "samples": sum(map(len, results.values())),
        "sandbox_errors": errors,
        "seconds": time.perf_counter() - t0,
    }
