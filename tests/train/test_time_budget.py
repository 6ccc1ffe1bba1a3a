"""`train.budget.TimeBudget`: the step count a wall-time budget fits, on a clock the test drives."""

import pytest

pytest.importorskip("torch")

from codefoundry.train import budget as B  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_fits_after_the_warmup_refits_as_the_speed_drifts_and_never_exceeds_the_steps_asked(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(B, "time", clock)
    budget = B.TimeBudget(100.0, 1000, 0)
    fits = {}
    seconds_per_step = 0.5
    for step in range(1, 200):
        clock.now += seconds_per_step
        if step == 40:
            seconds_per_step = 1.0  # the machine slows down
        fit = budget.after_step(step, warmup=30, eval_every=25, elapsed_s=10.0 + clock.now)
        if fit is not None:
            fits[step] = fit
        if budget.fitted is not None and step >= budget.fitted:
            break
    first = 30 + int((100 * (1 - B.RESERVE) - 10 - 15) / 0.5)  # timed from step FIT_SKIP at 0.5 s a step
    assert list(fits)[0] == 30 and fits[30] == first
    assert fits[50] < fits[30]  # slower since step 40: fewer steps fit
    assert all(s % 25 == 0 for s in list(fits)[1:]) and max(fits) < 0.8 * fits[30]
    assert B.TimeBudget(1e6, 300, 0).steps_asked == 300
    roomy = B.TimeBudget(1e6, 300, 0)
    assert [roomy.after_step(s, warmup=0, eval_every=0, elapsed_s=s) for s in range(1, 22)][-2:] == [
        300,
        None,
    ]
