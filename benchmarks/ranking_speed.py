"""One label-ranking validation pass: each record's prompt once vs each task's prompt start once per batch.

The search's objective (platform/generation/ranking.py `ValidationObjective`, label ranking: every record
scored with every label, `model.micro_batch_size` records per forward) on smollm2-135m in bf16 with a fresh
text-initialised 20-token prompt, built as the budget search builds it (`prepare_engine` on the task's
training config, the candidate's `PromptModel` as platform/train/pack.py makes it), on the demo's
sentiment task (the first 80 validation records, 2 labels: the search benchmark's default sample) and its
TREC question-type task (200 validation records, 6 labels; benchmarks/search_bench.py's `task_config`).

Sides, interleaved in one process (the order alternates each round; one untimed warm-up pass each first):
- prompt: `PromptLearningModel.prefix_group_by = "prompt"` (the default): the L rows of a record share its
  whole prompt; the prompt runs once per record (its task's start once per batch), each label's answer
  (+ EOS) against its KV cache.
- task: `prefix_group_by = "task"` (the grouping before): each task's prompt start (virtual tokens and
  the template text before the first field) once per batch, each record's own text once per label.
- plain: `share_prefix = False`: every row in full.
Reported per side and task: the median and every timed pass (seconds), the accuracy (the same on every
side when the layouts are exact), and the tokens one pass runs (prefix rows + remainder rows, padding
included; the plain forward: rows x columns needed). torch runs on `--threads` threads (1 by default);
the load average at the start and the end is recorded: other work on the machine slows every side.

    python -m benchmarks.ranking_speed [--repeats N] [--threads N] [--quick] [--out NAME]
--quick: sentiment 16 records, TREC 24 records, 1 timed pass (a smoke check).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import machine, table, write_result
from benchmarks.search_bench import task_config, task_splits
from promptray.platform.config.schema import load_config
from promptray.platform.data.batching import collate
from promptray.platform.data.dataset import read_records
from promptray.platform.data.encoding import TaskEncoding
from promptray.platform.generation.loading import PromptModel
from promptray.platform.generation.ranking import ValidationObjective, closed_labels
from promptray.platform.model.prefix import PrefixSplit, split_shared_prefix
from promptray.platform.train.trainer import prepare_engine

SIDES = {"prompt": (True, "prompt"), "task": (True, "task"), "plain": (False, "prompt")}  # share, group_by
N_VAL = {"sentiment": 80, "question_type": 200}
MAX_LABELS = 20  # search.max_labels' default


def objective(task: str, work: Path, n_val: int) -> ValidationObjective:
    """The search's label-ranking objective of `task` for a fresh candidate prompt, on n_val records."""
    data = task_splits(task, work / "data", n_test=400)
    cfg = load_config(task_config(task, work / task, data, steps=1))
    engine = prepare_engine(cfg)
    template, d = engine.templates[task], cfg.model.data
    model = PromptModel(engine.model, engine.tokenizer, {task: template}, {task: None}, engine.fingerprint,
                        {task: TaskEncoding(add_bos=d.add_bos, add_eos=d.add_eos)})
    train, val = read_records([data["train"]]), read_records([data["validation"]])
    labels = closed_labels(template, train + val, MAX_LABELS)
    limit = min(cfg.max_seq_length or engine.model.max_positions, engine.model.max_positions)
    return ValidationObjective(model, task, val[:n_val], labels, max_seq_length=limit,
                               batch_size=cfg.model.micro_batch_size)


def tokens_run(obj: ValidationObjective, side: str) -> int:
    """Tokens one pass runs on `side`: prefix rows + remainder rows (padding included), or the plain rows,
    each through the column that predicts its batch's last target (as `target_logprobs` runs them)."""
    share, group_by = SIDES[side]
    rs, per = obj.ranking, obj.batch_size * len(obj.ranking.labels)
    total = 0
    for s in range(0, len(rs.examples), per):
        batch = collate(rs.examples[s:s + per], obj.engine.tokenizer.pad_token_id)
        layout = split_shared_prefix(batch, group_by=group_by) if share else None
        rows = batch if layout is None else layout
        total += len(batch) * columns(rows.loss_mask) + (0 if layout is None else prefix_tokens(layout))
    return total


def prefix_tokens(layout: PrefixSplit) -> int:
    """Tokens the prefix rows run: whole, or (nested) their shared starts and then their rests."""
    o = layout.outer
    return layout.prefix_mask.numel() if o is None else prefix_tokens(o) + o.input_ids.numel()


def columns(loss_mask: torch.Tensor) -> int:
    """Input columns a forward runs: through the one that predicts the last target."""
    return int(loss_mask[:, 1:].any(0).nonzero()[-1]) + 1


def timed(obj: ValidationObjective, side: str) -> tuple[float, float]:
    model = obj.engine.model
    model.share_prefix, model.prefix_group_by = SIDES[side]
    t0 = time.perf_counter()
    acc = obj()
    return time.perf_counter() - t0, acc


def run_task(task: str, work: Path, n_val: int, repeats: int) -> dict:
    obj = objective(task, work / task, n_val)
    rs = obj.ranking
    out = {"records": len(rs.gold), "labels": rs.labels, "rows": len(rs.examples), "batch_records": obj.batch_size,
           "sides": {s: {"seconds": [], "accuracy": []} for s in SIDES}}
    for s in SIDES:  # warm-up (and the one-time check of the split layout against the plain forward)
        out["sides"][s]["warmup_seconds"], _ = timed(obj, s)
    for r in range(repeats):
        for s in (list(SIDES) if r % 2 == 0 else list(SIDES)[::-1]):
            sec, acc = timed(obj, s)
            out["sides"][s]["seconds"].append(round(sec, 3))
            out["sides"][s]["accuracy"].append(acc)
    for s, v in out["sides"].items():
        v["median_seconds"] = statistics.median(v["seconds"])
        v["tokens_per_pass"] = tokens_run(obj, s)
    out["split_layout_verified"] = "split" in obj.engine.model._verified
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--out", default="ranking_speed")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_val = {"sentiment": 16, "question_type": 24} if args.quick else N_VAL
    repeats = 1 if args.quick else args.repeats
    result = {"benchmark": "ranking_speed", "machine": machine(), "threads": args.threads, "repeats": repeats,
              "model": "smollm2-135m", "precision": "bf16", "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for task in ("sentiment", "question_type"):
            result["tasks"][task] = run_task(task, work, n_val[task], repeats)
    result["load_average_1_5_15min_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write_result(args.out, result)
    rows = [[t, s, v["median_seconds"], v["seconds"], v["accuracy"][0], v["tokens_per_pass"]]
            for t, r in result["tasks"].items() for s, v in r["sides"].items()]
    print(table(rows, ["task", "side", "median s", "passes s", "accuracy", "tokens/pass"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
