"""What a finished search leaves: the trials table (CSV / JSON: one row per trial, or per candidate of a packed
trial, with its curve, steps and state), the plot (metric vs token count, or every candidate's curve), and
the best trial's or candidate's prompts published with provenance (the only thing a search publishes)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from promptray.jobs.config import JobConfig, load_job_config
from promptray.jobs.search_space import trial_config
from promptray.jobs.search_trial import BEST_PROMPTS, CANDIDATES, read_publication, trial_dir
from promptray.platform.data.encoding import TaskEncoding
from promptray.platform.errors import PromptrayError
from promptray.platform.model.fingerprint import BaseModelFingerprint
from promptray.platform.table.table import PromptTable, TaskPrompt
from promptray.platform.train.engine import restore_tasks
from promptray.platform.train.publishing import copies_existing, publish_tasks, task_prompts, training_encoding
from promptray.platform.train.trainer import prepare_engine


class SearchFailed(PromptrayError):
    """No trial of a search group reported its metric (every trial failed, or the budget ran out first)."""


def trial_rows(grid, group: str, tasks: list[str], metric: str, mode: str) -> list[dict[str, Any]]:
    """One row per trial: its id, choices, best value of the metric, validations run, and its error as one
    plain line (None when it ran without one). A trial that never reported the metric has status 'error'."""
    return [_row(r, group, metric, mode) for r in grid]


def _row(r, group: str, metric: str, mode: str) -> dict[str, Any]:
    metrics, df = r.metrics or {}, r.metrics_dataframe
    row = {"group": group, "trial_id": metrics.get("trial_id"), "status": "error",
           "error": error_line(r.error) if r.error else None}
    if df is not None and metric in df and not df[metric].dropna().empty:
        values = df[metric].dropna()
        row.update({"trial_id": str(df["trial_id"].iloc[-1]), "status": "ok",
                    metric: float(values.min() if mode == "min" else values.max()),
                    "iterations": int(df["training_iteration"].max()), "last_step": int(df["step"].max()),
                    "total_steps": int(df["total_steps"].max()),
                    "workers": int(df["workers"].max()) if "workers" in df else 1})
        row["state"] = "finished" if row["last_step"] >= row["total_steps"] else "stopped"
        row["curve"] = [[int(st), float(v)] for st, v in zip(df["step"], df[metric]) if v == v]
    return {**row, **{f"config/{k}": v for k, v in (r.config or {}).items()}}


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def pack_rows(grid, group: str, metric: str, trials_root: Path) -> list[dict[str, Any]]:
    """One row per candidate of each packed trial (from its candidates.json): the pack's trial id, the
    candidate, its choice (config/...), best value, validations, steps trained, state (finished, stopped by
    a rung's cut, running when the pack ended early) and curve ([step, value] per validation). A pack that
    erred before any report is one error row."""
    rows = []
    for r in grid:
        trial_id = (r.metrics or {}).get("trial_id")
        path = trial_dir(str(trials_root), trial_id) / CANDIDATES if trial_id else None
        if path is None or not path.is_file():
            rows.append({"group": group, "trial_id": trial_id, "status": "error",
                         "error": error_line(r.error) if r.error else "no candidate reported",
                         **{f"config/{k}": v for k, v in (r.config or {}).items()}})
            continue
        for c in json.loads(path.read_text()):
            ok = c["best"] is not None
            error = c.get("error") or (error_line(r.error) if r.error else None)
            rows.append({"group": group, "trial_id": trial_id, "candidate": c["candidate"],
                         "status": "ok" if ok else "error", "error": error,
                         metric: c["best"], "iterations": len(c["curve"]), "last_step": c["steps"],
                         "best_step": c["best_step"], "state": c["state"], "pack_best": c["is_best"],
                         "workers": 1, "curve": [[x["step"], x.get(metric)] for x in c["curve"]],
                         **{f"config/{k}": v for k, v in c["choice"].items()}})
    return rows


def error_line(error: BaseException) -> str:
    """A trial's error as one plain line: the exception raised in the trial (not Ray's wrapper), its type and
    message (a ConfigError's problems joined by '; '), without terminal colour codes or a traceback."""
    cause = getattr(error, "cause", None) or error
    problems = getattr(cause, "problems", None)
    lines = str(cause).strip().splitlines() or [""]
    text = "; ".join(problems) if problems else " ".join(lines) if cause is not error else lines[-1]
    text = " ".join(_ANSI.sub("", text).split())
    return f"{type(cause).__name__}: {text}"[:500]


def errored(rows: list[dict[str, Any]]) -> int:
    """How many trials ended with an error."""
    return sum(1 for r in rows if r.get("error"))


def best_row(rows: list[dict[str, Any]], group: str, metric: str, mode: str) -> dict[str, Any]:
    """The best `ok` trial row of `group` by `metric` (mode 'min' or 'max'); SearchFailed when none reported it."""
    mine = [r for r in rows if r["group"] == group]
    ok = [r for r in mine if r["status"] == "ok" and not math.isnan(r[metric])]
    if not ok:
        first = next((f" (first: {r['error']})" for r in mine if r.get("error")), "")
        raise SearchFailed(f"search group {group!r}: no trial reported {metric}; {errored(mine)} of {len(mine)} "
                           f"trial(s) erred{first}; see trials.json")
    return (min if mode == "min" else max)(ok, key=lambda r: r[metric])


def finalists(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of a budget search that may be published: each pack's best surviving candidate (`pack_best`,
    search_pack.PackRun.table) and the error rows (so best_row can name an error when nothing reported)."""
    return [r for r in rows if r.get("pack_best") or r["status"] != "ok"]


def write_tables(run_dir: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write every trial row to run_dir/trials.csv and trials.json; returns their paths."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    csv_path, json_path = run_dir / "trials.csv", run_dir / "trials.json"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=2, default=str))
    return csv_path, json_path


def plot_trials(run_dir: Path, rows: list[dict[str, Any]], tasks: list[str], metric: str) -> Path:
    """Plot `metric` against total virtual tokens per task (the ok trials) to run_dir/search_plot.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        pts = [(r[f"config/{task}.total_virtual_tokens"], r[metric]) for r in rows
               if r["status"] == "ok" and f"config/{task}.total_virtual_tokens" in r]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts])
        ax.set(title=task, xlabel="total virtual tokens", ylabel=metric)
    fig.tight_layout()
    path = run_dir / "search_plot.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(run_dir: Path, rows: list[dict[str, Any]], tasks: list[str], metric: str) -> Path:
    """Every candidate's curve (metric vs optimizer steps) per task: solid to the end, dashed where a rung cut
    it, the published one thick."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["status"] == "ok" and f"config/{task}.total_virtual_tokens" in r]
        pool = [r for r in mine if r.get("pack_best")] or mine  # what the search publishes
        best = (min if metric == "val_loss" else max)(pool, key=lambda r: r[metric], default=None)
        for r in mine:
            pts = [p for p in r.get("curve") or [] if p[1] is not None]
            lr = r.get("config/lr", r.get(f"config/{task}.lr"))
            label = f"{r[f'config/{task}.total_virtual_tokens']} tok" + (f", lr {lr:.2g}" if lr else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label,
                    linestyle="--" if r.get("state") == "stopped" else "-", linewidth=3 if r is best else 1)
        ax.set(title=task, xlabel="optimizer steps", ylabel=metric)
        if mine:
            ax.legend(fontsize=6)
    fig.tight_layout()
    path = run_dir / "search_plot.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def publish_best(cfg: JobConfig, best: dict[str, tuple[list[str], dict]], search_id: str,
                 trials_root: Path) -> dict[str, str]:
    """Publish each group's best trial's prompts, with the search id, trial config and metric as provenance,
    the base model and encoding its trial recorded (`search_trial.save_best`; the base model is loaded here
    only for a trial that recorded none), and the config's existing tasks copied as a training run does."""
    base, metric = cfg.model_dump(mode="json"), cfg.search.metric
    out = []
    for group, (tasks, row) in best.items():
        choice = {k.removeprefix("config/"): v for k, v in row.items() if k.startswith("config/")}
        tcfg = load_job_config(trial_config(base, tasks, choice, str(trial_dir(str(trials_root), row["trial_id"]))))
        run_dir = Path(tcfg.run_dir)
        prompts = torch.load(run_dir / BEST_PROMPTS, weights_only=True)
        base_model, encoding = read_publication(run_dir) or _from_model(tcfg)
        source = {"job": "promptray search", "search_id": search_id, "group": group, "trial_id": row["trial_id"],
                  "trial_config": choice, "config_name": cfg.name, "run_dir": str(cfg.run_dir)}
        metrics = {metric: row[metric], "iterations": row["iterations"]}
        out += task_prompts(tcfg, prompts, tasks, metrics, source, base_model=base_model, encoding=encoding)
    return publish_tasks(cfg, _existing(cfg), out)


def _existing(cfg: JobConfig) -> dict[str, TaskPrompt]:
    """The config's existing tasks as its trials restored them (published along when the table is another)."""
    m = cfg.model
    if not m.existing_tasks or not copies_existing(cfg):
        return {}
    return restore_tasks(PromptTable(m.restore_path, endpoint_url=cfg.storage.endpoint_url), m.existing_tasks)


def _from_model(tcfg: JobConfig) -> tuple[BaseModelFingerprint, TaskEncoding]:
    engine = prepare_engine(tcfg)
    return engine.fingerprint, training_encoding(tcfg, engine.tokenizer)
