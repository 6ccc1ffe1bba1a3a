"""Review of session 35's training changes: a time budget's fit under torchrun, where each rank reads its
own clock. Two ranks are played one after the other in this process; `dist.broadcast` is replaced by a
fake that hands rank 1 what rank 0 sent, in order, and records the steps each rank took part at."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from codefoundry.train import budget as B  # noqa: E402
from codefoundry.train import pretrain  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@dataclass(frozen=True)
class Cfg:
    steps: int
    warmup: int
    eval_every: int = 0


class Rank:
    """What `Run.fit_to_budget` reads of a run, for one rank."""

    fit_to_budget = pretrain.Run.fit_to_budget

    def __init__(self, rank: int, clock: Clock) -> None:
        self.ranks = SimpleNamespace(rank=rank, world_size=2, main=rank == 0)
        self.device = torch.device("cpu")
        self.clock, self.step, self.warmup_asked = clock, 0, 100
        self.cfg = Cfg(steps=1000, warmup=100)
        self.budget = B.TimeBudget(100.0, 1000, 0)
        self.logger = SimpleNamespace(set_total=lambda n: None)

    def elapsed(self) -> float:
        return self.clock.now


def test_every_rank_takes_part_in_each_budget_fit_whatever_its_clock_says(monkeypatch, capsys):
    # Rank 0 runs at 1 s a step: at step 20 its warmup of 100 cannot end in the budget, and it fits (and
    # broadcasts) there. Rank 1's clock says 0.5 s: the warmup ends in time, no fit until step 100. Rank 0
    # then waited in a broadcast rank 1 never made (and paired it with rank 1's next collective).
    clock = Clock()
    monkeypatch.setattr(B, "time", clock)
    sent: list[list[int]] = []
    took_part: dict[int, list[int]] = {0: [], 1: []}
    current = {}

    def broadcast(tensor: torch.Tensor, src: int) -> None:
        rank = current["rank"]
        took_part[rank.ranks.rank].append(rank.step)
        if rank.ranks.rank == 0:
            sent.append(tensor.tolist())
        else:
            tensor.copy_(torch.tensor(sent.pop(0)))

    monkeypatch.setattr(pretrain.dist, "broadcast", broadcast)
    ranks = []
    for r, seconds in ((0, 1.0), (1, 0.5)):
        clock.now, rank = 0.0, Rank(r, clock)
        current["rank"] = rank
        for step in range(1, 150):
            clock.now += seconds
            rank.step = step
            rank.fit_to_budget()
            if step >= rank.cfg.steps:
                break
        ranks.append(rank)
    assert took_part[0] == took_part[1] == [20]
    assert ranks[0].cfg == ranks[1].cfg == Cfg(steps=92, warmup=9)  # rank 0's fit on both
    assert "warmup shortened to 9" in capsys.readouterr().err
