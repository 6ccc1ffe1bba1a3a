"""Processes and devices for a pretraining run: this process's rank and device (joining the process group
when torchrun started several), the model wrapped for DDP and `torch.compile`, and how a Ctrl-C stops a
run (`interrupts_stop_after_the_step`), on every rank after the same step (`StopVote`).

Ctrl-C under torchrun: a terminal sends SIGINT to torchrun's process group; torchrun starts its workers in
sessions of their own, so they get it once, from torchrun, which then waits for them (its
`--shutdown-timeout`, 30 s by default) before it kills them. Each rank stops after the step the vote
agrees on, rank 0 writes the checkpoint, the summary and the plot, and every worker exits 130; torchrun
itself then exits 1 (torch 2.13 re-raises the signal as its `SignalException`: the traceback it prints is
its own). A second Ctrl-C makes torchrun SIGTERM its workers: they end at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from codefoundry.train.pretrain import PretrainConfig


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: PretrainConfig) -> tuple[Ranks, torch.device]:
    """This process's rank and device; joins the process group when torchrun started several."""
    env = os.environ
    ranks = Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    want = cfg.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("PretrainConfig.device: 'cuda' asked for, but torch sees no CUDA device")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda", ranks.local_rank) if want == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left outside autocast
    if ranks.world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return ranks, device


def wrap_model(
    model: nn.Module, cfg: PretrainConfig, device: torch.device, *, distributed: bool
) -> tuple[nn.Module, nn.Module | None]:
    """(what the loop calls, the DDP wrapper or None): DDP under torchrun, then `torch.compile` if asked."""
    ddp = None
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        # An expert that no token on this rank chose has no gradient here; DDP must be told to look.
        ddp = model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(cfg.moe_experts),
        )
    return (torch.compile(model) if cfg.compile else model), ddp


@contextlib.contextmanager
def interrupts_stop_after_the_step(announce: bool = True) -> Iterator[Callable[[], bool]]:
    """Within: a first Ctrl-C (SIGINT) only sets a flag, which the training loop reads after each step to
    stop there as at a time limit (checkpoint, held-out loss, summary and plot written: an interrupted run
    had lost every step since its last checkpoint); a second one interrupts at once. Yields whether one
    came. Only where the flag can be honoured: in the main thread, with SIGINT not ignored. Under torchrun
    the ranks see the signal at different steps: the loop passes the flag through `StopVote`. `announce`:
    say so on stderr (rank 0 only, so the line comes once)."""
    previous = (
        signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    )
    if previous in (None, signal.SIG_IGN):  # not ours to change, or ignored (a background job)
        yield lambda: False
        return
    seen = threading.Event()

    def on_interrupt(signum: int, frame: object) -> None:
        seen.set()
        signal.signal(signal.SIGINT, previous)
        if announce:
            print(
                "interrupted: stopping after this step, with a checkpoint and a summary (Ctrl-C again: at "
                "once)",
                file=sys.stderr,
                flush=True,
            )

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield seen.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


class StopVote:
    """Whether to stop after this step, agreed by every rank: each flag is the MAX over the ranks of what
    each rank saw (a Ctrl-C reaches the ranks at different steps, a clock passes a limit at different
    steps; a rank that stopped alone left its peers waiting in the next step's all-reduce for good).

    One all-reduce of a few numbers per step, on the CPU: over the default group where that is gloo, over a
    gloo group of its own under NCCL, so that reading the vote never waits for the GPU's queued work."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.group = None
        if world_size > 1 and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")  # every rank makes it, in the same order

    def __call__(self, *flags: bool) -> tuple[bool, ...]:
        if self.world_size == 1:
            return flags
        votes = torch.tensor([float(f) for f in flags])  # (n_flags,) on the CPU
        dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=self.group)
        return tuple(bool(v) for v in votes.tolist())
