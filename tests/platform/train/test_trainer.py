"""Training end to end on tiny models: the spec's two example configs, continual learning, metrics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from promptray.platform.config.schema import load_config
from promptray.platform.data.encoding import TaskEncoding
from promptray.platform.errors import BaseModelMismatchError, ConfigError
from promptray.platform.model.fingerprint import fingerprint_model
from promptray.platform.model.hub import load_base_model
from promptray.platform.table.table import PromptTable, TaskPrompt
from promptray.platform.train.engine import build_engine
from promptray.platform.train.trainer import train

WORDS = "apple river stone cloud green tiger music paper candle window garden silver".split()

# The spec's "Example Multi-Task Prompt Tuning Config", with only paths and the base model changed
# (and trainer/optim filled in where the spec writes `...`).
SPEC_PROMPT_TUNING = """
name: multitask_prompt_tuning
trainer:
  devices: 1
  accelerator: cpu
  num_nodes: 1
  precision: 32
  max_steps: 4
  val_check_interval: 2
  log_every_n_steps: 1
  gradient_clip_val: 1.0
exp_manager: ...
model:
  seed: 1234
  nemo_path: {out}/${{name}}.nemo
  virtual_prompt_style: "prompt-tuning"
  encoder_seq_length: 2048
  tensor_model_parallel_size: 1
  pipeline_model_parallel_size: 1
  global_batch_size: 16
  micro_batch_size: 4

  restore_path: null
  language_model_path: {model}
  existing_tasks: []
  new_tasks: ["sentiment", "intent_and_slot"]

  task_templates:
  - taskname: "sentiment"
    prompt_template: "<|VIRTUAL_PROMPT_0|> {{sentence}} sentiment: {{label}}"
    total_virtual_tokens: 100
    virtual_token_splits: [100]
    truncate_field: null
    answer_only_loss: False

  - taskname: "intent_and_slot"
    prompt_template: "<|VIRTUAL_PROMPT_0|> Predict intent and slot <|VIRTUAL_PROMPT_1|> :\\n{{utterance}}{{label}}"
    total_virtual_tokens: 100
    virtual_token_splits: [80, 20]
    truncate_field: null
    answer_only_loss: True
    answer_field: "label"

  prompt_tuning:
    new_prompt_init_methods: ["text", "text"]
    new_prompt_init_text: ["financial sentiment analysis postive neutral negative", "intent and slot classification virtual assistant task bot please"]

  data:
    train_ds: ["{data}/financial_phrase_bank_train.jsonl", "{data}/assistent_train.jsonl"]
    validation_ds: ["{data}/financial_phrase_bank_val.jsonl", "{data}/assistent_val.jsonl"]
    add_eos: True
    shuffle: True
    num_workers: 1
    pin_memory: True

  optim:
    name: fused_adam
    lr: 1e-2
    weight_decay: 0.01
    betas: [0.9, 0.98]
    sched:
      name: CosineAnnealing
      warmup_steps: 1
      min_lr: 0.0
      constant_steps: 0
      monitor: val_loss
      reduce_on_plateau: false
"""  # noqa: E501  (the spec's config, verbatim)

# The spec's "Example Multi-Task P-Tuning Config After Prompt-Tuning".
SPEC_P_TUNING = SPEC_PROMPT_TUNING.replace("name: multitask_prompt_tuning", "name: multitask_p_tuning").replace(
    'virtual_prompt_style: "prompt-tuning"', 'virtual_prompt_style: "p-tuning"').replace(
    "restore_path: null", "restore_path: {out}/multitask_prompt_tuning.nemo").replace(
    "existing_tasks: []", 'existing_tasks: ["sentiment", "intent_and_slot"]').replace(
    'new_tasks: ["sentiment", "intent_and_slot"]', 'new_tasks: ["squad"]').replace(
    """  prompt_tuning:
    new_prompt_init_methods: ["text", "text"]
    new_prompt_init_text: ["financial sentiment analysis postive neutral negative", "intent and slot classification virtual assistant task bot please"]
""", """  - taskname: "squad"
    prompt_template: "<|VIRTUAL_PROMPT_0|> Answer the question from the context {{question}} {{context}} Answer: {{answer}}"
    total_virtual_tokens: 9
    virtual_token_splits: [9]
    truncate_field: context
    answer_only_loss: True
    answer_field: "answer"

  p_tuning:
      dropout: 0.0
      num_layers: 2
""").replace(  # noqa: E501  (the spec's p-tuning config, verbatim)
    'train_ds: ["{data}/financial_phrase_bank_train.jsonl", "{data}/assistent_train.jsonl"]',
    'train_ds: ["{data}/squad_train.jsonl"]').replace(
    'validation_ds: ["{data}/financial_phrase_bank_val.jsonl", "{data}/assistent_val.jsonl"]',
    'validation_ds: ["{data}/squad_val.jsonl"]')


def _records(task: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = rng.sample(WORDS, 4)
        if task == "sentiment":
            out.append({"taskname": task, "sentence": " ".join(w), "label": rng.choice(["positive", "negative"])})
        elif task == "intent_and_slot":
            out.append({"taskname": task, "utterance": " ".join(w), "label": f"intent: {w[0]} slot: {w[1]}"})
        else:
            ctx = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 300)))  # some need truncation
            out.append({"taskname": task, "context": ctx, "question": f"where is the {w[0]}?", "answer": w[1]})
    return out


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def spec_data(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for name, task in [("financial_phrase_bank", "sentiment"), ("assistent", "intent_and_slot"), ("squad", "squad")]:
        _write(d / f"{name}_train.jsonl", _records(task, 40, 1))
        _write(d / f"{name}_val.jsonl", _records(task, 8, 2))
    return d


def _spec_config(text: str, tmp_path: Path, model: Path, data: Path, overrides=()):
    path = tmp_path / "config.yaml"
    path.write_text(text.format(out=tmp_path, model=model, data=data))
    return load_config(path, [f"exp_manager.exp_dir={tmp_path}/runs", *overrides])


def test_spec_example_configs_run_end_to_end(tmp_path, tiny_gpt2_path, spec_data):
    first = train(_spec_config(SPEC_PROMPT_TUNING, tmp_path, tiny_gpt2_path, spec_data), progress=False)
    table_1 = PromptTable(first.table_uri)
    assert first.table_uri.endswith("multitask_prompt_tuning.nemo")
    assert table_1.tasks() == ["intent_and_slot", "sentiment"]
    before = {n: table_1.get(n).embeddings for n in table_1.tasks()}
    assert {n: t.shape for n, t in before.items()} == {"intent_and_slot": (100, 32), "sentiment": (100, 32)}

    second = train(_spec_config(SPEC_P_TUNING, tmp_path, tiny_gpt2_path, spec_data), progress=False)
    table_2 = PromptTable(second.table_uri)
    assert second.table_uri.endswith("multitask_p_tuning.nemo")
    assert table_2.tasks() == ["intent_and_slot", "sentiment", "squad"]
    for name, tensor in before.items():  # existing tasks come out bit-identical
        assert torch.equal(table_2.get(name).embeddings, tensor)
    squad = table_2.get("squad")
    assert squad.style == "p-tuning" and squad.embeddings.shape == (9, 32)
    # only the per-task embeddings are saved: no LSTM weights anywhere in the table
    obj = Path(second.table_uri) / table_2.history("squad")[-1].object_key
    with safe_open(str(obj), "pt") as f:
        assert list(f.keys()) == ["embeddings"]
    assert second.metrics_path.is_file() and second.plot_path.is_file()


def _toy_config(tmp_path: Path, model: Path, tasks: dict[str, int], style="prompt-tuning", steps=6, **model_kw):
    data = tmp_path / "toy.jsonl"
    rows = [r for name in tasks for r in ({"taskname": name, "text": " ".join(random.Random(i).sample(WORDS, 3)),
                                          "label": "yes"} for i in range(24))]
    _write(data, rows)
    templates = [{"taskname": n, "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
                  "total_virtual_tokens": k, "virtual_token_splits": [k], "answer_only_loss": True,
                  "answer_field": "label"} for n, k in tasks.items()]
    model_cfg = {"language_model_path": str(model), "nemo_path": str(tmp_path / "table"),
                 "virtual_prompt_style": style, "new_tasks": list(tasks), "task_templates": templates,
                 "global_batch_size": 4, "micro_batch_size": 2, "data": {"train_ds": [str(data)],
                 "validation_ds": [str(data)]}, "optim": {"lr": 0.05}}
    model_cfg.update(model_kw)
    return load_config({"name": "toy", "trainer": {"max_steps": steps, "val_check_interval": 2, "precision": 32,
                                                   "log_every_n_steps": 1},
                        "exp_manager": {"exp_dir": str(tmp_path / "runs")}, "model": model_cfg})


def test_tasks_tuned_together_may_have_different_token_counts(tmp_path, tiny_llama_path):
    result = train(_toy_config(tmp_path, tiny_llama_path, {"a": 3, "b": 7}), progress=False)
    table = PromptTable(result.table_uri)
    assert {n: table.get(n).num_virtual_tokens for n in table.tasks()} == {"a": 3, "b": 7}


def test_p_tuning_after_prompt_tuning_and_back_on_one_table(tmp_path, tiny_gpt2_path):
    train(_toy_config(tmp_path, tiny_gpt2_path, {"a": 4}), progress=False)
    table = PromptTable(tmp_path / "table")
    a = table.get("a").embeddings
    restore = {"restore_path": str(tmp_path / "table"), "existing_tasks": ["a"]}
    cfg = _toy_config(tmp_path, tiny_gpt2_path, {"b": 5}, style="p-tuning", **restore)
    cfg.model.task_templates.insert(0, table.get("a").template)
    train(cfg, progress=False)
    restore["existing_tasks"] = ["a", "b"]
    cfg = _toy_config(tmp_path, tiny_gpt2_path, {"c": 2}, **restore)
    train(cfg, progress=False)
    assert table.tasks() == ["a", "b", "c"]
    assert [table.get(n).style for n in "abc"] == ["prompt-tuning", "p-tuning", "prompt-tuning"]
    assert torch.equal(table.get("a").embeddings, a)
    assert len(table.history("a")) == 1  # restoring into the same table never republishes existing tasks


def test_continual_learning_mistakes_are_clear_errors(tmp_path, tiny_gpt2_path):
    train(_toy_config(tmp_path, tiny_gpt2_path, {"a": 4}, steps=2), progress=False)
    restore = {"restore_path": str(tmp_path / "table")}
    with pytest.raises(ConfigError, match=r"\['a'\] already in the prompt table"):
        train(_toy_config(tmp_path, tiny_gpt2_path, {"a": 4}, **restore), progress=False)
    with pytest.raises(ConfigError, match=r"\['zzz'\] not in the prompt table .*it has \['a'\]"):
        train(_toy_config(tmp_path, tiny_gpt2_path, {"b": 4}, existing_tasks=["zzz"], **restore), progress=False)
    with pytest.raises(ConfigError, match="task 'c' has no entry in model.task_templates"):
        load_config({"trainer": {"max_steps": 1}, "model": {"language_model_path": "x", "nemo_path": "t",
                     "new_tasks": ["c"], "data": {"train_ds": ["x.jsonl"]}}})


def test_restoring_against_another_base_model_fails_clearly(tmp_path, tiny_gpt2_path, tiny_llama_path):
    train(_toy_config(tmp_path, tiny_gpt2_path, {"a": 4}, steps=2), progress=False)
    cfg = _toy_config(tmp_path, tiny_llama_path, {"b": 4}, steps=2, restore_path=str(tmp_path / "table"),
                      existing_tasks=["a"])
    # the message shape of every loader (table, infer, serve, search): task, version, both models, the difference
    with pytest.raises(BaseModelMismatchError, match=r"^task 'a' version 'v000001-\w+' was trained on base model "
                                                     r".*tiny-gpt2.* but is being loaded against .*tiny-llama"):
        train(cfg, progress=False)


def _publish_on(table: PromptTable, tasks: dict[str, Path]) -> None:
    """One 4-token prompt per task, published as trained on the given model folder (its real fingerprints)."""
    prompts = []
    for name, path in tasks.items():
        lm, tok = load_base_model(str(path))
        template = {"taskname": name, "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
                    "total_virtual_tokens": 4, "virtual_token_splits": [4], "answer_field": "label"}
        prompts.append(TaskPrompt(taskname=name, embeddings=torch.randn(4, 32), template=template,
                                  style="prompt-tuning", base_model=fingerprint_model(lm, str(path)),
                                  encoding=TaskEncoding.of(tok, add_bos=False, add_eos=True)))
    table.publish(prompts)


def test_restore_without_language_model_path_loads_the_existing_tasks_base_model(tmp_path, tiny_gpt2_path,
                                                                                 tiny_llama_path):
    table = PromptTable(tmp_path / "old")
    _publish_on(table, {"g": tiny_gpt2_path, "l": tiny_llama_path})
    restore = {"language_model_path": None, "restore_path": table.uri}
    engine = build_engine(_toy_config(tmp_path, tiny_gpt2_path, {"c": 4}, existing_tasks=["l"], **restore))
    assert engine.fingerprint.name == str(tiny_llama_path) and engine.fingerprint.architecture == "LlamaForCausalLM"
    assert engine.model.bank.frozen_names == ["l"] and engine.model.bank.tuned_names == ["c"]
    two = (f"model.language_model_path is not set and the tasks of the prompt table at {table.uri!r} were trained "
           f"on 2 different base models: {str(tiny_gpt2_path)!r} ('g'); {str(tiny_llama_path)!r} ('l'); set "
           "model.language_model_path to the one to load")
    for existing in (["g", "l"], []):  # the existing tasks, else every task of the table
        with pytest.raises(BaseModelMismatchError) as err:
            build_engine(_toy_config(tmp_path, tiny_gpt2_path, {"c": 4}, existing_tasks=existing, **restore))
        assert str(err.value).startswith(two)


def test_best_prompts_by_validation_loss_are_published(tmp_path, tiny_gpt2_path):
    result = train(_toy_config(tmp_path, tiny_gpt2_path, {"a": 4}, steps=8), progress=False)
    records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    assert [s for s, _ in val] == [2, 4, 6, 8]
    assert result.best_val_loss == min(v for _, v in val)
    assert val[-1][1] < val[0][1]  # it learned: the label is always " yes"
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["best_step"] == min(val, key=lambda x: x[1])[0]
    assert torch.equal(PromptTable(result.table_uri).get("a").embeddings, result.prompts["a"])


def test_lm_finetune_changes_and_saves_the_base_model(tmp_path, tiny_gpt2_path):
    from safetensors.torch import load_file

    original = load_file(str(tiny_gpt2_path / "model.safetensors"))
    result = train(_toy_config(tmp_path, tiny_gpt2_path, {"a": 4}, steps=3, lm_finetune=True), progress=False)
    tuned = load_file(str(result.run_dir / "finetuned_model" / "model.safetensors"))
    key = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(original[key], tuned[key])
    fp = PromptTable(result.table_uri).get("a").base_model
    assert fp.name.endswith("finetuned_model")
