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


def plot_learning_curve(records: list[dict[str, Any]], out: Path, title: Optional[str] = None) -> Optional[Path]:
    """Train and validation loss against step. Returns the PNG path (None when there is nothing to plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean token cross-entropy)")
    ax.set_title(title or "learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
