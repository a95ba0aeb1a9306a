"""`python -m promptray.jobs.train`: a prompt-learning config as a Ray Train (V2) job.

    python -m promptray.jobs.train --config X.yaml [model.optim.lr=0.01 ray.num_workers=2 ...]
                                   [--address ADDR] [--num-cpus N] [-v]

Ray: with --address or RAY_ADDRESS (set by `ray job submit`'s supervisor) the driver joins that cluster;
otherwise it starts an embedded local Ray just for this run (never a `ray start` cluster by accident).

Stdout contract (parsed by the SDK from job logs; one JSON object per line, lines start at column 0):
    PROMPTRAY_METRICS {"step": 3, "total_steps": 10, "loss": ..., "tokens_per_s": ..., ...}
        once per logged metrics record (a step retried after a worker failure is printed again)
    PROMPTRAY_RESULT {"table": uri, "versions": {task: version}, "steps": n, "best_val_loss": x, "best_step": n,
                      "run_dir": path}
        exactly once, at the end of a successful run
Exit codes: 0 success; 2 invalid input (a clear message on stderr, no traceback); 1 training failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue as queue_mod
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from promptray.jobs.cli_common import parse_anywhere, require_ray
from promptray.jobs.config import JobConfig, load_job_config
from promptray.jobs.faults import faults_from_env
from promptray.platform.errors import ConfigError, PromptrayError
from promptray.platform.model.limits import check_model_limits_on_driver

log = logging.getLogger(__name__)

METRICS_PREFIX = "PROMPTRAY_METRICS "
RESULT_PREFIX = "PROMPTRAY_RESULT "


class TrainingFailed(PromptrayError):
    """The Ray Train run failed (after its allowed restarts); the message carries the workers' errors."""


# ----------------------------------------------------------------------------- paths

def _local(uri: Optional[str]) -> bool:
    return bool(uri) and "://" not in str(uri).removeprefix("file://")


def _absolute(path: str) -> str:
    return str(Path(str(path).removeprefix("file://")).expanduser().resolve())


def absolutize(cfg: JobConfig) -> JobConfig:
    """A copy whose local paths (tables, data, run dir, base model folder, checkpoints) are absolute, so
    workers (other processes, other working directories) find the same files."""
    cfg = cfg.model_copy(deep=True)
    m, em = cfg.model, cfg.exp_manager
    for key in ("nemo_path", "prompt_table", "restore_path"):
        if _local(getattr(m, key)):
            setattr(m, key, _absolute(getattr(m, key)))
    if m.language_model_path and Path(m.language_model_path).expanduser().exists():
        m.language_model_path = _absolute(m.language_model_path)
    m.data.train_ds = [_absolute(s) if isinstance(s, str) and _local(s) else s for s in m.data.train_ds]
    if m.data.validation_ds:
        m.data.validation_ds = [_absolute(s) if isinstance(s, str) and _local(s) else s for s in m.data.validation_ds]
    if em.explicit_log_dir:
        em.explicit_log_dir = _absolute(em.explicit_log_dir)
    em.exp_dir = _absolute(em.exp_dir or "runs")
    cfg.ray.storage_path = (_absolute(cfg.ray.storage_path) if _local(cfg.ray.storage_path)
                            else cfg.ray.storage_path or str(cfg.run_dir / "checkpoints"))
    return cfg


# ----------------------------------------------------------------------------- Ray

def connect(address: Optional[str], cfg: JobConfig, num_cpus: Optional[int] = None) -> None:
    """Join the cluster at `address` / RAY_ADDRESS, else start an embedded local Ray for this run."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        raise ConfigError(f"--address / RAY_ADDRESS: {address!r} is a dashboard (job submission) address; "
                          "submit with `ray job submit --address ADDR -- python -m promptray.jobs.train ...`, "
                          "or give the cluster's GCS address (host:6379 or 'auto')")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    per_worker = (cfg.ray.resources_per_worker or {}).get("CPU", 1)
    needed = int(per_worker * cfg.world_size + 0.999)
    ray.init(address="local", num_cpus=num_cpus or max(os.cpu_count() or 1, needed), include_dashboard=False,
             log_to_driver=True)


def build_trainer(cfg: JobConfig, metrics_queue=None):
    """The TorchTrainer of a run: workers, resources, checkpoints and restarts from `cfg.ray`."""
    from ray.train import CheckpointConfig, FailureConfig

    from promptray.jobs.train_worker import worker_loop
    from promptray.jobs.trainer_factory import torch_trainer, worker_resources
    from promptray.platform.table.manifest import utcnow

    r = cfg.ray
    if cfg.trainer.accelerator.lower() in ("gpu", "cuda") and not r.use_gpu:
        log.warning("trainer.accelerator: %s applies to one process; Ray Train workers run on the CPU unless "
                    "ray.use_gpu: true", cfg.trainer.accelerator)
    name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    resources = worker_resources(cfg, cfg.world_size)
    log.info("%d Train worker(s), each reserving %s (ray.resources_per_worker: %s)", cfg.world_size, resources,
             r.resources_per_worker or "auto")
    return torch_trainer(cfg, worker_loop, {"queue": metrics_queue, "faults": faults_from_env().to_dict(),
                                            "run": {"id": name, "started_at": utcnow()}}, name, resources,
                         checkpoint_config=CheckpointConfig(num_to_keep=r.num_to_keep),
                         failure_config=FailureConfig(max_failures=r.max_failures))


def _pump(q, echo: Callable[[str], None], stop: threading.Event) -> None:
    """Print the workers' metrics records as they arrive, until `stop` is set and the queue is empty."""
    while True:
        try:
            record = q.get(block=True, timeout=0.5)
        except (queue_mod.Empty, Exception):  # ray.util.queue.Empty is queue.Empty; a gone actor ends it too
            if stop.is_set():
                return
            continue
        echo(METRICS_PREFIX + json.dumps(record))


def run_job(cfg: JobConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the training job on the connected Ray; echo each metrics line; return the result payload."""
    from ray.util.queue import Queue

    from promptray.jobs.train_worker import RESULT_KEY

    q = Queue(actor_options={"num_cpus": 0})
    stop = threading.Event()
    pump = threading.Thread(target=_pump, args=(q, echo, stop), daemon=True)
    pump.start()
    try:
        result = fit_trainer(build_trainer(cfg, q))
    finally:
        stop.set()
        pump.join(timeout=30)
        q.shutdown()
    if not result.metrics or RESULT_KEY not in result.metrics:
        raise TrainingFailed(f"the run ended without a result (last metrics: {result.metrics})")
    return json.loads(result.metrics[RESULT_KEY])


def fit_trainer(trainer):
    """`trainer.fit()`, where a PromptrayError raised in a worker (bad data, table problems, ...) comes out as
    itself and any other failure as TrainingFailed (also used by multi-worker search trials)."""
    from ray.train.v2.api.exceptions import TrainingFailedError

    try:
        return trainer.fit()
    except TrainingFailedError as e:
        cause = _user_error(e)
        if cause is not None:
            raise cause from None
        raise TrainingFailed(f"training failed: {e}") from None


def _user_error(error: BaseException) -> Optional[PromptrayError]:
    """A PromptrayError (invalid data, table problems, ...) raised inside a worker, if that is what failed."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, PromptrayError):
            return e
        todo += list(getattr(e, "worker_failures", {}).values())
        todo += [getattr(e, "cause", None), getattr(e, "controller_failure", None), e.__cause__]
    return None


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m promptray.jobs.train`."""
    p = argparse.ArgumentParser(prog="python -m promptray.jobs.train",
                                description="Prompt-tune / p-tune from a NeMo-style config as a Ray Train job.")
    p.add_argument("--config", required=True, help="YAML config (NeMo's prompt-learning format + `ray:`)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.optim.lr=0.01 ray.num_workers=2 "
                   "(before or after the flags)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: this machine's)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Run a Ray Train job from the command line; print the PROMPTRAY_RESULT line. Exit status 0; 2 for an error
    from user input; 1 when training failed; 130 when interrupted."""
    args = parse_anywhere(build_parser(), argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = absolutize(load_job_config(args.config, args.overrides, check_files=True))
        check_model_limits_on_driver(cfg)  # the base model's config only, before Ray starts
        require_ray("a training job needs Ray Train")
        connect(args.address, cfg, args.num_cpus)
        payload = run_job(cfg, echo=lambda line: print(line, flush=True))
    except PromptrayError as e:
        print(f"promptray.jobs.train: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, TrainingFailed) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(RESULT_PREFIX + json.dumps(payload), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
