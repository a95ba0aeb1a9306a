"""The search's val_accuracy objective for a trial or a pack: each task's label set and the fixed validation
sample, turned into platform/generation/ranking.py's `ValidationObjective` (label ranking for a closed label
set, greedy exact match otherwise)."""

from __future__ import annotations

from typing import Optional

from promptray.jobs.search_config import SearchConfig
from promptray.platform.config.schema import PromptLearningConfig
from promptray.platform.data.dataset import Record
from promptray.platform.data.templates import TaskTemplate
from promptray.platform.generation.loading import PromptModel
from promptray.platform.generation.ranking import ValidationObjective, closed_labels, sample_records


def task_labels(s: SearchConfig, template: TaskTemplate, records: list[Record]) -> Optional[list[str]]:
    """The task's labels: search.tasks.<task>.labels, else the closed set its records show (None: free-form,
    or search.label_ranking false: then the objective is greedy exact match)."""
    if not s.label_ranking:
        return None
    space = s.tasks.get(template.taskname)
    if space is not None and space.labels:
        return list(space.labels)
    return closed_labels(template, records, s.max_labels)


def validation_sample(s: SearchConfig, records: list[Record]) -> list[Record]:
    """search.val_samples of the validation records, the same for every candidate (seeded by search.seed)."""
    return sample_records(records, s.val_samples, s.seed)


def objective(s: SearchConfig, cfg: PromptLearningConfig, engine: PromptModel, name: str, sample: list[Record],
              labels: Optional[list[str]]) -> ValidationObjective:
    """The objective of `name` (a task or a pack's candidate, as held by `engine`) on `sample` (its records)."""
    limit = min(cfg.max_seq_length, engine.model.max_positions)
    return ValidationObjective(engine, name, sample, labels, max_seq_length=limit,
                               max_new_tokens=s.max_new_tokens, batch_size=s.val_batch_size)
