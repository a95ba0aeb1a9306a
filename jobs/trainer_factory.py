"""The Ray pieces that the train job and the search share: the `TorchTrainer` built from `cfg.ray` (world size,
GPU, resources per worker, storage), a worker's start (its config, rank, device and threads), and how many CPUs
a process gets when the config does not say (`cpu_share`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from promptray.jobs.config import JobConfig
from promptray.platform.train.distributed import Dist


def cpu_share(processes: int, node_cpus: list[float], available: Optional[float] = None) -> float:
    """The CPUs each of `processes` training processes running at once reserves when the config does not say:
    an equal share of one node's CPUs (a process runs on one node), the processes spread over the nodes, and no
    more than an equal share of the cluster's `available` CPUs (those not held by, e.g., a serve replica); at
    least 1. `node_cpus`: each alive node's CPUs (Ray's "CPU" resource). One 2-CPU machine: 2 CPUs for one
    process, 1 each for two. Torch trains on as many threads (`use_reserved_cpus`)."""
    nodes = [c for c in node_cpus if c >= 1] or [1.0]
    per_node = -(-processes // len(nodes))  # processes sharing the largest node, rounded up
    share = max(nodes) // per_node
    if available is not None:
        share = min(share, available // processes)
    return float(max(1, int(share)))


def cluster_cpus() -> tuple[list[float], float]:
    """(each alive node's CPUs, the CPUs available now in the whole cluster) of the connected Ray."""
    import ray

    nodes = [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return nodes, float(ray.available_resources().get("CPU", 0))


def worker_resources(cfg: JobConfig, processes: int) -> dict[str, float]:
    """A Train worker's resources: `ray.resources_per_worker` when set, else {"CPU": its `cpu_share` of the
    connected cluster} with `processes` workers (of all trials) running at once."""
    if cfg.ray.resources_per_worker is not None:
        return dict(cfg.ray.resources_per_worker)
    nodes, available = cluster_cpus()
    return {"CPU": cpu_share(processes, nodes, available)}


def use_reserved_cpus() -> int:
    """Set torch's intra-op threads to the CPUs Ray reserved for this process (at least 1) and return them: a
    pooled Ray worker can keep the thread count of an earlier task whatever OMP_NUM_THREADS says now."""
    import ray

    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(threads)
    return threads


def torch_trainer(cfg: JobConfig, loop_per_worker: Callable[[dict[str, Any]], None], loop_config: dict[str, Any],
                  name: str, resources_per_worker: dict[str, float], **run_config: Any):
    """A Ray Train `TorchTrainer` running `loop_per_worker` on `cfg.world_size` workers with `cfg.ray`'s use_gpu and
    storage_path, each reserving `resources_per_worker` (`worker_resources`). Each worker gets `loop_config` plus
    {"config": the JobConfig dump} (read it back with `worker_start`); `run_config` (checkpoint_config, failure_config,
    callbacks) goes to Ray's `RunConfig`, named `name`."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    r = cfg.ray
    return TorchTrainer(
        loop_per_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), **loop_config},
        scaling_config=ScalingConfig(num_workers=cfg.world_size, use_gpu=r.use_gpu,
                                     resources_per_worker=resources_per_worker),
        run_config=RunConfig(name=name, storage_path=r.storage_path, **run_config))


def worker_start(config: dict[str, Any]) -> tuple[JobConfig, Dist, Optional[torch.device]]:
    """On a Ray Train worker of a `torch_trainer`: (its JobConfig, its rank in the worker group, its device:
    `ray.train.torch.get_device()` with ray.use_gpu, else None for the CPU); torch then trains on as many threads
    as the worker reserved CPUs."""
    import ray.train

    use_reserved_cpus()
    ctx = ray.train.get_context()
    group = Dist(ctx.get_world_rank(), ctx.get_world_size())
    cfg = JobConfig.model_validate(config["config"])
    device = None
    if cfg.ray.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
    return cfg, group, device
