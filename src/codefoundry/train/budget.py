"""A wall-time budget for a pretraining run (`PretrainConfig.time_budget_s`): the run's step count is
fitted to the step time it measures, so that "ten minutes" means ten minutes on any machine.

The first fit comes after the warmup (sooner when the budget cannot hold it: below) and FIT_AFTER steps
of the process, timed from step FIT_SKIP; later fits at each evaluation until 80% of the steps, as a
machine's speed drifts. Each fit sets the step
count to what the time left leaves room for, less RESERVE of the budget for evaluations, saving and the
final checks, never above the steps asked for; the cosine schedule then ends at that step (a refit moves
the end, so the learning rate can step a little). The count is saved in the checkpoint, so a resumed run
starts from it. Being timed, a budgeted run's step count is not reproducible: `--steps` alone is.

A warmup the budget cannot hold: from FIT_AFTER steps on, every warmup step checks whether the warmup
can end in the time left. When it cannot, the fit comes then, and the warmup is shortened to its asked
share of the steps that fit (`warmup * fitted // steps asked`, so the learning rate reaches its peak and
decays inside the budget; it jumps up where the shortened warmup has already ended), saved beside the
count; a one-line warning and the summary's `time_budget.notes` say so. Waiting for the warmup's end ran
a budget that could not hold it for the whole warmup. After a fit, a run whose training has used
1 - RESERVE / 2 of the budget with steps still to go (the steps slowed after the last fit) stops after
that step (`stopped: time_budget`). Before FIT_AFTER steps nothing is timed: a budget spent sooner ends
the run at step FIT_AFTER, and the summary's notes say how much time had gone by then.
"""

from __future__ import annotations

import time
from typing import Any

FIT_SKIP, FIT_AFTER = 5, 20  # steps of a process: timed from FIT_SKIP, first fitted at FIT_AFTER (at least)
RESERVE = 0.08  # of the budget, for evaluations, saving and the final checks


class TimeBudget:
    def __init__(
        self,
        budget_s: float,
        steps_asked: int,
        start_step: int,
        fitted: int | None = None,
        warmup: int | None = None,
    ) -> None:
        self.budget_s, self.steps_asked, self.start_step = budget_s, steps_asked, start_step
        self.fitted = fitted  # the step count chosen last (None: not yet)
        self.warmup = warmup  # the warmup shortened to fit the budget (None: as asked)
        self.mark = (0.0, start_step)  # (time, step) the step time is measured from
        self.notes: dict[str, str] = {}  # what the budget did to the run, for the summary (one per kind)

    def after_step(self, step: int, *, warmup: int, eval_every: int, elapsed_s: float) -> int | None:
        """The step count to train to, when this step is one to fit at; else None. `warmup` is the warmup
        asked for; `self.warmup` says when a fit shortened it."""
        ran, now = step - self.start_step, time.perf_counter()
        if ran == FIT_SKIP:
            self.mark = (now, step)
        if not self.due(step, warmup=warmup, eval_every=eval_every):
            return None
        current = warmup if self.warmup is None else self.warmup
        again = self.fitted is not None and eval_every and step % eval_every == 0 and step < 0.8 * self.fitted
        per_step = max(now - self.mark[0], 1e-9) / (step - self.mark[1])
        room = self.budget_s * (1 - RESERVE) - elapsed_s
        fit = min(self.steps_asked, step + max(0, int(room / per_step)))
        if step < current:
            if fit > current and not again:
                return None  # the warmup ends in time: the first fit comes at its end, as it always did
            if fit <= current:
                self.warmup = min(current, warmup * fit // self.steps_asked)
                self.notes["warmup"] = (
                    f"the budget ({self.budget_s:g} s) could not hold the {warmup}-step warmup at"
                    f" {per_step:.3g} s a step: warmup shortened to {self.warmup} of the {fit} steps that fit"
                )
        if self.fitted is None and room <= 0:
            self.notes["spent"] = (
                f"the budget ({self.budget_s:g} s) was spent ({elapsed_s:.3g} s) by step {step}, the first"
                f" it could be fitted at ({FIT_AFTER} steps are timed first): the run stops there"
            )
        self.mark, self.fitted = (now, step), fit
        return fit

    def due(self, step: int, *, warmup: int, eval_every: int) -> bool:
        """Whether `after_step` may fit at this step. Read from no clock, so the same on every rank while
        `fitted` and `warmup` are (whether a warmup step fits is timed: rank 0's answer must reach them all)."""
        current = warmup if self.warmup is None else self.warmup
        again = self.fitted is not None and eval_every and step % eval_every == 0 and step < 0.8 * self.fitted
        return step - self.start_step >= FIT_AFTER and bool(self.fitted is None or again or step < current)

    def spent(self, elapsed_s: float) -> bool:
        """After a fit: whether training has used 1 - RESERVE / 2 of the budget (half the reserve for
        evaluations, saving and the final checks eaten by steps that took longer than measured)."""
        return self.fitted is not None and elapsed_s >= self.budget_s * (1 - RESERVE / 2)

    def report(self, stopped: str, step: int, warmup_asked: int, warmup: int) -> dict[str, Any]:
        """The summary's `time_budget` record: what was asked, what the budget made of it, and why."""
        notes = dict(self.notes)
        if warmup != warmup_asked and "warmup" not in notes:  # shortened before a resume
            notes["warmup"] = (
                f"the budget could not hold the {warmup_asked}-step warmup: shortened to {warmup}"
            )
        if stopped == "time_budget":
            notes["stopped"] = (
                f"the budget ({self.budget_s:g} s) was spent at step {step} of the {self.fitted} fitted (the"
                " steps slowed after the last fit): stopped there"
            )
        return {
            "budget_s": self.budget_s,
            "steps_asked": self.steps_asked,
            "steps_fitted": self.fitted,
            "warmup_asked": warmup_asked,
            "warmup": warmup,
            "notes": list(notes.values()),
        }
