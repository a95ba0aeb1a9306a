"""What each Ray Train worker runs: the platform's training loop on its rank, with reports and checkpoints.

Every worker calls `ray.train.report` at the same steps (each logged metrics record and each checkpoint
step; it is a barrier). Rank 0 attaches the checkpoint (its state is the whole state: the trainable
parameters are replicated), sends each metrics record to the driver's queue (the driver prints it), and
at the end publishes the best prompts and reports the result with a final checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from promptray.jobs.config import JobConfig
from promptray.jobs.faults import Faults
from promptray.jobs.trainer_factory import worker_start
from promptray.platform.train.distributed import Dist
from promptray.platform.train.loop import StepInfo, TrainLoop, TrainResult
from promptray.platform.train.trainer import build_loop

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
RESULT_KEY = "promptray_result"  # the metric that carries the final result (a JSON string) to the driver
FAULT_DELAY_S = 5.0  # > 2 x Ray Train's 2 s worker poll interval


def metrics_line(record: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """A metrics record in the contract's order: step, total_steps, loss, tokens_per_s, then the rest."""
    first = {"step": record["step"], "total_steps": total_steps, "loss": record.get("loss"),
             "tokens_per_s": record.get("tokens_per_s")}
    return {**first, **{k: v for k, v in record.items() if k not in first}}


def result_payload(result: TrainResult) -> dict[str, Any]:
    """The JSON-ready result of a run: table, versions, steps, best_val_loss, best_step, run_dir."""
    return {"table": result.table_uri, "versions": result.versions, "steps": result.steps,
            "best_val_loss": result.best_val_loss, "best_step": result.best_step, "run_dir": str(result.run_dir)}


class Reporter:
    """The loop's per-step callback on a Ray Train worker."""

    def __init__(self, cfg: JobConfig, loop: TrainLoop, group: Dist, queue=None,
                 faults: Optional[Faults] = None):
        self.cfg, self.loop, self.group, self.queue, self.faults = cfg, loop, group, queue, faults or Faults()
        self.every = cfg.ray.checkpoint_every_n_steps or loop.every

    def __call__(self, info: StepInfo) -> None:
        self._maybe_fail(info.step)
        due = info.step % self.every == 0 and info.step < info.total_steps  # the last one comes with the result
        if info.record is None and not due:
            return
        metrics = metrics_line(info.record, info.total_steps) if info.record else {"step": info.step}
        if info.record is not None and self.group.is_main and self.queue is not None:
            self.queue.put(metrics)
        report(metrics, self.loop if due else None, self.group)

    def _maybe_fail(self, step: int) -> None:
        """Fault injection (faults.fail_at_step): the last worker exits at that step, once per run directory."""
        if self.faults.fail_at_step == step and self.group.rank == self.group.world_size - 1:
            fail_once(self.cfg, f"step_{step}", self.group.rank)


def fail_once(cfg: JobConfig, where: str, rank: int) -> None:
    """Exit this worker process (fault injection for tests), once per run directory and place."""
    marker = cfg.run_dir / f".promptray_fault_at_{where}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"worker {rank} exited here on purpose (fault injection)\n")
    log.warning("fault injection: worker %d exits at %s", rank, where)
    time.sleep(FAULT_DELAY_S)  # let the controller register the last checkpoint, as a real crash would
    os._exit(1)


def report(metrics: dict[str, Any], loop: Optional[TrainLoop], group: Dist) -> None:
    """ray.train.report on every worker; with `loop`, rank 0 attaches a checkpoint of its state."""
    import ray.train

    if loop is None or not group.is_main:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="promptray-ckpt-") as tmp:
        torch.save(loop.state_dict(), Path(tmp) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restore(loop: TrainLoop, group: Dist) -> bool:
    """Continue from the run's latest checkpoint, if there is one (after a worker group restart); rank 0
    notes each resume in restarts.jsonl in the run directory."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        loop.load_state_dict(torch.load(Path(folder) / STATE_FILE, weights_only=True))
    log.warning("resumed from the checkpoint at step %d", loop.state.step)
    if group.is_main:
        with (loop.cfg.run_dir / "restarts.jsonl").open("a") as f:
            f.write(json.dumps({"resumed_from_step": loop.state.step, "time": time.time()}) + "\n")
    return True


def worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: config = {"config": JobConfig dump, "queue": Queue,
    "run": {"id", "started_at"}} (the run's identity, the same for every restart of its worker group)."""
    cfg, group, device = worker_start(config)
    loop = build_loop(cfg, group, device, progress=False)
    restore(loop, group)
    faults = Faults.from_dict(config.get("faults"))
    loop.run(on_step=Reporter(cfg, loop, group, config.get("queue"), faults))
    result = loop.finish(publish=True, run=config.get("run"))
    if faults.fail_after_publish and group.is_main:
        fail_once(cfg, "publish", group.rank)
    final = {"step": loop.steps, "done": True}
    if result is not None:
        final[RESULT_KEY] = json.dumps(result_payload(result))
    report(final, loop, group)
