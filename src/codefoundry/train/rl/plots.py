"""The RL run's curves: train reward mean and held-out pass@1 (with its confidence band) over steps."""

from __future__ import annotations

from pathlib import Path

from codefoundry.train.metrics import read_metrics


def plot_rl_curves(metrics: str | Path, out_png: str | Path) -> Path:
    """Reward mean (train) and held-out pass@1 with its CI band over steps, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics)
    train = [r for r in records if "reward_mean" in r]
    evals = [r for r in records if "pass@1" in r]
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
