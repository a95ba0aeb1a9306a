"""The search's choice of objective per task: the configured labels, the closed set the data show, or
greedy exact match (free-form answers, or `search.label_ranking: false`)."""

from __future__ import annotations

from promptray.jobs.search_config import SearchConfig
from promptray.jobs.search_objective import task_labels
from promptray.platform.data.dataset import Record
from promptray.platform.data.templates import TaskTemplate

TEMPLATE = TaskTemplate.model_validate({"taskname": "s", "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} {label}",
                                        "total_virtual_tokens": 4, "virtual_token_splits": [4],
                                        "answer_only_loss": True, "answer_field": "label"})
ROWS = [Record({"taskname": "s", "text": f"review {i}", "label": lab}, f"v:{i}")
        for i, lab in enumerate([" positive", " negative"] * 3)]


def search(**extra) -> SearchConfig:
    return SearchConfig.model_validate({"tasks": {"s": {"total_virtual_tokens": [4], **extra.pop("task", {})}},
                                        "metric": "val_accuracy", **extra})


def test_labels_come_from_the_config_else_from_the_data():
    assert task_labels(search(), TEMPLATE, ROWS) == [" positive", " negative"]
    assert task_labels(search(task={"labels": [" yes", " no"]}), TEMPLATE, ROWS) == [" yes", " no"]


def test_label_ranking_false_scores_every_task_by_greedy_exact_match():
    assert task_labels(search(label_ranking=False), TEMPLATE, ROWS) is None
    assert task_labels(search(label_ranking=False, task={"labels": [" yes", " no"]}), TEMPLATE, ROWS) is None
