"""Tests of NeMo-style configs: the spec's examples as written, overrides, and all-problems-at-once errors."""

from __future__ import annotations

import logging

import pytest

from promptray.platform.config.schema import ModelConfig, load_config, normalize_precision
from promptray.platform.errors import ConfigError

# The spec's "Example Multi-Task Prompt Tuning Config", verbatim (trainer / exp_manager / optim are `...`).
SPEC_PROMPT_TUNING = """\
name: multitask_prompt_tuning
trainer: ...
exp_manager: ...
model:
  seed: 1234
  nemo_path: ${name}.nemo
  virtual_prompt_style: "prompt-tuning"
  encoder_seq_length: 2048
  tensor_model_parallel_size: 1
  pipeline_model_parallel_size: 1
  global_batch_size: 16
  micro_batch_size: 4

  restore_path: null
  language_model_path: models/megatron_125M_gpt.nemo
  existing_tasks: []
  new_tasks: ["sentiment", "intent_and_slot"]

  task_templates:
  - taskname: "sentiment"
    prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}"
    total_virtual_tokens: 100
    virtual_token_splits: [100]
    truncate_field: null
    answer_only_loss: False

  - taskname: "intent_and_slot"
    prompt_template: "<|VIRTUAL_PROMPT_0|> Predict intent and slot <|VIRTUAL_PROMPT_1|> :\\n{utterance}{label}"
    total_virtual_tokens: 100
    virtual_token_splits: [80, 20]
    truncate_field: null
    answer_only_loss: True
    answer_field: "label"

  prompt_tuning:
    new_prompt_init_methods: ["text", "text"]
    new_prompt_init_text: ["financial sentiment analysis postive neutral negative", "intent and slot classification virtual assistant task bot please"]

  data:
    train_ds: ["data/financial_phrase_bank_train.jsonl", "data/assistent_train.jsonl"]
    validation_ds: ["data/financial_phrase_bank_val.jsonl", "data/assistent_val.jsonl"]
    add_eos: True
    shuffle: True
    num_workers: 1
    pin_memory: True

  optim: ...
"""  # noqa: E501  (the spec's config, verbatim)

# The spec's "Example Multi-Task P-Tuning Config and Command After Prompt-Tuning", verbatim.
SPEC_P_TUNING = """\
name: multitask_p_tuning # ***
trainer: ...
exp_manager: ...
model:
  seed: 1234
  nemo_path: ${name}.nemo
  virtual_prompt_style: "p-tuning" # ***
  encoder_seq_length: 2048
  tensor_model_parallel_size: 1
  pipeline_model_parallel_size: 1
  global_batch_size: 16
  micro_batch_size: 4

  restore_path: multitask_prompt_tuning.nemo # ***
  language_model_path: models/megatron_125M_gpt.nemo
  existing_tasks: ["sentiment", "intent_and_slot"] # ***
  new_tasks: ["squad"]

  task_templates:
  - taskname: "sentiment"
    prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}"
    total_virtual_tokens: 100
    virtual_token_splits: [100]
    truncate_field: null
    answer_only_loss: False

  - taskname: "intent_and_slot"
    prompt_template: "<|VIRTUAL_PROMPT_0|> Predict intent and slot <|VIRTUAL_PROMPT_1|> :\\n{utterance}{label}"
    total_virtual_tokens: 100
    virtual_token_splits: [80, 20]
    truncate_field: null
    answer_only_loss: True
    answer_field: "label"

  - taskname: "squad" # ***
    prompt_template: "<|VIRTUAL_PROMPT_0|> Answer the question from the context {question} {context} Answer: {answer}" # ***
    total_virtual_tokens: 9 # ***
    virtual_token_splits: [9] # ***
    truncate_field: context # ***
    answer_only_loss: True # ***
    answer_field: "answer" # ***

  p_tuning: # ***
      dropout: 0.0 # ***
      num_layers: 2 # ***

  data:
    train_ds: ["data/squad_train.jsonl"] # ***
    validation_ds: ["data/squad_val.jsonl"] # ***
    add_eos: True
    shuffle: True
    num_workers: 1
    pin_memory: True

  optim: ...
"""  # noqa: E501  (the spec's config, verbatim)


def minimal(**model) -> dict:
    """A small valid config as a dict; keyword arguments override `model` keys."""
    base = {
        "name": "run",
        "trainer": {"max_steps": 10},
        "model": {
            "nemo_path": "table.nemo", "language_model_path": "tiny", "new_tasks": ["sentiment"],
            "global_batch_size": 8, "micro_batch_size": 4,
            "task_templates": [{"taskname": "sentiment", "total_virtual_tokens": 4, "virtual_token_splits": [4],
                                "prompt_template": "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}"}],
            "data": {"train_ds": ["train.jsonl"]},
        },
    }
    base["model"].update(model)
    return base


def write(tmp_path, text: str, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(source, overrides=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    return info.value.problems


# ----------------------------------------------------------------------------- the spec's examples

def test_spec_prompt_tuning_example_loads_as_written(tmp_path):
    cfg = load_config(write(tmp_path, SPEC_PROMPT_TUNING))
    m = cfg.model
    assert cfg.name == "multitask_prompt_tuning"
    assert m.nemo_path == "multitask_prompt_tuning.nemo" and cfg.table_uri == "multitask_prompt_tuning.nemo"
    assert m.virtual_prompt_style == "prompt-tuning"
    assert m.new_tasks == ["sentiment", "intent_and_slot"] and m.existing_tasks == [] and m.restore_path is None
    assert m.language_model_path == "models/megatron_125M_gpt.nemo"
    assert [t.taskname for t in cfg.templates] == ["sentiment", "intent_and_slot"]
    intent = cfg.templates[1]
    assert intent.prompt_template == ("<|VIRTUAL_PROMPT_0|> Predict intent and slot <|VIRTUAL_PROMPT_1|> :\n"
                                      "{utterance}{label}")
    assert intent.virtual_token_splits == [80, 20] and intent.answer_only_loss and intent.answer_field == "label"
    assert m.prompt_tuning.new_prompt_init_methods == ["text", "text"]
    assert m.prompt_tuning.new_prompt_init_text[1] == "intent and slot classification virtual assistant task bot please"
    assert m.data.train_ds == ["data/financial_phrase_bank_train.jsonl", "data/assistent_train.jsonl"]
    assert m.data.add_eos is True and m.data.shuffle is True
    assert cfg.global_batch_size == 16 and cfg.accumulation == 4 and cfg.max_seq_length == 2048
    assert m.optim.name == "adamw"  # `optim: ...` means the defaults
    assert cfg.trainer.max_epochs == 3 and cfg.trainer.max_steps is None  # `trainer: ...`: NeMo's example trainer
    assert cfg.precision == "bf16"


def test_spec_p_tuning_example_with_restore_path_and_existing_tasks(tmp_path):
    cfg = load_config(write(tmp_path, SPEC_P_TUNING))
    m = cfg.model
    assert m.nemo_path == "multitask_p_tuning.nemo"
    assert m.virtual_prompt_style == "p-tuning"
    assert m.restore_path == "multitask_prompt_tuning.nemo"
    assert m.existing_tasks == ["sentiment", "intent_and_slot"] and m.new_tasks == ["squad"]
    assert m.p_tuning.dropout == 0.0 and m.p_tuning.num_layers == 2
    squad = cfg.templates[2]
    assert (squad.taskname, squad.truncate_field, squad.answer_field, squad.total_virtual_tokens) == (
        "squad", "context", "answer", 9)
    assert squad.prompt_template.endswith("Answer: {answer}")  # the YAML comment is not part of the value
    assert m.data.train_ds == ["data/squad_train.jsonl"]


def test_dotted_overrides(tmp_path):
    path = write(tmp_path, SPEC_PROMPT_TUNING)
    cfg = load_config(path, ["model.new_tasks=[intent_and_slot]", "model.p_tuning.num_layers=3",
                             "trainer.max_steps=5", "model.prompt_tuning.new_prompt_init_methods=[random]"])
    assert cfg.model.new_tasks == ["intent_and_slot"]
    assert cfg.model.p_tuning.num_layers == 3
    assert cfg.trainer.max_steps == 5
    cfg = load_config(write(tmp_path, SPEC_P_TUNING, "p.yaml"),
                      ["model.new_tasks=[squad]", "model.p_tuning.num_layers=3", "trainer.max_steps=5",
                       "name=renamed"])
    assert cfg.model.new_tasks == ["squad"] and cfg.model.p_tuning.num_layers == 3 and cfg.trainer.max_steps == 5
    assert cfg.model.nemo_path == "renamed.nemo"  # interpolation resolved after the overrides


def test_override_errors(tmp_path):
    path = write(tmp_path, SPEC_PROMPT_TUNING)
    assert problems_of(path, ["model.new_tasks"]) == [
        "override 'model.new_tasks' is not KEY=VALUE (e.g. trainer.max_steps=100)"]
    assert problems_of(path, ["model.new_tasks=[squad]", "model.prompt_tuning.new_prompt_init_methods=[random]"]) == [
        "model.new_tasks: task 'squad' has no entry in model.task_templates (templates: ['sentiment', "
        "'intent_and_slot']); add its template"]
    assert "does not exist" in problems_of(tmp_path / "missing.yaml")[0]


# ----------------------------------------------------------------------------- every problem at once

BROKEN = """\
name: broken
trainer:
  precision: 15
  max_steps: 10
model:
  nemo_path: ${name}.nemo
  language_model_path: tiny
  micro_batch_sise: 4
  micro_batch_size: 4
  global_batch_size: 10
  restore_path: null
  existing_tasks: ["old"]
  new_tasks: ["sentiment", "squad"]
  task_templates:
  - taskname: "sentiment"
    prompt_template: "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}"
    total_virtual_tokens: 4
    virtual_token_splits: [4]
  prompt_tuning:
    new_prompt_init_methods: ["text", "random", "text"]
    new_prompt_init_text: [null]
  data:
    train_ds: ["train.jsonl"]
"""


def test_several_mistakes_reported_at_once(tmp_path):
    problems = problems_of(write(tmp_path, BROKEN))

    def one(needle: str) -> str:
        hits = [p for p in problems if needle in p]
        assert len(hits) == 1, (needle, problems)
        return hits[0]

    typo = one("micro_batch_sise")
    assert typo.startswith("model.micro_batch_sise: unknown key") and "did you mean 'micro_batch_size'?" in typo
    assert one("trainer.precision").startswith("trainer.precision: got 15")
    assert one("model.global_batch_size").startswith("model.global_batch_size: 10 is not a multiple of")
    assert one("task 'squad' has no entry in model.task_templates").startswith("model.new_tasks:")
    assert "model.restore_path is null" in one("model.existing_tasks")
    assert "3 entries for 2 new task(s)" in one("new_prompt_init_methods")
    assert one("new_prompt_init_text[0]").startswith("model.prompt_tuning.new_prompt_init_text[0]: task "
                                                     "'sentiment' uses init method 'text' but has no text")
    assert one("new_prompt_init_text[2]")  # the third init method is 'text' too, without text
    assert len(problems) == 8, problems


def test_type_errors_do_not_hide_cross_key_problems():
    problems = problems_of(minimal(micro_batch_size="four", global_batch_size=10, existing_tasks=["x"],
                                   p_tuning={"num_layers": 0}))
    assert any(p.startswith("model.micro_batch_size: Input should be a valid integer") for p in problems)
    assert any(p == "model.p_tuning.num_layers: got 0; use a value >= 1"
               for p in problems)
    assert any(p.startswith("model.existing_tasks:") and "restore_path is null" in p for p in problems)
    # the batch check would need micro_batch_size, which is invalid: no second-hand complaint about it
    assert not any(p.startswith("model.global_batch_size") for p in problems)
    assert len(problems) == 3, problems


def test_typo_suggestions_in_nested_sections():
    problems = problems_of(minimal(data={"train_ds": ["t.jsonl"], "add_eso": True},
                                   p_tuning={"num_layer": 2}, optim={"lr": 0.1, "weight_decy": 0.0}))
    assert sorted(problems) == [
        "model.data.add_eso: unknown key (did you mean 'add_eos'?); remove it or check the spelling",
        "model.optim.weight_decy: unknown key (did you mean 'weight_decay'?); remove it or check the spelling",
        "model.p_tuning.num_layer: unknown key (did you mean 'num_layers'?); remove it or check the spelling",
    ]


def test_template_problems_surface_in_config_errors():
    bad = {"taskname": "sentiment", "prompt_template": "<|VIRTUAL_PROMPT_0|> {sentence} {label}",
           "total_virtual_tokens": 4, "virtual_token_splits": [3]}
    problems = problems_of(minimal(task_templates=[bad]))
    assert len(problems) == 1
    assert problems[0].startswith("model.task_templates[0] (task 'sentiment'): virtual_token_splits [3] sum to 3")


def test_missing_model_section_and_required_keys():
    assert problems_of({"name": "x"})[0].startswith("model: missing section")
    problems = problems_of({"trainer": {"max_steps": 1}, "model": {}})
    assert sorted(p.split(":")[0] for p in problems) == [
        "model.data.train_ds", "model.language_model_path", "model.nemo_path", "model.new_tasks"]


def test_neither_max_steps_nor_max_epochs():
    raw = minimal()
    raw["trainer"] = {"max_steps": -1, "max_epochs": None}
    assert problems_of(raw) == ["trainer: neither max_steps nor max_epochs is set (-1 means unset); set one of them"]


# ----------------------------------------------------------------------------- NeMo keys

def test_tensor_parallel_two_is_an_error_one_is_ignored(caplog):
    assert problems_of(minimal(tensor_model_parallel_size=2)) == [
        "model.tensor_model_parallel_size: got 2; model parallelism is not supported (one model replica per worker): "
        "set it to 1 or leave it out"]
    assert problems_of(minimal(pipeline_model_parallel_size=4))[0].startswith(
        "model.pipeline_model_parallel_size: got 4")
    with caplog.at_level(logging.INFO, logger="promptray.platform.config.schema"):
        cfg = load_config(minimal(tensor_model_parallel_size=1, pipeline_model_parallel_size=1))
    assert "tensor_model_parallel_size" not in cfg.model.model_dump()
    assert "model.tensor_model_parallel_size" in caplog.text


def test_nemo_data_keys_accepted_and_ignored():
    cfg = load_config(minimal(data={"train_ds": ["t.jsonl"], "num_workers": 8, "pin_memory": True,
                                    "drop_last": True, "add_bos": True}, megatron_amp_O2=False))
    assert cfg.model.data.train_ds == ["t.jsonl"] and cfg.model.data.add_bos is True
    assert "num_workers" not in cfg.model.data.model_dump() and "pin_memory" not in cfg.model.data.model_dump()


def test_unknown_trainer_and_exp_manager_keys_are_allowed():
    raw = minimal()
    raw["trainer"] = {"max_steps": 3, "accelerator": "gpu", "logger": False, "enable_checkpointing": False}
    raw["exp_manager"] = {"exp_dir": "/tmp/x", "create_checkpoint_callback": False}
    cfg = load_config(raw)
    assert cfg.trainer.max_steps == 3 and str(cfg.run_dir) == "/tmp/x/run"


# ----------------------------------------------------------------------------- precision and batch arithmetic

@pytest.mark.parametrize("value, expected", [
    (16, "bf16"), ("16", "bf16"), ("16-mixed", "bf16"), ("bf16", "bf16"), ("bf16-mixed", "bf16"),
    (32, "fp32"), ("32", "fp32"), ("32-true", "fp32"), ("fp32", "fp32")])
def test_precision_mapping(value, expected):
    assert normalize_precision(value) == expected
    raw = minimal()
    raw["trainer"]["precision"] = value
    assert load_config(raw).precision == expected


def test_bad_precision():
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        normalize_precision("fp8")
    raw = minimal()
    raw["trainer"]["precision"] = "fp8"
    assert problems_of(raw) == ["trainer.precision: got 'fp8'; use bf16, 16 (read as bf16) or 32"]


def test_global_batch_size_and_accumulation():
    cfg = load_config(minimal(global_batch_size=16, micro_batch_size=4))
    assert (cfg.global_batch_size, cfg.world_size, cfg.accumulation) == (16, 1, 4)
    raw = minimal(global_batch_size=16, micro_batch_size=4)
    raw["trainer"]["devices"] = 2
    cfg = load_config(raw)
    assert (cfg.global_batch_size, cfg.world_size, cfg.accumulation) == (16, 2, 2)
    raw["trainer"]["devices"] = 3
    assert problems_of(raw) == ["model.global_batch_size: 16 is not a multiple of micro_batch_size x "
                                "data-parallel size = 4 x 3; make it one"]
    # NeMo's older `batch_size` key is the global batch size
    cfg = load_config(minimal(global_batch_size=None, batch_size=12, micro_batch_size=3))
    assert (cfg.global_batch_size, cfg.accumulation) == (12, 4)
    # neither: micro batch x Lightning's accumulate_grad_batches
    raw = minimal(global_batch_size=None, micro_batch_size=2)
    raw["trainer"]["accumulate_grad_batches"] = 3
    cfg = load_config(raw)
    assert (cfg.global_batch_size, cfg.accumulation) == (6, 3)
    assert load_config(minimal(global_batch_size=4, micro_batch_size=4)).accumulation == 1


def test_style_spelling_and_defaults():
    cfg = load_config(minimal(virtual_prompt_style="p_tuning"))
    assert cfg.model.virtual_prompt_style == "p-tuning"
    assert isinstance(cfg.model, ModelConfig)
    assert cfg.max_seq_length == 2048
    assert load_config(minimal(data={"train_ds": ["t"], "max_seq_length": 256})).max_seq_length == 256


def test_invalid_common_word_key_does_not_hide_unrelated_problems():
    problems = problems_of(minimal(new_tasks=[], optim={"name": "sgd"}))
    assert len(problems) == 2, problems
    assert problems[0].startswith("model.optim.name: unknown optimizer 'sgd'")
    assert problems[1].startswith("model.new_tasks: empty; name the tasks to tune")


def test_invalid_list_item_removes_the_whole_key_once():
    problems = problems_of(minimal(new_tasks=[["a"], {"b": 1}], data={"train_ds": [3]}))
    assert sorted(p.split(":")[0] for p in problems) == [  # one problem per item, also for a Union's members
        "model.data.train_ds.0", "model.new_tasks.0", "model.new_tasks.1"]


# ----------------------------------------------------------------------------- job sections (jobs/config.py)

def test_the_engines_loader_names_ray_and_search_as_job_sections_in_its_one_report():
    raw = minimal(micro_batch_size=0)
    raw["ray"] = {"num_workers": 2}
    raw["search"] = {"tasks": {"sentiment": {"total_virtual_tokens": [4]}}}
    problems = problems_of(raw)
    assert [p.split(":")[0] for p in problems] == ["ray", "search", "model.micro_batch_size"], problems
    assert problems[0] == (
        "ray: a section of the Ray job config, which the engine's loader does not read; run this config with "
        "`promptray train`, `python -m promptray.jobs.train` or `python -m promptray.jobs.search` (they load the "
        "job config: promptray.jobs.config.load_job_config), or remove the section")


def test_the_engines_world_size_is_devices_times_nodes():
    raw = minimal(global_batch_size=16, micro_batch_size=4)
    raw["trainer"].update(devices=2, num_nodes=2)  # NeMo's devices x num_nodes counts the workers
    cfg = load_config(raw)
    assert (cfg.world_size, cfg.accumulation, cfg.accumulation_for(1)) == (4, 1, 4)
    assert not hasattr(cfg, "ray") and not hasattr(cfg, "search")


# ----------------------------------------------------------------------------- ranges (issue 13)

def four_problems(**model) -> dict:
    """The issue's config with four problems: a negative lr, splits that do not add up, batch arithmetic
    (10 is no multiple of 4 x 1) and a missing data file."""
    raw = minimal(global_batch_size=10, optim={"lr": -1}, data={"train_ds": ["no/such/train.jsonl"]}, **model)
    raw["model"]["task_templates"][0]["virtual_token_splits"] = [3]
    return raw


FOUR_PROBLEMS = [
    "model.data.train_ds[0]: file 'no/such/train.jsonl' does not exist; fix the path (relative paths are read "
    "from {cwd})",
    "model.optim.lr: got -1; use a value > 0.0",
    "model.task_templates[0] (task 'sentiment'): virtual_token_splits [3] sum to 3 but total_virtual_tokens is 4; "
    "make them add up",
    "model.global_batch_size: 10 is not a multiple of micro_batch_size x data-parallel size = 4 x 1; make it one"]


def test_four_problems_of_one_config_come_in_one_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config(four_problems(), check_files=True)
    assert e.value.problems == [p.format(cwd=tmp_path) for p in FOUR_PROBLEMS]


@pytest.mark.parametrize("override, expected", [
    ("trainer.gradient_clip_val=-1.0", "trainer.gradient_clip_val: got -1.0; use a value >= 0.0"),
    ("model.optim.lr=-1", "model.optim.lr: got -1; use a value > 0.0"),
    ("model.optim.lr=0", "model.optim.lr: got 0; use a value > 0.0"),
    ("model.optim.betas=[0.9]", "model.optim.betas: give two numbers in [0, 1), e.g. [0.9, 0.999] (got [0.9])"),
    ("model.optim.betas=[0.9,1.0]", "model.optim.betas: give two numbers in [0, 1), e.g. [0.9, 0.999] "
                                    "(got [0.9, 1.0])"),
    ("model.optim.eps=0", "model.optim.eps: got 0; use a value > 0.0"),
    ("model.optim.weight_decay=-0.1", "model.optim.weight_decay: got -0.1; use a value >= 0.0"),
    ("model.optim.sched.warmup_steps=-5", "model.optim.sched.warmup_steps: got -5; use a value >= 0"),
    ("model.optim.sched.warmup_ratio=1.5", "model.optim.sched.warmup_ratio: got 1.5; use a value <= 1.0"),
    ("model.optim.sched.constant_steps=-1", "model.optim.sched.constant_steps: got -1; use a value >= 0"),
    ("model.optim.sched.min_lr=-0.1", "model.optim.sched.min_lr: got -0.1; use a value >= 0.0"),
    ("model.optim.sched.min_lr=0.5", "model.optim.sched.min_lr: 0.5 is above model.optim.lr=0.0001; the schedule "
                                     "decays from lr to min_lr, so give min_lr <= lr"),
    ("trainer.max_steps=-2", "trainer.max_steps: use -1 (unset, as NeMo writes it) or a number >= 1 (got -2)"),
    ("trainer.max_epochs=0", "trainer.max_epochs: use -1 (unset, as NeMo writes it) or a number >= 1 (got 0)"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval: an int is a count >= 1; a float is a fraction "
                                     "in (0, 1] (got 0)"),
    ("trainer.val_check_interval=1.5", "trainer.val_check_interval: a float is a fraction of the epoch / of the "
                                       "batches in (0, 1]; an int is a count >= 1 (got 1.5)"),
    ("trainer.limit_val_batches=0", "trainer.limit_val_batches: an int is a count >= 1; a float is a fraction "
                                    "in (0, 1] (got 0)"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps: got 0; use a value >= 1"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches: got 0; use a value >= 1"),
    ("trainer.devices=0", "trainer.devices: use a number of devices >= 1, or -1 / 'auto' (got 0)"),
    ("trainer.num_nodes=0", "trainer.num_nodes: got 0; use a value >= 1"),
    ("model.seed=-3", "model.seed: got -3; use a value >= 0"),
    ("model.micro_batch_size=0", "model.micro_batch_size: got 0; use a value >= 1"),
    ("model.p_tuning.dropout=1.0", "model.p_tuning.dropout: got 1.0; use a value < 1.0"),
])
def test_every_numeric_setting_has_its_range(override, expected):
    assert problems_of(minimal(), [override]) == [expected]


def test_no_clipping_and_unset_counts_as_nemo_writes_them():
    cfg = load_config(minimal(), ["trainer.gradient_clip_val=0", "trainer.max_steps=-1", "trainer.max_epochs=2"])
    assert cfg.trainer.gradient_clip_val == 0 and cfg.trainer.max_steps is None and cfg.trainer.max_epochs == 2
    assert load_config(minimal(), ["trainer.gradient_clip_val=null"]).trainer.gradient_clip_val is None
    both = problems_of(minimal(optim={"sched": {"warmup_steps": 5, "warmup_ratio": 0.1}}))
    assert both == ["model.optim.sched: warmup_steps (5) and warmup_ratio (0.1) are both set; give only one"]


def test_virtual_tokens_must_leave_room_for_text_within_max_seq_length():
    raw = minimal(data={"train_ds": ["t"], "max_seq_length": 64})
    raw["model"]["task_templates"][0].update(total_virtual_tokens=61, virtual_token_splits=[61])
    assert problems_of(raw) == [
        "model.task_templates[0].total_virtual_tokens (task 'sentiment'): 61 virtual tokens do not fit "
        "model.data.max_seq_length=64; an example needs its virtual tokens plus at least 4 text tokens, so use "
        "at most 60 (or raise model.data.max_seq_length)"]


def test_a_value_that_fits_no_member_of_a_union_is_one_problem_naming_the_types():
    assert problems_of(minimal(), ["trainer.val_check_interval=often"]) == [
        "trainer.val_check_interval: got 'often'; give a value of type int or float"]
