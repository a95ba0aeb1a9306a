"""The search's choice of objective per task: the configured labels, the closed set the data show, or
greedy exact match (free-form answers, or `search.label_ranking: false`)."""

from __future__ import annotations

import pytest

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


def test_repeated_or_empty_labels_are_config_problems(tmp_path):
    from test_search import search_config

    from promptray.jobs.config import load_job_config
    from promptray.platform.errors import ConfigError

    raw = search_config(tmp_path, tmp_path / "no-model", [2], metric="val_accuracy")
    raw["search"]["tasks"]["a"]["labels"] = ["yes", "", "yes"]
    with pytest.raises(ConfigError) as e:
        load_job_config(raw)
    assert e.value.problems == ["search.tasks.a.labels: ['yes', '', 'yes'] repeats ['yes']; give each label once",
                        "search.tasks.a.labels: ['yes', '', 'yes'] has an empty label; give the answers as the "
                        "data spell them"]


def test_validation_batches_follow_search_val_batch_size_not_the_training_batch(monkeypatch):
    from types import SimpleNamespace

    import promptray.jobs.search_objective as so

    seen = {}
    monkeypatch.setattr(so, "ValidationObjective", lambda *a, **kw: seen.update(kw))
    cfg = SimpleNamespace(max_seq_length=256, model=SimpleNamespace(micro_batch_size=4))
    engine = SimpleNamespace(model=SimpleNamespace(max_positions=128))
    so.objective(search(), cfg, engine, "s", ROWS, None)
    assert seen["batch_size"] == 16 and seen["max_seq_length"] == 128  # the default, whatever the training batch
    so.objective(search(val_batch_size=40), cfg, engine, "s", ROWS, None)
    assert seen["batch_size"] == 40
