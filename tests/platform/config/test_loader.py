"""The one config loader: train, the job config, infer and the SDK read YAML / dicts, apply overrides, resolve
`${...}`, treat NeMo's `???` and report every problem the same way (platform/config/loader.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptray.jobs.config import load_job_config
from promptray.platform.config.loader import model_sections, read_config
from promptray.platform.config.schema import PromptLearningConfig, load_config
from promptray.platform.errors import ConfigError
from promptray.platform.generation.infer_config import load_infer_config
from promptray.sdk.errors import JobConfigError
from promptray.sdk.spec import build_config

TEMPLATE = {"taskname": "sentiment", "prompt_template": "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}",
            "total_virtual_tokens": 4, "virtual_token_splits": [4], "answer_field": "label"}
TRAIN = {"name": "run", "trainer": {"max_steps": 2},
         "model": {"language_model_path": "smollm2-135m", "nemo_path": "${name}.table", "new_tasks": ["sentiment"],
                   "task_templates": [TEMPLATE], "data": {"train_ds": ["t.jsonl"]}}}
INFER = {"virtual_prompt_model_file": "t", "data_paths": ["a.jsonl"]}


def loaders():
    """Each entry point's loader as (source, overrides) -> config, raising a ConfigError."""
    return {"train": lambda src, ov=None: load_config(src, ov),
            "job": lambda src, ov=None: load_job_config(src, ov),
            "infer": lambda src, ov=None: load_infer_config(src, ov),
            "sdk": lambda src, ov=None: build_config(src, ov, {}, table=None)[1]}


def problems_of(loader, source, overrides=None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        loaders()[loader](source, overrides)
    return e.value.problems


@pytest.mark.parametrize("loader", ["train", "job", "infer", "sdk"])
def test_unreadable_sources_are_one_problem_in_the_same_words(loader, tmp_path):
    assert problems_of(loader, str(tmp_path / "missing.yaml")) == [
        f"config: file '{tmp_path / 'missing.yaml'}' does not exist (cwd {Path.cwd()}); check the path"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    (problem,) = problems_of(loader, str(broken))
    assert problem.startswith(f"config: cannot read '{broken}': ")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    assert problems_of(loader, str(listed)) == [
        f"config: '{listed}' holds a list, not a mapping of keys; give KEY: VALUE lines"]


@pytest.mark.parametrize("loader", ["train", "job", "sdk"])
def test_training_configs_resolve_interpolation_after_the_overrides(loader, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_text("")
    cfg = loaders()[loader](TRAIN, ["name=renamed"])
    assert cfg.table_uri == "renamed.table"
    (problem,) = problems_of(loader, TRAIN, ["model.nemo_path=${nope}"])
    assert problem.startswith("config: cannot resolve it: ") and "check the ${...} references" in problem


def test_infer_resolves_interpolation_and_reads_a_dict_too():
    cfg = load_infer_config({**INFER, "output_file": "out.jsonl", "pred_file_path": "${output_file}.txt"},
                            ["output_file=p"])
    assert (cfg.table, cfg.data_paths, cfg.pred_file_path) == ("t", ["a.jsonl"], "p.txt")


def test_values_left_to_be_given_are_reported_once(tmp_path, monkeypatch):
    """NeMo's `???`: a key no other check names is reported as left to be given; a key a check already
    reports (model.language_model_path: not set) is reported once, by that check."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_text("")
    raw = {**TRAIN, "model": {**TRAIN["model"], "language_model_path": "???", "seed": "???"}}
    problems = problems_of("train", raw)
    assert problems == [
        "model.seed: the file leaves it to be given (???); set model.seed=VALUE",
        "model.language_model_path: not set; give a Hugging Face model directory or id, or the built-in name "
        "smollm2-135m"]
    assert problems_of("sdk", raw) == problems
    assert load_config(raw, ["model.seed=7", "model.language_model_path=m"]).model.seed == 7


def test_read_config_drops_placeholders_and_keeps_override_problems():
    raw, problems = read_config({"trainer": "...", "model": {"seed": "???", "task_templates": [
        {"prompt_template": "..."}]}}, ["model.x"])
    assert raw == {"model": {"task_templates": [{"prompt_template": "..."}]}}
    assert problems == ["override 'model.x' is not KEY=VALUE (e.g. trainer.max_steps=100)",
                        "model.seed: the file leaves it to be given (???); set model.seed=VALUE"]


def test_sections_are_read_from_the_schema_for_did_you_mean():
    sections = model_sections(PromptLearningConfig)
    assert {"", "trainer", "model", "model.data", "model.optim.sched", "exp_manager.checkpoint_callback_params",
            "storage"} <= set(sections)
    problems = problems_of("job", {**TRAIN, "search": {"tasks": {"sentiment": {"total_virtul_tokens": [4]}}}})
    assert "search.tasks.sentiment.total_virtul_tokens: unknown key (did you mean 'total_virtual_tokens'?); " \
           "remove it or check the spelling" in problems


def test_the_sdk_reports_through_the_loader_in_its_own_error_type():
    with pytest.raises(JobConfigError) as e:
        build_config({"model": "???"}, None, {}, table=None)
    assert str(e.value).startswith("invalid tuning job")
    assert "model: the file leaves it to be given (???); set model=VALUE" not in e.value.problems  # named below
    assert e.value.problems[0].startswith("model: missing section")


def test_a_missing_section_is_named_once():
    assert problems_of("train", {"name": "x"}) == [
        "model: missing section; a config needs model.language_model_path, model.task_templates, ..."]
    (problem,) = [p for p in problems_of("job", {**TRAIN, "search": {"metric": "val_loss"}})
                  if p.startswith("search.tasks")]
    assert problem == "search.tasks: required, not given; set search.tasks"


def test_a_config_error_crosses_processes_as_it_was_raised():
    """Ray pickles an error raised in a trial or a job; unpickled, its message and problems are the original's
    (not the message wrapped again as one problem)."""
    import pickle

    e = ConfigError(["model.optim.lr: got -1; use a value > 0.0", "trainer.max_steps: got 0"], title="invalid x")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is ConfigError and str(back) == str(e) == (
        "invalid x (2 problems):\n  - model.optim.lr: got -1; use a value > 0.0\n  - trainer.max_steps: got 0")
    assert (back.problems, back.title) == (e.problems, "invalid x")
