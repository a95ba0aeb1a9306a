"""The Ray Train pieces that the train job and a multi-worker search trial share: the `TorchTrainer` built from
`cfg.ray` (world size, GPU, resources per worker, storage) and a worker's start (its config, rank and device)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from promptray.jobs.config import JobConfig
from promptray.platform.train.distributed import Dist


def torch_trainer(cfg: JobConfig, loop_per_worker: Callable[[dict[str, Any]], None], loop_config: dict[str, Any],
                  name: str, **run_config: Any):
    """A Ray Train `TorchTrainer` running `loop_per_worker` on `cfg.world_size` workers with `cfg.ray`'s use_gpu,
    resources_per_worker and storage_path. Each worker gets `loop_config` plus {"config": the JobConfig dump}
    (read it back with `worker_start`); `run_config` (checkpoint_config, failure_config, callbacks) goes to
    Ray's `RunConfig`, named `name`."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    r = cfg.ray
    return TorchTrainer(
        loop_per_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), **loop_config},
        scaling_config=ScalingConfig(num_workers=cfg.world_size, use_gpu=r.use_gpu,
                                     resources_per_worker=r.resources_per_worker),
        run_config=RunConfig(name=name, storage_path=r.storage_path, **run_config))


def worker_start(config: dict[str, Any]) -> tuple[JobConfig, Dist, Optional[torch.device]]:
    """On a Ray Train worker of a `torch_trainer`: (its JobConfig, its rank in the worker group, its device:
    `ray.train.torch.get_device()` with ray.use_gpu, else None for the CPU)."""
    import ray.train

    ctx = ray.train.get_context()
    group = Dist(ctx.get_world_rank(), ctx.get_world_size())
    cfg = JobConfig.model_validate(config["config"])
    device = None
    if cfg.ray.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
    return cfg, group, device
