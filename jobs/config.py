"""The job config: the engine's PromptLearningConfig plus the sections of Ray Train (`ray:`) and Ray Tune
(`search:`), loaded and checked by the engine's one loader so that every problem comes out in one report.

Plain values only (no Ray, no torch): the SDK builds job configs with it. `promptray train`,
`python -m promptray.jobs.train` and `python -m promptray.jobs.search` all load configs with `load_job_config`,
so a NeMo-style YAML with a `ray:` section runs from every entry point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from pydantic import Field

from promptray.jobs.ray_config import RayConfig, ray_problems
from promptray.jobs.search_config import SearchConfig, search_problems
from promptray.platform.config.overrides import Overrides
from promptray.platform.config.schema import PromptLearningConfig, load_config


class JobConfig(PromptLearningConfig):
    """A prompt-learning config run as a Ray job: `ray` (workers, resources, checkpoints, restarts) and, for
    `python -m promptray.jobs.search`, `search` (the space Ray Tune tries). `world_size` is ray.num_workers when
    set, else the engine's trainer.devices x num_nodes."""

    ray: RayConfig = Field(default_factory=RayConfig)
    search: Optional[SearchConfig] = None  # read by promptray.jobs.search only

    @property
    def world_size(self) -> int:
        """Number of data-parallel Ray Train workers: ray.num_workers when set, else trainer.devices x num_nodes."""
        return self.ray.num_workers or self.nemo_parallel_size

    def problems(self) -> list[str]:
        """The engine's cross-key problems, then those of the ray and search sections."""
        return super().problems() + ray_problems(self) + search_problems(self)

    def fixed_count_tasks(self) -> list[str]:
        """New tasks whose template's count is the one trained (not replaced by search candidates)."""
        searched = set(self.search.tasks) if self.search else set()
        return [t for t in self.model.new_tasks if t not in searched]

    def candidate_counts(self) -> dict[str, tuple[str, list[int]]]:
        """The search's candidate counts: taskname -> (the key that gives them, the counts)."""
        return {name: (f"search.tasks.{name}.total_virtual_tokens", space.counts)
                for name, space in (self.search.tasks.items() if self.search else [])}

    def generation_budget(self) -> Optional[tuple[str, int]]:
        """A val_accuracy search generates search.max_new_tokens tokens after each validation prompt."""
        if self.search is None or self.search.metric != "val_accuracy":
            return None
        return "search.max_new_tokens", self.search.max_new_tokens


def load_job_config(source: Union[str, Path, dict], overrides: Overrides = None, *,
                    check_files: bool = False) -> JobConfig:
    """`load_config` with the job config's schema: YAML (or a dict) + dotted overrides -> a checked JobConfig;
    raises one ConfigError naming every problem (the engine's and the ray / search sections') at once."""
    return load_config(source, overrides, check_files=check_files, schema=JobConfig)
