"""The RL run's curves: train reward mean and held-out pass@1 (with its confidence band) over steps.

`rl_records` is what both the curves and the run's summary read: the train and eval records of
OUT/metrics.jsonl whose fields are numbers. A record that is valid JSON but was damaged by hand (a field
missing, or a string where a number was) is left out and named, not a traceback after the training ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from codefoundry.train.metrics import read_metrics

# The fields the summary and the curves read from each kind of record
TRAIN_FIELDS = ("step", "reward_mean", "time_step_s")
EVAL_FIELDS = ("step", "pass@1", "low", "high")


def rl_records(metrics: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(train records, eval records, one line per record left out) of an RL metrics file.

    A record with `reward_mean` is a train record, one with `pass@1` an eval record; either is kept only
    when each of its fields in TRAIN_FIELDS or EVAL_FIELDS is a number (not a bool). A left-out record is
    named by file and record number (1-based, as `truncate_metrics` names them) and its bad fields."""
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    skipped: list[str] = []
    for i, record in enumerate(read_metrics(metrics), start=1):
        for marker, fields, kept in (("reward_mean", TRAIN_FIELDS, train), ("pass@1", EVAL_FIELDS, evals)):
            if marker not in record:
                continue
            bad = [k for k in fields if not _is_number(record.get(k))]
            if bad:
                skipped.append(f"{metrics}: record {i} left out: {', '.join(bad)} missing or not a number")
            else:
                kept.append(record)
    return train, evals, skipped


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def plot_rl_curves(metrics: str | Path, out_png: str | Path) -> Path:
    """Reward mean (train) and held-out pass@1 with its CI band over steps, one PNG; records that
    `rl_records` leaves out are not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals, _ = rl_records(metrics)
    fig, ax = plt.subplots(figsize=(8, 5))
    if train:
        ax.plot([r["step"] for r in train], [r["reward_mean"] for r in train], "C0", alpha=0.8,
                label="train reward mean")  # fmt: skip
    if evals:
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r["pass@1"] for r in evals], "C1", marker="o", label="held-out pass@1")
        ax.fill_between(steps, [r["low"] for r in evals], [r["high"] for r in evals], color="C1", alpha=0.2)
    ax.set_xlabel("step")
    ax.set_title("RL: reward and pass@1")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out_png
