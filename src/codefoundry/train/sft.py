"""Supervised fine-tuning (`codefoundry sft`): a checkpoint, chat/prompt-completion records, and a loss
on the response tokens only.

Data: `codefoundry.train.sft_data` (rendering in the tokenizer's chat tokens, response-only labels,
best-fit packing with restarted positions and a block-diagonal causal mask).

Loss: the sum of per-token cross-entropy over the response tokens of every micro-batch of an optimizer
step, divided by the number of response tokens in all of them (counted before the first forward). So one
micro-batch of 4 sequences and 4 micro-batches of 1 give the same gradient (tested), and a short reply
weighs per token what a long one does: HF Trainer's `num_items_in_batch` convention, not a mean of
micro-batch means.

Init: a codefoundry checkpoint directory, or a Hugging Face Llama / Qwen2 / Qwen2-MoE / Mixtral
checkpoint directory, converted in memory by `codefoundry.models.hf_import.import_hf` (so packing works
the same; the result is a codefoundry checkpoint: `codefoundry export hf` writes it back). Chat rendering
needs the tokenizer to have `<|im_start|>`, `<|im_end|>` and `<|endoftext|>` (ours and Qwen2's do).

Resume: OUT/checkpoint holds the weights, optimizer, step and RNG states (`trainer_state`); the batches
are a pure function of (seed, step), so a resumed run continues with bit-identical losses on the same
machine (tested). A first Ctrl-C stops after the current step with a checkpoint and a summary (`stopped`
is "interrupted"; the command exits 130); a second one at once. OUT also gets metrics.jsonl, tb/, loss.png
and summary.json; OUT/checkpoint loads with the `cf:` backend.

Limits: one process, one device (no DDP here); MTP modules of the init model are kept but not trained
(their loss is not part of SFT); an MoE's load-balancing loss is added per micro-batch, weighted by its
share of the step's response tokens.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from codefoundry.models import checkpoint as ckpt
from codefoundry.models.transformer import Transformer
from codefoundry.train import sft_data as D
from codefoundry.train.distributed import interrupts_stop_after_the_step
from codefoundry.train.metrics import METRICS, MetricsLogger, plot_curves
from codefoundry.train.pretrain import amp_dtype, autocast, param_groups
from codefoundry.train.trainer_state import (
    CHECKPOINT,
    find_checkpoint,
    nothing_to_resume,
    param_digest,
    read_trainer_state,
    save_checkpoint,
    set_rng_state,
)

SUMMARY = "summary.json"
SCHEDULES = ("cosine", "linear", "constant")  # the learning rate after the warmup
# Fields that decide which batches a step sees (or the model's shape): a resume must keep them.
STREAM_FIELDS = ("init", "data", "eval_data", "eval_fraction", "prompt_format", "overlong", "packing",
                 "seq_len", "batch_size", "grad_accum", "seed")  # fmt: skip


@dataclass(frozen=True)
class SFTConfig:
    init: str  # a codefoundry checkpoint dir, or a HF Llama/Qwen2 checkpoint dir (imported in memory)
    data: str  # a JSONL/Parquet file or a directory of them (`messages`, or `prompt` + `completion`)
    out: str  # run directory: checkpoint/, metrics.jsonl, tb/, loss.png, summary.json
    eval_data: str | None = None  # held-out records; None = a seeded `eval_fraction` of `data`
    eval_fraction: float = 0.05
    prompt_format: str = "chat"  # prompt/completion records: chat turns, or plain text + <|endoftext|>
    overlong: str = "truncate"  # examples longer than seq_len: truncate (right) or drop
    packing: bool = True
    seq_len: int = 1024
    batch_size: int = 8  # packed sequences per micro-batch
    grad_accum: int = 1
    steps: int | None = None  # optimizer steps; None = `epochs` passes over the packed sequences
    epochs: float = 1.0
    lr: float = 1e-4  # peak; tiny models want ~1e-3, billion-parameter ones ~1e-5
    schedule: str = "cosine"  # after the warmup: cosine | linear (both decay to min_lr) | constant
    min_lr: float | None = None  # floor of the cosine and linear decays; None = lr / 10
    warmup: int | None = None  # linear warmup steps (every schedule); None = min(steps // 10, 100)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0 = no clipping (the norm is still logged)
    seed: int = 0
    eval_every: int = 0  # steps between held-out evaluations; 0 = at the start and the end only
    save_every: int = 0  # steps between checkpoints; 0 = at the end only
    log_every: int = 10
    resume: bool = False
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 autocast where the hardware has bf16 products) | fp32 | bf16
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        checks = {
            "eval_fraction": 0 <= self.eval_fraction < 1,
            "prompt_format": self.prompt_format in D.PROMPT_FORMATS,
            "overlong": self.overlong in D.OVERLONG,
            "seq_len": self.seq_len >= 2,
            "batch_size": self.batch_size >= 1,
            "grad_accum": self.grad_accum >= 1,
            "steps": self.steps is None or self.steps >= 1,
            "epochs": self.epochs > 0,
            "lr": 0 < self.lr < math.inf,  # an infinite one trained to NaN weights and saved them
            "schedule": self.schedule in SCHEDULES,
            "min_lr": self.min_lr is None or 0 <= self.min_lr <= self.lr,
            "warmup": self.warmup is None or self.warmup >= 0,
            "weight_decay": 0 <= self.weight_decay < math.inf,
            "betas": len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "grad_clip": self.grad_clip >= 0,
            "eval_every": self.eval_every >= 0,
            "save_every": self.save_every >= 0,
            "log_every": self.log_every >= 1,
            "device": self.device in ("auto", "cpu", "cuda"),
            "dtype": self.dtype in ("auto", "fp32", "bf16"),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SFTConfig.{name}: invalid value {getattr(self, name)!r}")
        if self.steps is not None and self.warmup is not None:
            check_warmup(self.warmup, self.steps, f"steps={self.steps}")


def check_warmup(warmup: int, steps: int, steps_are: str) -> None:
    """A warmup of `steps` or more never lets the learning rate reach its peak, nor decay."""
    if warmup >= steps:
        raise ValueError(
            f"SFTConfig.warmup: warmup={warmup} must be below {steps_are}: the learning rate would never"
            " reach its peak nor decay"
        )


def lr_at(step: int, *, lr: float, min_lr: float, warmup: int, steps: int, schedule: str = "cosine") -> float:
    """Linear warmup to `lr` over `warmup` steps, then `schedule`: a cosine or a straight line that
    reaches `min_lr` at `steps`, or `lr` held constant."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    if schedule == "linear":
        return lr - (lr - min_lr) * progress
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def load_init(init: str | Path) -> tuple[Transformer, Path]:
    """(the model in fp32 on the CPU, the directory holding its tokenizer.json) for a codefoundry or a
    Hugging Face checkpoint directory."""
    root = Path(init)
    config = root / ckpt.CONFIG
    if not config.is_file():
        raise ValueError(f"{root}: not a checkpoint directory (no {ckpt.CONFIG})")
    if not (root / "tokenizer.json").is_file():
        raise ValueError(f"{root}: the checkpoint has no tokenizer.json")
    try:
        fields = json.loads(config.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: the message named no file
        raise ValueError(f"{config}: not a JSON config ({e})") from None
    if isinstance(fields, dict) and "model_type" in fields:  # a transformers config
        from codefoundry.models.hf_import import import_hf

        return import_hf(root, dtype=torch.float32).float(), root
    return ckpt.load(root, device="cpu").float(), root


def response_loss_sum(model: Transformer, batch: D.Batch, device: torch.device) -> torch.Tensor:
    """Summed cross-entropy (fp32) over the batch's response tokens; 0-d. Through the fused output head +
    loss: the (tokens x vocabulary) logits are never stored."""
    ids, positions, mask = batch.ids.to(device), batch.positions.to(device), batch.mask.to(device)
    out = model(ids, positions=positions, mask=mask, logits=False)
    return model.head_loss(model.norm(out.hidden), batch.targets.to(device), reduction="sum")


def accumulate(
    model: Transformer, batches: list[D.Batch], *, device: torch.device, amp: torch.dtype | None = None
) -> dict[str, float]:
    """Forward and backward over the micro-batches of one optimizer step; each summed loss is divided by
    the step's total number of response tokens, so the accumulated gradient is that of the per-token mean
    over all of them. Returns that mean loss and the token count."""
    n_total = sum(b.n_targets for b in batches)
    if n_total == 0:
        raise ValueError("an optimizer step with no response tokens (every example needs one)")
    total = 0.0
    for batch in batches:
        with autocast(device, amp):
            loss_sum = response_loss_sum(model, batch, device)
            loss = loss_sum / n_total
            if model.cfg.moe:  # load balancing, weighted by this micro-batch's share of the tokens
                aux = torch.stack([layer.mlp.aux_loss for layer in model.layers]).mean()
                loss = loss + model.cfg.moe.aux_loss_coef * aux * (batch.n_targets / n_total)
        loss.backward()
        total += float(loss_sum.detach())
    return {"loss": total / n_total, "response_tokens": n_total}


@torch.no_grad()
def evaluate(
    model: Transformer, batches: list[D.Batch], *, device: torch.device, amp: torch.dtype | None = None
) -> float | None:
    """Per-response-token cross-entropy over the held-out batches; None when there are none."""
    if not batches:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        with autocast(device, amp):
            total += float(response_loss_sum(model, batch, device))
        count += batch.n_targets
    model.train(was_training)
    return total / max(1, count)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("SFTConfig.device: 'cuda' asked for, but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def sft(config: SFTConfig) -> dict[str, Any]:
    """Fine-tune as `config` says; returns the summary (also written to OUT/summary.json)."""
    return SFTRun(config).train()


class SFTRun:
    """One SFT run's objects and counters; `train()` is the loop."""

    def __init__(self, cfg: SFTConfig) -> None:
        from codefoundry.models import tokenizer as cft

        self.t0 = time.perf_counter()
        self.cfg, self.out = cfg, Path(cfg.out)
        resume_from = find_checkpoint(cfg.out) if cfg.resume else None
        if cfg.resume and resume_from is None:
            raise ValueError(nothing_to_resume(self.out))
        self.device = resolve_device(cfg.device)
        self.amp = amp_dtype(cfg.dtype, self.device)
        self.raw, self.tok_dir = load_init(cfg.init)
        if cfg.seq_len > self.raw.cfg.max_seq_len:
            raise ValueError(
                f"SFTConfig.seq_len={cfg.seq_len} exceeds the model's max_seq_len={self.raw.cfg.max_seq_len}"
            )
        self.tok = cft.load(self.tok_dir)
        self.pad_id = self.tok.token_to_id(cft.EOT) or 0  # padding is masked out; any id works
        self.train_split, self.eval_split = self.load_data()
        self.steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(self.train_split.rows) / self.per_step))
        self.warmup = min(self.steps // 10, 100) if cfg.warmup is None else cfg.warmup
        if cfg.steps is None:  # else SFTConfig checked it
            check_warmup(self.warmup, self.steps, f"the {self.steps} steps of epochs={cfg.epochs:g}")
        self.min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
        self.eval_batches = self.make_eval_batches()

        resumed = self.load_resume(resume_from) if resume_from else {}
        self.raw.to(self.device).train()
        impl = {"fused": True} if self.device.type == "cuda" else {"foreach": True}
        self.optimizer = torch.optim.AdamW(
            param_groups(self.raw.parameters(), cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, **impl
        )
        self.step = resumed.get("step", 0)
        self.elapsed_before = resumed.get("elapsed_s", 0.0)
        self.response_tokens = resumed.get("response_tokens", 0)
        if resumed:
            self.optimizer.load_state_dict(resumed["optimizer"])
            set_rng_state(resumed["rng"])
        self.logger = MetricsLogger(
            self.out, total_steps=self.steps, resume_step=self.step, progress=cfg.progress
        )
        self.last: dict[str, Any] = {}
        self.val_loss: float | None = None
        self.initial_val_loss: float | None = resumed.get("initial_val_loss")
        self.stopped = "completed"

    @property
    def per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum

    def load_data(self) -> tuple[D.SplitData, D.SplitData]:
        cfg = self.cfg
        records = D.read_records(cfg.data)
        if cfg.eval_data:
            train, held = records, D.read_records(cfg.eval_data)
        else:
            train, held = D.split_records(records, eval_fraction=cfg.eval_fraction, seed=cfg.seed)
        renderer = D.Renderer(self.tok)
        opts = dict(seq_len=cfg.seq_len, prompt_format=cfg.prompt_format, overlong=cfg.overlong,
                    packing=cfg.packing)  # fmt: skip
        train_split = D.build_split(train, renderer, **opts)
        if not train_split.rows:
            raise ValueError(f"{cfg.data}: no example left to train on ({train_split.stats.as_dict()})")
        return train_split, D.build_split(held, renderer, **opts)

    def make_eval_batches(self) -> list[D.Batch]:
        split, bs = self.eval_split, self.cfg.batch_size
        rows = [[split.examples[i] for i in r] for r in split.rows]
        return [D.collate(rows[i : i + bs], pad_id=self.pad_id) for i in range(0, len(rows), bs)]

    def micro_batches(self, step: int) -> list[D.Batch]:
        cfg = self.cfg
        rows = D.rows_for(self.train_split, step * self.per_step, self.per_step, seed=cfg.seed)
        return [
            D.collate(rows[m * cfg.batch_size : (m + 1) * cfg.batch_size], pad_id=self.pad_id)
            for m in range(cfg.grad_accum)
        ]

    def load_resume(self, path: Path) -> dict[str, Any]:
        state = read_trainer_state(path)  # a torn one, or torn weights below, was a traceback
        saved = state["config"]
        for name in STREAM_FIELDS:
            if saved.get(name) != getattr(self.cfg, name):
                raise ValueError(
                    f"{path}: cannot resume with {name}={getattr(self.cfg, name)!r}:"
                    f" the run was started with {name}={saved.get(name)!r}"
                )
        ckpt.load_state(self.raw, ckpt.read_weights(path / ckpt.WEIGHTS), where=str(path / ckpt.WEIGHTS))
        return state

    def train(self) -> dict[str, Any]:
        # A Ctrl-C stops after the step with a checkpoint and a summary: it lost every step since the last
        # checkpoint (with save_every 0, the whole run).
        with interrupts_stop_after_the_step() as interrupted:
            return self._train(interrupted)

    def _train(self, interrupted: Callable[[], bool]) -> dict[str, Any]:
        cfg = self.cfg
        if self.initial_val_loss is None:
            self.initial_val_loss = evaluate(self.raw, self.eval_batches, device=self.device, amp=self.amp)
            if self.step == 0 and self.initial_val_loss is not None:
                self.logger.log({"step": 0, "val_loss": self.initial_val_loss}, prefix="eval")
        window_tokens, mark = 0, time.perf_counter()
        while self.step < self.steps:
            stats = self.train_step()
            window_tokens += stats["response_tokens"]
            if interrupted():
                self.stopped = "interrupted"
            last = self.step == self.steps or self.stopped == "interrupted"
            if self.step % cfg.log_every == 0 or last:
                self.log_train(stats, window_tokens / max(1e-9, time.perf_counter() - mark))
                window_tokens, mark = 0, time.perf_counter()
            self.logger.progress(self.step)
            if last or (cfg.eval_every and self.step % cfg.eval_every == 0):
                self.log_eval()
            if last or (cfg.save_every and self.step % cfg.save_every == 0):
                self.save()
            if last or cfg.eval_every or cfg.save_every:
                mark = time.perf_counter()  # evaluation and saving are not training throughput
            if self.stopped == "interrupted":
                break
        if self.val_loss is None:  # resumed at or past the last step: nothing ran
            self.val_loss = evaluate(self.raw, self.eval_batches, device=self.device, amp=self.amp)
        return self.finish()

    def train_step(self) -> dict[str, float]:
        """One optimizer step: micro-batches, clip, AdamW at this step's lr. Advances `self.step`."""
        stats: dict[str, float] = dict(
            accumulate(self.raw, self.micro_batches(self.step), device=self.device, amp=self.amp)
        )
        norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.cfg.grad_clip or math.inf)
        stats["grad_norm"] = float(norm)
        stats["lr"] = lr_at(
            self.step, lr=self.cfg.lr, min_lr=self.min_lr, warmup=self.warmup, steps=self.steps,
            schedule=self.cfg.schedule,
        )  # fmt: skip
        for group in self.optimizer.param_groups:
            group["lr"] = stats["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.response_tokens += int(stats["response_tokens"])
        return stats

    def log_train(self, stats: dict[str, float], tokens_per_s: float) -> None:
        record = {"step": self.step, "tokens": self.response_tokens, **stats}
        record["tokens_per_s"] = tokens_per_s  # response tokens per second
        record["elapsed_s"] = self.elapsed()
        self.last = record
        self.logger.log(record)

    def log_eval(self) -> None:
        self.val_loss = evaluate(self.raw, self.eval_batches, device=self.device, amp=self.amp)
        if self.val_loss is not None:
            self.logger.log({"step": self.step, "tokens": self.response_tokens, "val_loss": self.val_loss},
                            prefix="eval")  # fmt: skip

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def save(self) -> None:
        state = {
            "step": self.step,
            "elapsed_s": self.elapsed(),
            "response_tokens": self.response_tokens,
            "initial_val_loss": self.initial_val_loss,
            "config": asdict(self.cfg),
        }
        save_checkpoint(self.out, self.raw, self.optimizer, state, tokenizer=str(self.tok_dir))

    def finish(self) -> dict[str, Any]:
        self.logger.close()
        cfg = self.cfg
        summary = {
            "step": self.step,
            "steps": self.steps,
            "stopped": self.stopped,
            "train_loss": self.last.get("loss"),
            "initial_val_loss": self.initial_val_loss,
            "val_loss": self.val_loss,
            "response_tokens": self.response_tokens,
            "train_data": self.train_split.stats.as_dict(),
            "eval_data": self.eval_split.stats.as_dict(),
            "train_sequences": len(self.train_split.rows),
            "packing_fill": self.train_split.fill(cfg.seq_len),
            "wall_s": time.perf_counter() - self.t0,
            "elapsed_s": self.elapsed(),
            "device": str(self.device),
            "dtype": str(self.amp or torch.float32).removeprefix("torch."),
            "params": self.raw.num_params(),
            "checkpoint": str(self.out / CHECKPOINT),
            "metrics": str(self.out / METRICS),
            "param_digest": param_digest(self.raw),
            "config": asdict(cfg),
        }
        if (self.out / METRICS).is_file():
            summary["plot"] = str(plot_curves({"sft": self.out / METRICS}, self.out / "loss.png", x="step",
                                              title="SFT loss (response tokens)"))  # fmt: skip
        (self.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary
