"""Issue 13 F3: the SDK reports every problem of a job at once (keyword arguments, the config they stand
for, data files, the table), before it starts or contacts anything."""

from __future__ import annotations

import pytest

from promptray.sdk import Client, JobConfigError, TaskTemplate

from sdk_helpers import TEMPLATE


def _problems(client: Client, **fields) -> list[str]:
    with pytest.raises(JobConfigError) as e:
        client.submit_tuning(**fields)
    assert client._cluster is None and client._jobs is None  # nothing started or contacted
    return e.value.problems


def test_a_bad_keyword_argument_and_a_missing_file_come_in_one_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = Client(address="http://127.0.0.1:1", table=str(tmp_path / "table"))
    problems = _problems(client, base_model="smollm2-135m", tasks=[TaskTemplate(**TEMPLATE)], lr=-1,
                         train_files=["nope.jsonl"])
    assert problems == ["lr: got -1; use a value > 0.0",
                        f"model.data.train_ds[0]: file 'nope.jsonl' does not exist; fix the path (relative paths "
                        f"are read from {tmp_path})"]


def test_template_problems_come_with_the_keyword_argument_problems(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_text('{"taskname": "sentiment", "sentence": "a", "label": "b"}\n')
    template = TaskTemplate(**{**TEMPLATE, "total_virtual_tokens": 0, "virtual_token_splits": [-1]})
    problems = _problems(Client(address="http://127.0.0.1:1", table=str(tmp_path / "table")),
                         base_model="smollm2-135m", tasks=[template], lr=-1, train_files=["t.jsonl"])
    task = "model.task_templates[0] (task 'sentiment')"
    assert problems == ["lr: got -1; use a value > 0.0",
                        f"{task}: total_virtual_tokens must be >= 1, got 0",
                        f"{task}: virtual_token_splits [-1] must all be >= 1",
                        f"{task}: virtual_token_splits [-1] sum to -1 but total_virtual_tokens is 0; make them add up"]


def test_without_a_table_the_missing_table_comes_with_the_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_text("")
    problems = _problems(Client(address="http://127.0.0.1:1"), base_model="smollm2-135m",
                         tasks=[TaskTemplate(**TEMPLATE)], train_files=["t.jsonl"], lr=-1, max_steps=True)
    assert problems == ["max_steps: true is a boolean, not a number; give a number (got True)",
                        "lr: got -1; use a value > 0.0",
                        "model.nemo_path: not set; name where the prompt table is saved (model.nemo_path or "
                        "model.prompt_table)"]


def test_missing_required_arguments_are_not_reported_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    problems = _problems(Client(address="http://127.0.0.1:1", table="t"), lr=20.0, train_files=["gone.jsonl"])
    assert problems == [
        "base_model: required keyword argument is missing; pass base_model=...",
        "tasks: required keyword argument is missing; pass tasks=...",
        "lr: got 20.0; use a value <= 10.0",
        f"model.data.train_ds[0]: file 'gone.jsonl' does not exist; fix the path (relative paths are read from "
        f"{tmp_path})"]


def test_the_inference_style_is_refused_for_a_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_text("")
    problems = _problems(Client(address="http://127.0.0.1:1", table="t"), base_model="smollm2-135m",
                         tasks=[TaskTemplate(**TEMPLATE)], train_files=["t.jsonl"],
                         overrides={"model.virtual_prompt_style": "inference"})
    assert problems == [
        "model.virtual_prompt_style: got 'inference'; NeMo's 'inference' style only runs a trained model, it cannot "
        "train: use prompt-tuning or p-tuning (for inference from a prompt table run `promptray infer`)"]
