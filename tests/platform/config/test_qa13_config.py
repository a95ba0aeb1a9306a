"""Issue 13's config findings (F4, F5, F8, F12, F14, F17): each example with its right value."""

from __future__ import annotations

import logging
import math

import pytest

from promptray.platform.config.overrides import apply_overrides
from promptray.platform.config.schema import load_config
from promptray.platform.errors import ConfigError
from tests.platform.config.test_config import minimal, problems_of

# ----------------------------------------------------------------------------- F8: overrides into lists

def test_an_override_into_a_list_element_sets_it():
    cfg = load_config(minimal(), ["model.task_templates.0.total_virtual_tokens=6",
                                  "model.task_templates.0.virtual_token_splits=[6]"])
    assert cfg.templates[0].total_virtual_tokens == 6 and cfg.templates[0].virtual_token_splits == [6]


def test_an_invalid_value_into_a_list_element_is_a_config_problem_not_a_traceback():
    problems = problems_of(minimal(), ["model.task_templates.0.total_virtual_tokens=0"])
    assert problems and all("model.task_templates" in p for p in problems), problems
    assert any("total_virtual_tokens" in p for p in problems), problems


def test_overrides_past_the_end_or_by_name_into_a_list_name_the_key_and_the_form():
    problems = problems_of(minimal(), ["model.task_templates.3.total_virtual_tokens=6",
                                       "model.task_templates.sentiment.total_virtual_tokens=6"])
    assert problems == [
        "model.task_templates.3.total_virtual_tokens: model.task_templates has 1 entries (indexes 0..0); an "
        "override changes an existing entry; to add one, give the whole list in the config",
        "model.task_templates.sentiment.total_virtual_tokens: model.task_templates is a list; address an entry "
        "by its index (model.task_templates.0.total_virtual_tokens=...), or give the whole list"]


def test_dict_overrides_keep_python_types_and_merge_sections():
    from omegaconf import OmegaConf

    conf = OmegaConf.create({"model": {"optim": {"lr": 1.0, "eps": 1e-8}, "t": [{"a": 1}]}})
    assert apply_overrides(conf, {"model.optim": {"lr": 0.5}, "model.t.0.a": 2}) == []
    assert OmegaConf.to_container(conf) == {"model": {"optim": {"lr": 0.5, "eps": 1e-8}, "t": [{"a": 2}]}}


# F4 (a search config in one report) and the ray / search examples of F8 and F12: tests/jobs/test_job_config.py


# ----------------------------------------------------------------------------- F5: the inference style

def test_the_inference_style_cannot_train():
    assert problems_of(minimal(virtual_prompt_style="inference")) == [
        "model.virtual_prompt_style: got 'inference'; NeMo's 'inference' style only runs a trained model, it cannot "
        "train: use prompt-tuning or p-tuning (for inference from a prompt table run `promptray infer`)"]


# ----------------------------------------------------------------------------- F12: numbers

@pytest.mark.parametrize("override, expected", [
    ("model.optim.lr=1e10", "model.optim.lr: got 10000000000.0; use a value <= 10.0"),
    ("trainer.max_steps=1e12", "trainer.max_steps: got 1000000000000.0; use a value <= 1000000000"),
    ("trainer.max_steps=true", "trainer.max_steps: true is a boolean, not a number; give a number (got True)"),
    ("trainer.max_epochs=2.5", "trainer.max_epochs: 2.5 is not a whole number; give an integer (got 2.5)"),
    ("trainer.gradient_clip_val=inf", "trainer.gradient_clip_val: inf is not a finite number; give a finite "
                                      "number (got 'inf')"),
    ("model.optim.weight_decay=nan", "model.optim.weight_decay: nan is not a finite number; give a finite "
                                     "number (got 'nan')"),
    ("model.optim.betas=[0.9,true]", "model.optim.betas.1: true is a boolean, not a number; give a number "
                                     "(got True)"),
    ("trainer.val_check_interval=true", "trainer.val_check_interval: true is a boolean, not a number; give a "
                                        "number (got True)"),
])
def test_booleans_nan_inf_and_absurd_values_are_refused(override, expected):
    assert problems_of(minimal(), [override]) == [expected]


def test_whole_floats_are_counts_and_fractions_stay_fractions():
    cfg = load_config(minimal(), ["trainer.max_steps=1e3", "trainer.val_check_interval=1.0",
                                  "trainer.limit_val_batches=2"])
    assert cfg.trainer.max_steps == 1000 and isinstance(cfg.trainer.max_steps, int)
    assert cfg.trainer.val_check_interval == 1.0 and isinstance(cfg.trainer.val_check_interval, float)
    assert cfg.trainer.limit_val_batches == 2 and isinstance(cfg.trainer.limit_val_batches, int)
    assert not math.isnan(cfg.model.optim.lr)


# ----------------------------------------------------------------------------- F14: sequence lengths

def test_data_max_seq_length_above_encoder_seq_length_is_an_error_naming_both():
    assert problems_of(minimal(), ["model.encoder_seq_length=16", "model.data.max_seq_length=128"]) == [
        "model.data.max_seq_length: 128 is above model.encoder_seq_length=16; an example cannot be longer than the "
        "model's sequence length. Give data.max_seq_length <= 16 (it caps the examples), or raise "
        "encoder_seq_length, or set only one"]


def test_data_max_seq_length_below_encoder_seq_length_caps_the_examples():
    cfg = load_config(minimal(), ["model.encoder_seq_length=128", "model.data.max_seq_length=16"])
    assert cfg.max_seq_length == 16
    assert load_config(minimal(), ["model.data.max_seq_length=4096"]).max_seq_length == 4096  # default 2048 unset


# ----------------------------------------------------------------------------- F17: fp16 names

@pytest.mark.parametrize("value", ["16-mixed", "16", "fp16"])
def test_fp16_precision_is_run_as_bf16_with_a_warning(value, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_config(minimal(), [f"trainer.precision={value}"])
    assert cfg.precision == "bf16"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"trainer.precision: {cfg.trainer.precision!r} is fp16 in Lightning / NeMo; this engine has no fp16 path "
        "and runs it as bf16 (same speed class, wider range, fewer mantissa bits); set trainer.precision=bf16 to "
        "say so"]


def test_bf16_and_fp32_load_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert load_config(minimal(), ["trainer.precision=bf16-mixed"]).precision == "bf16"
        assert load_config(minimal(), ["trainer.precision=32"]).precision == "fp32"
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_config_error_type():
    with pytest.raises(ConfigError):
        load_config(minimal(), ["model.optim.lr=-1"])
