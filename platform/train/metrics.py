"""Training metrics as JSON lines a user can plot, and the learning-curve PNG."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional


class MetricsWriter:
    """Appends one JSON object per line; every record carries step and wall time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self.start = time.time()
        self.records: list[dict[str, Any]] = []

    def log(self, step: int, **values: Any) -> dict[str, Any]:
        """Append {"step", "time_s" (seconds since the writer started), **values} to the file and return it."""
        rec = {"step": step, "time_s": round(time.time() - self.start, 3), **values}
        self.records.append(rec)
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, in order (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def loss_axis_limits(train: list[float], val: list[float], margin: float = 0.08) -> Optional[tuple[float, float]]:
    """(bottom, top) of a loss axis that shows the curve, not its start: from the lowest loss to the highest
    one after the first training loss (which, logged before the prompts have learned anything, is often
    several times the rest and would squash the curve into a flat line), padded by `margin` of the range.
    `train`, `val`: the training and validation losses in step order. None when both are empty."""
    values = train + val
    if not values:
        return None
    rest = train[1:] + val
    low, high = min(values), max(rest or values)
    pad = (high - low) * margin or abs(high) * margin or 1.0
    return low - pad, high + pad


def draw_learning_curve(ax, records: list[dict[str, Any]], published_step: Optional[int] = None,
                        title: Optional[str] = None) -> bool:
    """Train and validation loss against step on the matplotlib axes `ax`, the y-axis fitted by
    `loss_axis_limits` (a first loss above it is cut at the top edge and labelled with its value), and a
    dashed vertical line at `published_step` (the step whose prompts were published: the lowest validation
    loss). False when `records` hold no loss to draw."""
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    limits = loss_axis_limits([v for _, v in train], [v for _, v in val])
    if limits is None:
        return False
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="tab:orange")
    ax.set_ylim(*limits)
    if train and train[0][1] > limits[1]:
        ax.annotate(f"first loss {train[0][1]:.2f} (off the scale)", xy=(train[0][0], limits[1]), xytext=(6, -12),
                    textcoords="offset points", fontsize=8, color="tab:blue")
    if published_step is not None:
        ax.axvline(published_step, color="tab:green", linestyle="--", linewidth=1.2,
                   label=f"published prompts (step {published_step})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean token cross-entropy)")
    ax.set_title(title or "learning curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return True


def plot_learning_curve(records: list[dict[str, Any]], out: Path, title: Optional[str] = None,
                        published_step: Optional[int] = None) -> Optional[Path]:
    """`draw_learning_curve` as a PNG at `out`. Returns its path (None when there is nothing to plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    try:
        if not draw_learning_curve(ax, records, published_step, title):
            return None
        fig.tight_layout()
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
        return out
    finally:
        plt.close(fig)
