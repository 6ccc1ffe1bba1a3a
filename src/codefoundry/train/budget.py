"""A wall-time budget for a pretraining run (`PretrainConfig.time_budget_s`): the run's step count is
fitted to the step time it measures, so that "ten minutes" means ten minutes on any machine.

The first fit comes after the warmup (and FIT_AFTER steps of the process, timed from step FIT_SKIP);
later fits at each evaluation until 80% of the steps, as a machine's speed drifts. Each fit sets the step
count to what the time left leaves room for, less RESERVE of the budget for evaluations, saving and the
final checks, never above the steps asked for; the cosine schedule then ends at that step (a refit moves
the end, so the learning rate can step a little). The count is saved in the checkpoint, so a resumed run
starts from it. Being timed, a budgeted run's step count is not reproducible: `--steps` alone is.
"""

from __future__ import annotations

import time

FIT_SKIP, FIT_AFTER = 5, 20  # steps of a process: timed from FIT_SKIP, first fitted at FIT_AFTER (at least)
RESERVE = 0.08  # of the budget, for evaluations, saving and the final checks


class TimeBudget:
    def __init__(self, budget_s: float, steps_asked: int, start_step: int, fitted: int | None = None) -> None:
        self.budget_s, self.steps_asked, self.start_step = budget_s, steps_asked, start_step
        self.fitted = fitted  # the step count chosen last (None: not yet)
        self.mark = (0.0, start_step)  # (time, step) the step time is measured from

    def after_step(self, step: int, *, warmup: int, eval_every: int, elapsed_s: float) -> int | None:
        """The step count to train to, when this step is one to fit at; else None."""
        ran, now = step - self.start_step, time.perf_counter()
        if ran == FIT_SKIP:
            self.mark = (now, step)
        again = self.fitted is not None and eval_every and step % eval_every == 0 and step < 0.8 * self.fitted
        if ran < FIT_AFTER or step < warmup or not (self.fitted is None or again):
            return None
        per_step = max(now - self.mark[0], 1e-9) / (step - self.mark[1])
        room = self.budget_s * (1 - RESERVE) - elapsed_s
        self.mark = (now, step)
        self.fitted = min(self.steps_asked, step + max(0, int(room / per_step)))
        return self.fitted
