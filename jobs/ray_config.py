"""The `ray:` section of a config: how `python -m promptray.jobs.train` runs as a Ray Train job.

Plain values only (no Ray import): workers and their resources, checkpoints, restarts. `promptray train`
(one process) ignores the section. Part of the job config (config.JobConfig), not of the engine's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from promptray.platform.config.types import MAX_COUNT, MAX_STEPS, Float, Int

if TYPE_CHECKING:
    from promptray.jobs.config import JobConfig


class RayConfig(BaseModel):
    """How `python -m promptray.jobs.train` runs the loop as a Ray Train job (ignored by `promptray train`)."""

    model_config = ConfigDict(extra="forbid")

    num_workers: Optional[Int] = Field(None, ge=1, le=MAX_COUNT)  # default: trainer.devices x trainer.num_nodes
    use_gpu: bool = False
    resources_per_worker: Optional[dict[str, Float]] = None  # e.g. {CPU: 2}; None: the worker's share of the free CPUs
    checkpoint_every_n_steps: Optional[Int] = Field(None, ge=1, le=MAX_STEPS)  # default: at every validation
    num_to_keep: Optional[Int] = Field(2, ge=1, le=MAX_COUNT)  # checkpoints kept; null keeps all
    max_failures: Int = Field(0, ge=-1, le=MAX_COUNT)  # worker-group restarts from the last checkpoint; -1: no limit
    storage_path: Optional[str] = None  # checkpoints (a shared path or s3:// on a multi-node cluster)

    @field_validator("resources_per_worker")
    @classmethod
    def _non_negative(cls, v: Optional[dict[str, float]]) -> Optional[dict[str, float]]:
        bad = {k: x for k, x in (v or {}).items() if x < 0}
        if bad:
            raise ValueError(f"negative amounts {bad}; give each resource as a number >= 0, e.g. {{CPU: 1}}")
        return v


def ray_problems(cfg: JobConfig) -> list[str]:
    """Problems of the ray section together with the keys it interacts with."""
    r, m, problems = cfg.ray, cfg.model, []
    nemo = cfg.nemo_parallel_size
    if r.num_workers and nemo != 1 and nemo != r.num_workers:
        problems.append(f"ray.num_workers: {r.num_workers} disagrees with trainer.devices x trainer.num_nodes = "
                        f"{cfg.trainer.devices} x {cfg.trainer.num_nodes}; set only one of them")
    if m.sharding == "fsdp" and m.lm_finetune:
        problems.append("model.sharding: fsdp together with lm_finetune: true; fsdp shards the frozen base "
                        "model only. Turn lm_finetune off or use sharding: none")
    if r.use_gpu and r.resources_per_worker and "GPU" not in r.resources_per_worker:
        problems.append(f"ray.resources_per_worker: {r.resources_per_worker} with use_gpu: true has no GPU "
                        "entry; add GPU: 1 or drop resources_per_worker")
    return problems
