"""Training metrics: a JSONL log (plus TensorBoard scalars and a tqdm bar), model FLOPs utilisation, and
loss-curve plots.

`OUT/metrics.jsonl` holds one JSON object per line: train records (`step`, `tokens`, `loss`, the loss
parts, `lr`, `grad_norm`, `tokens_per_s`, `mfu`, router statistics, `elapsed_s`) and eval records
(`step`, `tokens`, `val_loss`). `step` counts optimizer steps completed, so a resumed run truncates the
file to the records of steps <= its checkpoint's step and appends from there: no duplicates, and nothing
logged before the checkpoint is lost.

MFU follows the PaLM appendix B estimate: 6 * N + 12 * L * T * d FLOPs per token, with N the active
non-embedding parameters (for a mixture of experts only the top_k routed experts of each layer, plus the
shared one) and the second term the attention score and value matmuls.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

METRICS = "metrics.jsonl"

# Dense bf16 tensor-core peaks (no sparsity), matched against `torch.cuda.get_device_name()`; the first
# key found in the name wins, so the longer names come first.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records (JSON objects) of a metrics JSONL file, in order; a torn last line (a killed writer) is
    skipped. Any other line that is not UTF-8 or not a JSON object is a ValueError naming the file and line
    (decoded as a whole, a stray byte was an error naming neither, and a list a traceback further on)."""
    path = Path(path)
    records = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            torn = not raw.endswith(b"\n")  # only the last line can lack its end
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if torn:
                    continue
                raise ValueError(f"{path}:{n}: not UTF-8 (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if torn:
                    continue
                raise ValueError(f"{path}:{n}: not a JSON record") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{n}: not a JSON object (a {type(record).__name__})")
            records.append(record)
    return records


def truncate_metrics(path: str | Path, step: int) -> int:
    """Keep only the records with `step <= step` (rewritten atomically); returns how many were kept."""
    path = Path(path)
    if not path.is_file():
        return 0
    records = read_metrics(path)
    for i, r in enumerate(records, start=1):
        value = r.get("step", 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{path}: record {i} has step {value!r}, not a number")
    kept = [r for r in records if r.get("step", 0) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(path)
    return len(kept)


class MetricsLogger:
    """Appends records to OUT/metrics.jsonl, mirrors every number to TensorBoard, and drives a tqdm bar.

    `resume_step` (a resumed run) first truncates the JSONL to steps <= it and tells TensorBoard to purge
    the events after it. A disabled logger (DDP ranks other than 0) accepts every call and writes nothing.
    """

    def __init__(
        self,
        out: str | Path,
        *,
        total_steps: int,
        resume_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool = False,
    ) -> None:
        self.enabled = enabled
        self.path = Path(out) / METRICS
        self._file = self._tb = self._bar = None
        self._shown: dict[str, str] = {}  # the numbers beside the bar: the last of each
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step:
            truncate_metrics(self.path, resume_step)
        else:  # a fresh run in an old directory: the old curves are not this run's
            self.path.unlink(missing_ok=True)
            shutil.rmtree(Path(out) / "tb", ignore_errors=True)
        self._file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                str(Path(out) / "tb"), purge_step=resume_step + 1 if resume_step else None
            )
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=resume_step, unit="step", dynamic_ncols=True)

    def set_total(self, total_steps: int) -> None:
        """The run's step count changed (a time budget fitted it): the bar's end moves there."""
        if self._bar is not None:
            self._bar.total = total_steps
            self._bar.refresh()

    def log(self, record: Mapping[str, Any], *, prefix: str = "train") -> None:
        """Write one record (it must carry `step`); numbers go to TensorBoard as `prefix/name`."""
        if not self.enabled:
            return
        record = {k: _plain(v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)
        if self._bar is not None:
            shown = {"loss": ("loss", ".4f"), "tokens_per_s": ("tok/s", ",.0f"), "val_loss": ("val", ".4f")}
            self._shown.update({name: f"{record[k]:{f}}" for k, (name, f) in shown.items() if k in record})
            self._bar.set_postfix(self._shown, refresh=False)

    def progress(self, step: int) -> None:
        """Move the bar to `step` (it shows the last logged loss, tok/s and val loss)."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _plain(value: Any) -> Any:
    # Tensors (0-d, detached) become Python numbers so json can write them.
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def active_params(model: torch.nn.Module) -> int:
    """Non-embedding parameters one token passes through: for MoE layers only top_k routed experts count.

    The output head counts only when it is not tied to the embedding (a tied head is the embedding)."""
    cfg = model.cfg
    n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("embed."))
    if cfg.moe is not None:
        # Every MoE layer (main blocks and MTP blocks) holds n_experts routed experts; a token runs top_k.
        for module in model.modules():
            experts = getattr(module, "experts", None)
            if isinstance(experts, torch.nn.ModuleList) and len(experts):
                per_expert = sum(p.numel() for p in experts[0].parameters())
                n -= (len(experts) - cfg.moe.top_k) * per_expert
    return n


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), counted as PaLM (appendix B) and nanoGPT count them:
    6 per weight the token is multiplied through, plus 12 * layers * seq_len * n_heads * head_dim (the
    attention width: dim unless head_dim is set apart) for attention's scores and values (the causal mask
    not halving it). The weights are the non-embedding ones a token passes (`active_params`) and the
    output head once per prediction: the next token and each MTP depth, which reuses the head. The head
    counts whether or not it is tied: a tied head is the embedding matrix, left out of N, but its product
    is real work (151M of 717M FLOPs a token at `100m`). MTP blocks count as layers."""
    cfg = model.cfg
    head = cfg.vocab_size * cfg.dim
    body = active_params(model) - (0 if cfg.tie_embeddings else head)
    predictions = 1 + cfg.mtp_depth
    width = cfg.n_heads * cfg.head_dim
    return 6.0 * (body + predictions * head) + 12.0 * (cfg.n_layers + cfg.mtp_depth) * seq_len * width


def peak_flops(device: torch.device, dtype: torch.dtype, peak_tflops: float | None) -> tuple[float, str]:
    """The device's peak FLOP/s and where the number came from: the config, the GPU table, or a timing."""
    if peak_tflops is not None:
        if peak_tflops <= 0:
            raise ValueError(f"peak_tflops must be positive, got {peak_tflops}")
        return peak_tflops * 1e12, "config"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_FLOPS.items():
            if key in name:
                return flops, f"table ({name})"
    flops = measure_matmul_flops(device, dtype)  # the products' dtype: bf16 under autocast
    return flops, f"measured ({device.type} {str(dtype).removeprefix('torch.')} matmul)"


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, *, size: int = 1024) -> float:
    """FLOP/s of a square matmul on `device`, best of a few repeats (a stand-in peak for CPUs)."""
    # Deterministic inputs without touching the global RNG: training resumes must not see a shifted stream.
    a = torch.linspace(-1, 1, size * size, device=device, dtype=dtype).reshape(size, size)
    b = a.t().contiguous()
    best = math.inf
    for _ in range(4):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plot_curves(
    metrics: Mapping[str, str | Path],
    out_png: str | Path,
    *,
    x: str = "tokens",
    smooth: float = 0.9,
    title: str | None = None,
) -> Path:
    """Draw train loss (exponentially smoothed) and val loss of each labelled run against `x` ("tokens"
    or "step") into one PNG; returns its path. Runs are told apart by colour, train and val by line style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in ("tokens", "step"):
        raise ValueError(f"plot_curves: x must be 'tokens' or 'step', got {x!r}")
    if not 0 <= smooth < 1:
        raise ValueError(f"plot_curves: smooth must be in [0, 1), got {smooth}")
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, path) in enumerate(metrics.items()):
        records = read_metrics(path)
        colour = f"C{i % 10}"
        # The next-token loss when logged, so runs with MTP or MoE aux terms compare with dense ones.
        train = [{**r, "loss": r.get("ntp", r["loss"])} for r in records if "loss" in r and x in r]
        val = [r for r in records if "val_loss" in r and x in r]
        if train:
            ax.plot([r[x] for r in train], _ema([r["loss"] for r in train], smooth), colour, alpha=0.9,
                    label=f"{label} train")  # fmt: skip
        if val:
            ax.plot([r[x] for r in val], [r["val_loss"] for r in val], colour, linestyle="--", marker="o",
                    markersize=3, label=f"{label} val")  # fmt: skip
    ax.set_xlabel("tokens" if x == "tokens" else "optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or "pretraining loss")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out_png


def _ema(values: list[float], beta: float) -> list[float]:
    # Bias-corrected exponential moving average (as TensorBoard's smoothing): the first points are not
    # dragged towards zero.
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i) if beta else v)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m codefoundry.train.metrics --out curves.png dense=runs/dense moe=runs/moe ...`"""
    import argparse

    ap = argparse.ArgumentParser(description="draw the loss curves of pretraining runs side by side")
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (or a metrics.jsonl path)")
    ap.add_argument("--out", required=True, help="the PNG to write")
    ap.add_argument("--x", default="tokens", choices=("tokens", "step"))
    ap.add_argument("--title")
    args = ap.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = Path(spec).name, spec
        p = Path(path)
        runs[label] = p / "metrics.jsonl" if p.is_dir() else p
        if not runs[label].is_file():
            ap.error(f"{runs[label]}: no such metrics file")
    print(plot_curves(runs, args.out, x=args.x, title=args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
