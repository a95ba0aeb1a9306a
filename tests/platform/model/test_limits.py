"""The base model's limits, read from its config alone, against the virtual-token counts of a run and the
prompts it restores: each problem names the key, the number asked for and the model's number, before any
weights load (the models here are config.json folders without weights, so loading them would fail)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from promptray.jobs.config import load_job_config
from promptray.platform.config.schema import load_config
from promptray.platform.errors import ConfigError
from promptray.platform.model.fingerprint import BaseModelFingerprint
from promptray.platform.model.hub import default_cache_dir
from promptray.platform.model.limits import read_model_limits
from promptray.platform.table.table import PromptTable, TaskPrompt
from promptray.platform.train.engine import build_engine

TEMPLATE = {"taskname": "new", "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
            "total_virtual_tokens": 600, "virtual_token_splits": [600]}


def config_only_model(folder: Path, positions: int, width: int) -> Path:
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_head=2, n_embd=width, n_positions=positions, vocab_size=100).save_pretrained(folder)
    return folder


def test_limits_come_from_the_config_alone(tmp_path):
    limits = read_model_limits(str(config_only_model(tmp_path / "m", 512, 8)))
    assert (limits.max_positions, limits.hidden_size, limits.vocab_size) == (512, 8, 100)
    if not (default_cache_dir() / "models" / "smollm2-135m" / "config.json").is_file():
        pytest.skip("the built-in smollm2-135m is not converted in this cache")
    smol = read_model_limits("smollm2-135m")
    assert (smol.max_positions, smol.hidden_size, smol.vocab_size) == (8192, 576, 49152)


def test_counts_and_restored_prompts_that_do_not_fit_are_named_before_the_weights_load(tmp_path):
    model = config_only_model(tmp_path / "m512", 512, 8)
    table = str(tmp_path / "table")
    trained_on = BaseModelFingerprint("other-model", "GPT2LMHeadModel", 32, 50257, "0" * 64)
    PromptTable(table).publish([TaskPrompt("old", torch.zeros(510, 32), {**TEMPLATE, "taskname": "old",
                                                                          "total_virtual_tokens": 510,
                                                                          "virtual_token_splits": [510]},
                                           "prompt-tuning", trained_on)])
    cfg = load_config({"trainer": {"max_steps": 1}, "model": {
        "language_model_path": str(model), "restore_path": table, "nemo_path": table, "existing_tasks": ["old"],
        "new_tasks": ["new"], "task_templates": [TEMPLATE], "data": {"train_ds": ["unused.jsonl"]}}})
    with pytest.raises(ConfigError) as e:
        build_engine(cfg)
    assert e.value.problems == [
        "model.task_templates[0].total_virtual_tokens (task 'new'): 600 virtual tokens + at least 4 text tokens (no "
        f"tokenizer files to count the template's) need 604 positions, more than the 512 positions of base model "
        f"'{model}' (max_position_embeddings); use at most 508 virtual tokens",
        f"model.existing_tasks: task 'old' was trained on base model 'other-model' with hidden size 32, but "
        f"'{model}' has hidden size 8; set model.language_model_path to the model it was trained on",
        f"model.existing_tasks: task 'old' was trained on base model 'other-model' with vocabulary size 50257, but "
        f"'{model}' has vocabulary size 100; set model.language_model_path to the model it was trained on",
        f"model.existing_tasks: task 'old' total_virtual_tokens: 510 virtual tokens do not fit the base model "
        f"'{model}', which takes 512 positions (max_position_embeddings); an example needs its virtual tokens "
        "plus at least 4 text tokens, so use at most 508"]


SENTIMENT = {"taskname": "sentiment", "prompt_template": "<|VIRTUAL_PROMPT_0|> Review: {sentence} Sentiment: {label}",
             "total_virtual_tokens": 10, "virtual_token_splits": [10], "truncate_field": "sentence",
             "answer_only_loss": True, "answer_field": "label"}


def _sentiment_config(model: Path, tmp_path: Path, **model_keys) -> dict:
    return {"trainer": {"max_steps": 1}, "model": {
        "language_model_path": str(model), "nemo_path": str(tmp_path / "table"), "new_tasks": ["sentiment"],
        "task_templates": [SENTIMENT], "data": {"train_ds": ["unused.jsonl"]}, **model_keys}}


def test_the_templates_own_text_counts_against_max_seq_length_issue13(tiny_gpt2_path, tmp_path):
    """F6: 10 virtual tokens + the template's text (7 GPT-2 tokens: ' Review', ':', ' ', ' Sentiment', ':' and
    the answer's leading ' ' as two) + EOS = 18 > encoder_seq_length 16, named before anything loads."""
    from promptray.platform.data.dataset import shortest_example
    from promptray.platform.data.templates import TaskTemplate
    from promptray.platform.model.hub import load_tokenizer
    from promptray.platform.model.limits import model_limit_problems

    tok = load_tokenizer(str(tiny_gpt2_path))
    template = TaskTemplate.model_validate(SENTIMENT)
    rendered = template.render({"sentence": "", "label": ""})
    text_ids = [i for c in rendered if c.kind != "virtual" for i in tok.encode(c.text, add_special_tokens=False)]
    assert shortest_example(template, tok, add_bos=False, add_eos=True, inference=False) == 10 + len(text_ids) + 1
    cfg = load_config(_sentiment_config(tiny_gpt2_path, tmp_path, encoder_seq_length=16))
    assert model_limit_problems(cfg) == [
        f"model.task_templates[0].total_virtual_tokens (task 'sentiment'): 10 virtual tokens + {len(text_ids)} tokens "
        "of the template's text ('<|VIRTUAL_PROMPT_0|> Review: {sentence} Sentiment: {label}' with every field empty) "
        f"+ EOS (model.data.add_eos) need {11 + len(text_ids)} positions, more than model.encoder_seq_length=16; use "
        f"at most {15 - len(text_ids)} virtual tokens (or raise model.encoder_seq_length)"]
    assert len(text_ids) == 7

    search = {"tasks": {"sentiment": {"total_virtual_tokens": [5, 20]}}}  # 5 + 8 fits 26; 20 + 8 does not
    raw = _sentiment_config(tiny_gpt2_path, tmp_path, encoder_seq_length=26)
    raw["model"]["data"]["validation_ds"] = ["unused.jsonl"]
    cfg = load_job_config({**raw, "search": search})
    assert model_limit_problems(cfg) == [
        "search.tasks.sentiment.total_virtual_tokens: 20 virtual tokens + 7 tokens of the template's text "
        "('<|VIRTUAL_PROMPT_0|> Review: {sentence} Sentiment: {label}' with every field empty) + EOS "
        "(model.data.add_eos) need 28 positions, more than model.encoder_seq_length=26; use at most 18 virtual "
        "tokens (or raise model.encoder_seq_length)"]
    cfg = load_config(_sentiment_config(tiny_gpt2_path, tmp_path, encoder_seq_length=18))
    assert model_limit_problems(cfg) == []  # exactly full: fits


def test_a_val_accuracy_search_leaves_room_for_max_new_tokens(tiny_gpt2_path, tmp_path):
    """tiny-gpt2 takes 256 positions: 20 virtual + the prompt's text + 240 generated do not fit; 5 do."""
    from promptray.platform.model.hub import load_tokenizer
    from promptray.platform.model.limits import model_limit_problems

    text = len(load_tokenizer(str(tiny_gpt2_path)).encode(" Review:  Sentiment:", add_special_tokens=False))
    raw = _sentiment_config(tiny_gpt2_path, tmp_path)
    raw["model"]["data"]["validation_ds"] = ["unused.jsonl"]
    search = {"tasks": {"sentiment": {"total_virtual_tokens": [5, 20]}}, "metric": "val_accuracy",
              "max_new_tokens": 240}
    assert model_limit_problems(load_job_config({**raw, "search": search})) == [
        f"search.tasks.sentiment.total_virtual_tokens: 20 virtual tokens + {text} tokens of the template's text up "
        "to the answer + search.max_new_tokens 240 exceed the 256 positions of base model "
        f"'{tiny_gpt2_path}'; use at most {256 - text - 240} virtual tokens or lower search.max_new_tokens"]
    assert 5 <= 256 - text - 240 < 20
