"""The pretraining loop (`codefoundry pretrain`): AdamW, or Muon for the blocks' matrices (muon.py), with
warmup + cosine, gradient accumulation and clipping, bf16 autocast where the hardware multiplies bf16
natively, optional `torch.compile`, DDP under torchrun, atomic checkpoints with exact resume, metrics
(JSONL, TensorBoard, a loss plot), a final summary, and `time_budget_s`: the steps fitted to a wall time.

One process per device. Under torchrun (`WORLD_SIZE` > 1 in the environment) each rank draws its own
batches (`PretrainData` is seeded by (seed, step, micro, rank)), gradients are averaged by DDP once per
optimizer step (`no_sync` on the earlier micro-batches), and only rank 0 logs, evaluates and saves.
A Ctrl-C or a time limit stops every rank after the same step (`distributed.StopVote`); see distributed.py
for what torchrun does with a Ctrl-C.
`batch_size` is the per-rank micro-batch: a step sees batch_size * grad_accum * world_size * seq_len tokens.

Exact resume: the checkpoint holds the weights (fp32), the optimizer state, the step and the RNG states;
the data is a pure function of the step and nothing in the loop draws random numbers, so a resumed run
computes bit-identical losses to an uninterrupted one on the same machine (tested on CPU with a real
SIGKILL). A checkpoint is written to `OUT/checkpoint.tmp` and renamed into place, so a kill mid-save
leaves the previous one intact (if the kill lands between the two renames, `OUT/checkpoint.old` is it).

Limits: one model replica per device (no FSDP or tensor parallelism); an MoE under DDP uses
`find_unused_parameters`, since an expert no token chose on a rank has no gradient there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from codefoundry.models.config import SIZES, config_for_size
from codefoundry.models.transformer import Transformer
from codefoundry.paths import output_dir
from codefoundry.train.budget import TimeBudget
from codefoundry.train.distributed import (
    Ranks,
    StopVote,
    init_distributed,
    interrupts_stop_after_the_step,
    wrap_model,
)
from codefoundry.train.metrics import METRICS, MetricsLogger, flops_per_token, peak_flops, plot_curves
from codefoundry.train.muon import Muon, Optimizers, muon_groups
from codefoundry.train.trainer_state import (
    CHECKPOINT,
    find_checkpoint,
    load_checkpoint,
    nothing_to_resume,
    param_digest,
    run_facts,
    save_checkpoint,
    set_rng_state,
)
from codefoundry.train.typed_config import check_types, config_from_json

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from codefoundry.train.data import PretrainData

SUMMARY = "summary.json"
Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (B, T) int64
Amp = torch.dtype | None  # the autocast dtype; None = plain fp32
NoSync = Callable[[], AbstractContextManager] | None  # DDP's no_sync, or None outside DDP


@dataclass(frozen=True)
class PretrainConfig:
    data: str  # a directory of source files or of .npy token shards (see codefoundry.train.data)
    tokenizer: str  # a tokenizer directory (tokenizer.json)
    out: str  # run directory: checkpoint/, metrics.jsonl, tb/, loss.png, summary.json
    size: str = "tiny"  # a named size of codefoundry.models.config.SIZES
    shape: tuple[int, int, int, int] | None = None  # (dim, n_layers, n_heads, n_kv_heads); overrides size
    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # sequences per micro-batch, per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    seq_len: int = 512
    lr: float = 3e-3  # peak; suits the small sizes (tiny..10m), lower it (~6e-4..3e-4) for 100m and up
    min_lr: float | None = None  # the cosine's floor; None = lr / 10
    warmup: int | None = None  # linear-warmup steps; None = min(steps // 10, 200)
    weight_decay: float = 0.1  # on matrices and embeddings only (ndim >= 2)
    optimizer: str = "adamw"  # adamw | muon (Muon for the blocks' matrices, AdamW for the rest; muon.py)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping (the norm is still logged)
    fim_rate: float = 0.5
    spm_rate: float = 0.5
    fim_line_rate: float = 0.5  # among FIM examples, the fraction split at line starts (the rest anywhere)
    holdout: float = 0.02  # fraction of documents held out for the validation loss and the final checks
    mtp_depth: int = 0
    mtp_weight: float = 0.3
    moe_experts: int = 0  # 0 = dense
    moe_top_k: int = 2  # experts per token; at most moe_experts
    dtype: str = "auto"  # auto: bf16 autocast where the hardware has bf16 products (amp_dtype) | fp32 | bf16
    compile: bool = False
    seed: int = 0
    eval_every: int = 250  # steps between validations (0 = only at the end)
    eval_batches: int = 20
    save_every: int = 1000  # steps between checkpoints (0 = only at the end)
    log_every: int = 10
    resume: bool = False  # continue from OUT/checkpoint
    time_limit_s: float | None = None  # stop cleanly (save, evaluate, report) once exceeded
    time_budget_s: float | None = None  # fit the step count to this wall time (train/budget.py)
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # a tqdm bar on rank 0
    peak_tflops: float | None = None  # the device's peak, for MFU; None = table (GPUs) or a timing
    final_eval: bool = True  # FIM exact match and syntax validity on held-out functions at the end

    def __post_init__(self) -> None:
        check_types(self)  # a wrong type is a TypeError naming the field, before the checks below compare
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))
        shape = self.shape
        shape_ok = shape is None or (len(shape) == 4 and all(type(v) is int and v >= 1 for v in shape))
        checks = {
            "shape": shape_ok,
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "grad_accum": self.grad_accum >= 1,
            "seq_len": self.seq_len >= 2,
            "lr": 0 < self.lr < math.inf,
            "min_lr": self.min_lr is None or 0 <= self.min_lr <= self.lr,
            "warmup": self.warmup is None or self.warmup >= 0,
            "weight_decay": self.weight_decay >= 0,
            "optimizer": self.optimizer in ("adamw", "muon"),
            "betas": len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "grad_clip": self.grad_clip >= 0,
            "dtype": self.dtype in ("auto", "fp32", "bf16"),
            "device": self.device in ("auto", "cpu", "cuda"),
            "eval_every": self.eval_every >= 0,
            "eval_batches": self.eval_batches >= 1,
            "save_every": self.save_every >= 0,
            "log_every": self.log_every >= 1,
            "time_limit_s": self.time_limit_s is None or self.time_limit_s > 0,
            "time_budget_s": self.time_budget_s is None or self.time_budget_s > 0,
            "fim_rate": 0 <= self.fim_rate <= 1,
            "spm_rate": 0 <= self.spm_rate <= 1,
            "fim_line_rate": 0 <= self.fim_line_rate <= 1,
            "holdout": 0 <= self.holdout < 1,
            "moe_experts": self.moe_experts >= 0,
            "moe_top_k": self.moe_top_k >= 1,
            "mtp_depth": self.mtp_depth >= 0,
            "mtp_weight": self.mtp_weight >= 0,  # (NaN fails every comparison)
            "peak_tflops": self.peak_tflops is None or self.peak_tflops > 0,
            "seed": self.seed >= 0,  # numpy's SeedSequence refuses < 0: it failed later, as DataConfig.seed
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"PretrainConfig.{name}: invalid value {getattr(self, name)!r}")
        if self.moe_experts and self.moe_top_k > self.moe_experts:  # was lowered to moe_experts, silently
            raise ValueError(
                f"PretrainConfig.moe_top_k: {self.moe_top_k} experts per token, but moe_experts="
                f"{self.moe_experts}: the top-k can be at most the number of experts"
            )
        object.__setattr__(self, "min_lr", self.lr / 10 if self.min_lr is None else self.min_lr)
        object.__setattr__(self, "warmup", min(self.steps // 10, 200) if self.warmup is None else self.warmup)


def build_model(cfg: PretrainConfig, vocab_size: int) -> Transformer:
    """The model of `cfg.shape` (else `cfg.size`) at the tokenizer's vocabulary, initialised from
    `cfg.seed` (fp32)."""
    mcfg = config_for_size(
        cfg.shape or cfg.size, vocab_size, max_seq_len=cfg.seq_len, moe_experts=cfg.moe_experts,
        moe_top_k=cfg.moe_top_k, mtp_depth=cfg.mtp_depth, mtp_weight=cfg.mtp_weight,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    return Transformer(mcfg)


def param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: matrices and embeddings (ndim >= 2) decay; norms' gains and biases do not.
    A tied head is the embedding: `model.parameters()` yields it once."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, cfg: PretrainConfig, device: torch.device
) -> torch.optim.AdamW | Optimizers:
    """AdamW over everything, or (`optimizer="muon"`) Muon over the blocks' matrices and AdamW over the
    rest, at one learning rate and weight decay (Muon's update is scaled to AdamW's RMS)."""
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(
            param_groups(model.parameters(), cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, **impl
        )
    groups, rest = muon_groups(model)
    ns_dtype = torch.bfloat16 if native_bf16(device) else torch.float32
    muon = Muon(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, ns_dtype=ns_dtype)
    adamw = torch.optim.AdamW(param_groups(rest, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, **impl)
    return Optimizers(muon=muon, adamw=adamw)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup to `lr` over `warmup` steps,
    then a cosine that reaches `min_lr` at step `steps` (and stays there past it)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def amp_dtype(name: str, device: torch.device) -> Amp:
    """The autocast dtype (None = plain fp32). Weights and optimizer state always stay fp32. `auto` is
    bf16 where the hardware multiplies bf16 natively: CUDA devices that support it, and CPUs with
    AVX512-BF16 or AMX (elsewhere a CPU emulates bf16, slower than fp32)."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    return torch.bfloat16 if name == "bf16" else None


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # torch.cpu's private probes (present in torch >= 2.3); a torch without them gets fp32.
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def autocast(device: torch.device, dtype: Amp) -> AbstractContextManager:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def accumulate(
    model: nn.Module, batches: list[Batch], *, device: torch.device, amp: Amp = None, no_sync: NoSync = None
) -> dict[str, torch.Tensor]:
    """Forward and backward over the micro-batches, each loss divided by their number, so the summed
    gradients are those of the mean loss. `no_sync` (DDP's) skips the all-reduce on all but the last.
    Returns the mean loss and loss parts, detached (0-d tensors: no device sync here)."""
    n = len(batches)
    totals: dict[str, torch.Tensor] = {}
    for i, (inputs, targets) in enumerate(batches):
        inputs = inputs.to(device, non_blocking=True)  # (B, T)
        targets = targets.to(device, non_blocking=True)  # (B, T)
        sync = no_sync is None or i == n - 1
        with contextlib.nullcontext() if sync else no_sync():
            with autocast(device, amp):
                out = model(inputs, targets, logits=False)
            (out.loss / n).backward()
        for key, value in {"loss": out.loss.detach(), **out.parts}.items():
            totals[key] = totals.get(key, 0) + value.float() / n
    return totals


@torch.no_grad()
def evaluate(
    model: Transformer, batches: list[Batch], *, device: torch.device, amp: Amp = None
) -> float | None:
    """Next-token loss (the MTP and aux parts left out) over the held-out batches, weighted by the number
    of targets; None when there are no batches."""
    if not batches:
        return None
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for inputs, targets in batches:
        with autocast(device, amp):
            out = model(inputs.to(device), targets.to(device), logits=False)
        n = int((targets != -100).sum())
        total += out.parts["ntp"].double() * n
        count += n
    model.train(was_training)
    return float(total) / max(1, count)


def check_inputs(cfg: PretrainConfig) -> None:
    """Fail fast, with one line, on inputs that would otherwise fail minutes in."""
    if cfg.warmup >= cfg.steps:
        # Here, not in __post_init__: a time budget's fitted step count (replace(cfg, steps=...)) may end
        # the run right at the warmup's end. Asked for, the learning rate would never finish warming up.
        upper = " (with --time-budget-s, the most it may run)" if cfg.time_budget_s else ""
        raise ValueError(
            f"PretrainConfig.warmup: warmup={cfg.warmup} must be below steps={cfg.steps}{upper}: the learning"
            " rate would never reach its peak nor decay"
        )
    tok = Path(cfg.tokenizer)
    if not (tok / "tokenizer.json").is_file() and not (tok.is_file() and tok.name == "tokenizer.json"):
        raise ValueError(f"{tok}: no tokenizer.json (train one with `codefoundry tokenizer train`)")
    if not Path(cfg.data).exists():
        raise ValueError(f"{cfg.data}: no such data directory or shard")
    if cfg.shape is None and cfg.size not in SIZES:
        raise ValueError(f"PretrainConfig.size: unknown size {cfg.size!r}; known: {', '.join(SIZES)}")
    if cfg.resume and find_checkpoint(cfg.out) is None:
        raise ValueError(nothing_to_resume(cfg.out))
    output_dir(cfg.out)


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train as `cfg` says (under torchrun: on every rank) and return the final summary, which rank 0
    also writes to OUT/summary.json. Other ranks return a short summary of their own."""
    check_inputs(cfg)
    ranks, device = init_distributed(cfg)
    try:
        summary = Run(cfg, ranks, device).train()
        if ranks.world_size > 1:
            # Leave together: a rank that tears gloo down while its peer still saves or evaluates can
            # abort in the transport's threads ("terminate called without an active exception").
            dist.barrier()
        return summary
    finally:
        if ranks.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


class Run:
    """One pretraining run's objects and counters; `train()` is the loop."""

    def __init__(self, cfg: PretrainConfig, ranks: Ranks, device: torch.device) -> None:
        from codefoundry.models import tokenizer as cft
        from codefoundry.train.data import DataConfig, PretrainData

        self.t0 = time.perf_counter()  # the time limit and wall time count from here
        self.cfg, self.ranks, self.device, self.out = cfg, ranks, device, Path(cfg.out)
        self.tok_dir = str(Path(cfg.tokenizer).parent if Path(cfg.tokenizer).is_file() else cfg.tokenizer)
        self.tok = cft.load(self.tok_dir)
        self.amp = amp_dtype(cfg.dtype, device)
        dcfg = DataConfig(
            cfg.data, seq_len=cfg.seq_len, fim_rate=cfg.fim_rate, spm_rate=cfg.spm_rate,
            fim_line_rate=cfg.fim_line_rate, holdout=cfg.holdout, seed=cfg.seed,
        )  # fmt: skip
        self.data = PretrainData(dcfg, self.tok, rank=ranks.rank, world_size=ranks.world_size)
        self.val = self.data.val_batches(cfg.batch_size, cfg.eval_batches) if ranks.main else []

        self.raw = build_model(cfg, self.tok.get_vocab_size())
        self.facts = run_facts(self.data, ranks.world_size)  # what else a resume must share (trainer_state)
        resumed = (
            load_checkpoint(find_checkpoint(cfg.out), self.raw, cfg, facts=self.facts, tokenizer=self.tok)
            if cfg.resume
            else {}
        )
        self.raw.to(device).train()
        self.model, self.ddp = wrap_model(self.raw, cfg, device, distributed=ranks.world_size > 1)
        self.optimizer = build_optimizer(self.raw, cfg, device)  # after loading: load_state assigns tensors
        self.step = resumed.get("step", 0)
        # a time budget's step count and shortened warmup, when it fitted them
        fitted, short = resumed.get("fitted_steps"), resumed.get("fitted_warmup")
        self.warmup_asked = cfg.warmup
        self.budget = (
            TimeBudget(cfg.time_budget_s, cfg.steps, self.step, fitted, short) if cfg.time_budget_s else None
        )
        if self.budget and self.budget.fitted is not None:
            self.cfg = cfg = replace(cfg, steps=fitted, warmup=cfg.warmup if short is None else short)
        self.lr = lr_at(self.step, cfg)
        self.elapsed_before = resumed.get("elapsed_s", 0.0)
        if resumed:
            self.optimizer.load_state_dict(resumed["optimizer"])
            set_rng_state(resumed["rng"])  # last: building the model drew from the generator

        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len * ranks.world_size
        self.fpt = flops_per_token(self.raw, cfg.seq_len)
        self.peak, self.peak_source = (
            peak_flops(device, self.amp or torch.float32, cfg.peak_tflops) if ranks.main else (0.0, "")
        )
        self.logger = MetricsLogger(
            self.out, total_steps=cfg.steps, resume_step=self.step, enabled=ranks.main, progress=cfg.progress
        )
        self.last: dict[str, Any] = {}  # the last train record
        self.val_loss: float | None = None
        self.train_s = 0.0  # time inside training steps this session (evals and saves left out)
        self.vote = StopVote(ranks.world_size)

    def train(self) -> dict[str, Any]:
        with interrupts_stop_after_the_step(announce=self.ranks.main) as interrupted:
            return self._train(interrupted)

    def _train(self, interrupted: Callable[[], bool]) -> dict[str, Any]:
        cfg = self.cfg
        start_step, stopped = self.step, "completed"
        window_tokens, window_s, mark = 0, 0.0, time.perf_counter()
        while self.step < self.cfg.steps:
            stats = self.train_step()
            spent = self.fit_to_budget() if self.budget else False
            window_tokens += self.tokens_per_step
            over, interrupt, spent = self.vote(self.out_of_time(), interrupted(), spent)
            reason = "time_limit" if over else "interrupted" if interrupt else "time_budget"
            stopped = reason if over or interrupt or spent else stopped
            last = self.step >= self.cfg.steps or stopped != "completed"
            if self.step % cfg.log_every == 0 or last:
                window_s += self.stamp(mark)
                self.log_train(stats, window_tokens / window_s)
                self.train_s += window_s
                window_tokens, window_s, mark = 0, 0.0, time.perf_counter()
            self.logger.progress(self.step)
            evaluate_now = cfg.eval_every and self.step % cfg.eval_every == 0
            save_now = cfg.save_every and self.step % cfg.save_every == 0
            if last or evaluate_now or save_now:
                window_s += self.stamp(mark)
                if last or evaluate_now:
                    self.log_eval()
                if last or save_now:
                    self.save()
                mark = time.perf_counter()
            if stopped != "completed":
                break
        self.train_s += window_s
        if self.val_loss is None and self.ranks.main:  # resumed at or past `steps`: nothing ran
            self.val_loss = evaluate(self.raw, self.val, device=self.device, amp=self.amp)
        return self.finish(stopped, self.step - start_step)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimizer step: micro-batches, clip, the optimizer at this step's lr. Advances `self.step`."""
        cfg, step = self.cfg, self.step
        micro = [self.data.batch(step, m, cfg.batch_size) for m in range(cfg.grad_accum)]
        no_sync = self.ddp.no_sync if self.ddp else None
        stats = accumulate(self.model, micro, device=self.device, amp=self.amp, no_sync=no_sync)
        # Pre-clip global norm; with grad_clip 0 an infinite bound only measures it.
        stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.grad_clip or math.inf)
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.lr = lr
        return stats

    def fit_to_budget(self) -> bool:
        """`time_budget_s`: the step count (and a warmup too long for it, shortened) `budget.TimeBudget` fits,
        rank 0's on every rank, become `steps` (`warmup`). Whether this rank's clock says it is spent, steps
        still to go (the loop votes)."""
        elapsed, budget = self.elapsed(), self.budget
        due = budget.due(self.step, warmup=self.warmup_asked, eval_every=self.cfg.eval_every)
        before = budget.fitted, budget.warmup
        fit = budget.after_step(self.step, warmup=self.warmup_asked, eval_every=self.cfg.eval_every,
                                elapsed_s=elapsed)  # fmt: skip
        if due and self.ranks.world_size > 1:  # rank 0's answer (-1: none): a warmup step's fit is timed
            short = -1 if budget.warmup is None else budget.warmup
            fit_t = torch.tensor([-1 if fit is None else fit, short], device=self.device)
            dist.broadcast(fit_t, src=0)  # at each step that may fit: a rank left out held the others
            fit, short = (None, 0) if fit_t[0] < 0 else fit_t.tolist()
            budget.fitted, budget.warmup = before if fit is None else (fit, None if short < 0 else short)
        if fit is not None:
            warmup = self.warmup_asked if budget.warmup is None else budget.warmup
            if warmup != self.cfg.warmup and self.ranks.main:
                print(f"codefoundry.train: warning: {budget.notes['warmup']}", file=sys.stderr)
            self.cfg = replace(self.cfg, steps=fit, warmup=warmup)
            self.logger.set_total(fit)
        return budget.spent(elapsed) and self.step < self.cfg.steps

    def stamp(self, mark: float) -> float:
        """Seconds since `mark`, after the device has finished the queued work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - mark

    def out_of_time(self) -> bool:
        """This rank's clock past `time_limit_s` (the loop's `StopVote` makes the ranks agree)."""
        return self.cfg.time_limit_s is not None and time.perf_counter() - self.t0 > self.cfg.time_limit_s

    def log_train(self, stats: dict[str, torch.Tensor], tokens_per_s: float) -> None:
        """Average the loss parts over ranks (every rank calls this) and log them on rank 0."""
        names = [k for k in stats if k != "grad_norm"]  # the grad norm is global already
        values = torch.stack([stats[k].float().to(self.device) for k in names])
        if self.ranks.world_size > 1:
            dist.all_reduce(values)
            values /= self.ranks.world_size
        record: dict[str, Any] = {"step": self.step, "tokens": self.step * self.tokens_per_step}
        record.update(zip(names, values.tolist(), strict=True))
        record["lr"] = self.lr
        record["grad_norm"] = float(stats["grad_norm"])
        record["tokens_per_s"] = tokens_per_s
        if self.peak:
            record["mfu"] = self.fpt * tokens_per_s / (self.peak * self.ranks.world_size)
        record.update(self.raw.router_stats())
        record["elapsed_s"] = self.elapsed()
        self.last = record
        self.logger.log(record)

    def log_eval(self) -> None:
        if not self.ranks.main:
            return
        self.val_loss = evaluate(self.raw, self.val, device=self.device, amp=self.amp)
        if self.val_loss is not None:
            tokens = self.step * self.tokens_per_step
            record = {
                "step": self.step,
                "tokens": tokens,
                "val_loss": self.val_loss,
                "elapsed_s": self.elapsed(),
            }
            self.logger.log(record, prefix="eval")

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def save(self) -> None:
        if not self.ranks.main:
            return
        # The steps asked for, not a time budget's fitted count (saved apart): a resume compares the two
        # configs, and the fitted count made every budgeted resume say it would not reproduce the run.
        asked = {"steps": self.budget.steps_asked, "warmup": self.warmup_asked} if self.budget else {}
        cfg = replace(self.cfg, **asked)
        state = {"step": self.step, "elapsed_s": self.elapsed(), "config": asdict(cfg), "facts": self.facts,
                 "fitted_steps": self.budget.fitted if self.budget else None,
                 "fitted_warmup": self.budget.warmup if self.budget else None}  # fmt: skip
        save_checkpoint(self.out, self.raw, self.optimizer, state, tokenizer=self.tok_dir)

    def finish(self, stopped: str, steps_run: int) -> dict[str, Any]:
        digest = param_digest(self.raw)
        digests = [digest]
        if self.ranks.world_size > 1:
            digests = [None] * self.ranks.world_size
            dist.all_gather_object(digests, digest)
        self.logger.close()
        if not self.ranks.main:
            return {"rank": self.ranks.rank, "step": self.step, "stopped": stopped, "param_digest": digest}
        summary = self.summary(stopped, steps_run, digests)
        if self.budget:
            summary["time_budget"] = self.budget.report(
                stopped, self.step, self.warmup_asked, self.cfg.warmup
            )
        if self.cfg.final_eval and stopped != "interrupted":  # minutes of sampling the user asked to skip
            summary.update(final_evaluation(self.raw, self.tok, self.data, self.cfg))
        plot = plot_curves({self.out.name or "run": self.out / METRICS}, self.out / "loss.png")
        summary["plot"] = str(plot)
        (self.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary

    def summary(self, stopped: str, steps_run: int, digests: list[str]) -> dict[str, Any]:
        cfg, raw = self.cfg, self.raw
        tokens_per_s = steps_run * self.tokens_per_step / self.train_s if self.train_s > 0 else None
        return {
            "step": self.step,
            "steps": cfg.steps,
            "stopped": stopped,
            "train_loss": self.last.get("loss"),
            "val_loss": self.val_loss,
            "unigram_loss": self.data.unigram_loss() if self.data.n_val_tokens else None,
            "tokens": self.step * self.tokens_per_step,
            "tokens_per_s": tokens_per_s,
            "mfu": self.fpt * tokens_per_s / (self.peak * self.ranks.world_size) if tokens_per_s else None,
            "peak_flops": self.peak,
            "peak_flops_source": self.peak_source,
            "flops_per_token": self.fpt,
            "params": raw.num_params(),
            "non_embedding_params": raw.num_params(exclude_embeddings=True),
            "wall_s": time.perf_counter() - self.t0,
            "elapsed_s": self.elapsed(),
            "train_tokens_available": self.data.n_train_tokens,
            "documents": self.data.n_documents,
            "device": str(self.device),
            "dtype": str(self.amp or torch.float32).removeprefix("torch."),
            "world_size": self.ranks.world_size,
            "model": raw.cfg.to_dict(),
            "checkpoint": str(self.out / CHECKPOINT),
            "metrics": str(self.out / METRICS),
            "param_digest": digests[0],
            "rank_param_digests": digests,
        }


def final_evaluation(
    model: Transformer, tokenizer: Tokenizer, data: PretrainData, cfg: PretrainConfig
) -> dict[str, Any]:
    """`infill_eval.final_checks` on the held-out texts (FIM exact match on whole bodies and single lines,
    the syntax-valid fraction of sampled bodies), when `codefoundry.models.infill_eval` is installed."""
    try:
        from codefoundry.models import infill_eval
    except ModuleNotFoundError as e:
        if e.name != "codefoundry.models.infill_eval":
            raise
        return {}
    return infill_eval.final_checks(model, tokenizer, data.val_texts(), seed=cfg.seed, seq_len=cfg.seq_len)


def main(argv: list[str] | None = None) -> int:
    """`python -m codefoundry.train.pretrain --json CONFIG.json` (what torchrun launches in the tests)."""
    parser = argparse.ArgumentParser(prog="python -m codefoundry.train.pretrain")
    parser.add_argument("--json", required=True, help="a JSON object of PretrainConfig fields")
    args = parser.parse_args(argv)
    try:  # one line naming the file and the field, or the input the run cannot use
        summary = pretrain(config_from_json(PretrainConfig, args.json))
    except (ValueError, FileNotFoundError) as e:
        print(e, file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(summary, indent=2))
    # A Ctrl-C the run honoured (checkpoint and summary written) still ends as an interrupt does.
    return 130 if summary.get("stopped") == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
