"""The job config on the client: keyword arguments, config files, overrides, the table; every problem at once."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from promptray.jobs.config import load_job_config
from promptray.platform.errors import ConfigError, PromptrayError
from promptray.sdk import JobConfigError, TaskTemplate, TuningRequest
from promptray.sdk.spec import build_config

from sdk_helpers import TEMPLATE


def test_import_sdk_loads_neither_torch_nor_transformers_nor_ray():
    code = ("import sys, promptray.sdk as s; from promptray.sdk import Client, TuningJob, TaskTemplate; "
            "print(sorted(m for m in ('torch', 'transformers', 'ray', 'boto3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_keyword_arguments_build_a_valid_nemo_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v.jsonl").write_text("")
    raw, cfg = build_config(None, None, dict(base_model="smollm2-135m", tasks=[TaskTemplate(**TEMPLATE)],
                                             train_files=["s3://b/train.jsonl"], validation_files=["v.jsonl"],
                                             style="p_tuning", num_workers=2, max_steps=30, micro_batch_size=2,
                                             resources_per_worker={"CPU": 1}),
                            table="s3://b/tables/main")
    assert cfg.model.virtual_prompt_style == "p-tuning"
    assert cfg.ray.num_workers == 2 and cfg.world_size == 2 and cfg.ray.resources_per_worker == {"CPU": 1}
    assert cfg.global_batch_size == 4 and cfg.accumulation == 1  # micro 2 x 2 workers
    assert cfg.model.new_tasks == ["sentiment"] and cfg.table_uri == "s3://b/tables/main"
    assert cfg.model.optim.lr == pytest.approx(3e-3)  # the p-tuning default
    assert cfg.model.data.validation_ds == ["v.jsonl"] and cfg.trainer.val_check_interval == 30
    assert load_job_config(yaml.safe_load(yaml.safe_dump(raw))) == cfg  # what is shipped is what was checked


def test_every_keyword_problem_is_reported_at_once():
    with pytest.raises(JobConfigError) as e:
        build_config(None, None, dict(base_model="", tasks=[], train_files=["t.jsonl"], num_workers=0,
                                      max_step=5, style="lora"), table="t")
    problems = e.value.problems
    text = "\n".join(problems)
    assert len(problems) == 6, text  # the five arguments and the missing data file, in one report
    assert "model.data.train_ds[0]: file 't.jsonl' does not exist" in text
    assert "base_model:" in text and "tasks:" in text and "num_workers:" in text and "style:" in text
    assert "max_step: unknown keyword argument; did you mean 'max_steps'?" in text
    assert "num_workers: got 0; use a value >= 1" in text and "(got 'lora')" in text
    assert isinstance(e.value, ConfigError) and isinstance(e.value, PromptrayError)


def test_config_problems_are_all_listed_with_key_value_and_fix(tmp_path):
    cfg = {"trainer": {"max_steps": 3, "precision": "fp8"},
           "model": {"language_model_path": "m", "nemo_path": "t", "new_tasks": ["missing"],
                     "task_templates": [TEMPLATE], "micro_batch_size": 3, "global_batch_size": 4,
                     "data": {"train_ds": ["a.jsonl"]}, "optim": {"lr": "fast"}}}
    with pytest.raises(JobConfigError) as e:
        build_config(cfg, {"model.sedd": 3}, {}, table=None)
    text = "\n".join(e.value.problems)
    assert "model.sedd: unknown key (did you mean 'seed'?)" in text
    assert "model.optim.lr" in text and "'fast'" in text
    assert "task 'missing' has no entry in model.task_templates" in text
    assert "model.global_batch_size: 4 is not a multiple" in text
    assert "trainer.precision: got 'fp8'" in text
    assert "model.data.train_ds[0]: file 'a.jsonl' does not exist" in text  # a missing file: the same report
    assert str(e.value).startswith("invalid tuning job (6 problems)")


def test_config_file_overrides_and_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text("")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "trainer": {"max_steps": 3}, "model": {
        "language_model_path": "m", "nemo_path": "old", "restore_path": "old", "existing_tasks": [],
        "new_tasks": ["sentiment"], "task_templates": [TEMPLATE], "data": {"train_ds": ["a.jsonl"]}}}))
    raw, cfg = build_config(str(path), {"model.optim.lr": 0.5, "trainer.max_steps": 7}, {}, table="s3://b/t")
    assert cfg.model.optim.lr == 0.5 and isinstance(raw["model"]["optim"]["lr"], float)
    assert cfg.trainer.max_steps == 7
    assert cfg.model.nemo_path == "s3://b/t" and cfg.model.restore_path == "s3://b/t"
    _, cfg2 = build_config(str(path), ["trainer.max_steps=9", "model.seed=5"], {}, table=None)
    assert (cfg2.trainer.max_steps, cfg2.model.seed, cfg2.table_uri) == (9, 5, "old")


@pytest.mark.parametrize("config, fields, overrides, expected", [
    (None, {}, None, "config: missing"),
    ("no/such.yaml", {}, None, "config: file 'no/such.yaml' does not exist"),
    ({"model": {}}, {"max_steps": 3}, None, "given together with keyword arguments ['max_steps']"),
    ({"model": {}}, {}, ["trainer.max_steps"], "override 'trainer.max_steps' is not KEY=VALUE"),
])
def test_unusable_input_is_a_job_config_error(config, fields, overrides, expected):
    with pytest.raises(JobConfigError, match="invalid tuning job") as e:
        build_config(config, overrides, fields, table=None)
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_tuning_request_lists_its_keyword_arguments():
    assert {"base_model", "tasks", "train_files", "validation_files", "style", "num_workers",
            "max_steps"} <= set(TuningRequest.model_fields)


def test_a_job_config_error_survives_pickling_with_its_kind():
    import pickle

    e = pickle.loads(pickle.dumps(JobConfigError(["search: missing section"], job="search job")))
    assert (e.job, e.problems, str(e)) == ("search job", ["search: missing section"],
                                           "invalid search job (1 problem):\n  - search: missing section")

