"""The one loader of prompts onto their base model (`load_prompt_model`): default base model, the checks,
and what it loads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from promptray.platform.data.encoding import TaskEncoding, TokenizerMismatchError, fingerprint_tokenizer
from promptray.platform.errors import BaseModelMismatchError, ConfigError, PromptTableError
from promptray.platform.generation.loading import load_prompt_model
from promptray.platform.model.fingerprint import fingerprint_model
from promptray.platform.model.hub import load_base_model
from promptray.platform.table.table import PromptTable, TaskPrompt

TEMPLATE = "<|VIRTUAL_PROMPT_0|> Review: {text} Sentiment:{label}"


@pytest.fixture(scope="module")
def fingerprints(tiny_gpt2_path, tiny_llama_path):
    """(model, tokenizer) fingerprints of the tiny GPT-2 and the tiny Llama (same tokenizer files)."""
    out = {}
    for key, path in (("gpt2", tiny_gpt2_path), ("llama", tiny_llama_path)):
        lm, tok = load_base_model(str(path))
        out[key] = (fingerprint_model(lm, str(path)), fingerprint_tokenizer(tok))
    return out


def _prompt(name: str, fingerprint, tokenizer_fp=None, n: int = 3, seed: int = 0) -> TaskPrompt:
    template = {"taskname": name, "prompt_template": TEMPLATE, "total_virtual_tokens": n,
                "virtual_token_splits": [n], "answer_field": "label"}
    emb = torch.randn(n, fingerprint.hidden_size, generator=torch.Generator().manual_seed(seed))  # (n, H)
    return TaskPrompt(taskname=name, embeddings=emb, template=template, style="prompt-tuning",
                      base_model=fingerprint, encoding=TaskEncoding(add_bos=True, tokenizer=tokenizer_fp))


def test_without_a_base_model_it_loads_the_one_the_tasks_were_trained_on(tmp_path, fingerprints):
    fp, tok_fp = fingerprints["gpt2"]
    table = PromptTable(tmp_path / "t")
    published = [_prompt("a", fp, tok_fp, 3, seed=1), _prompt("b", dataclasses.replace(fp, name="alias"), tok_fp, 5, 2)]
    versions = table.publish(published)
    loaded = load_prompt_model(str(tmp_path / "t"))
    assert loaded.fingerprint == fp and loaded.tokenizer_fingerprint == tok_fp  # "alias" is the same model
    assert loaded.versions == versions and sorted(loaded.templates) == ["a", "b"]
    assert loaded.templates["b"].total_virtual_tokens == 5
    assert loaded.encodings["a"] == TaskEncoding(add_bos=True, tokenizer=tok_fp)
    assert loaded.model.bank.frozen_names == ["a", "b"] and not loaded.model.training
    for p in published:
        assert torch.equal(loaded.model.bank.get(p.taskname), p.embeddings)
    only_a = load_prompt_model(table, str(loaded.fingerprint.name), ["a"], "bf16")
    assert only_a.model.bank.names == ["a"] and only_a.model.lm.dtype == torch.bfloat16


def test_a_task_of_another_base_model_is_refused_naming_task_version_and_difference(tmp_path, fingerprints,
                                                                                     tiny_gpt2_path):
    fp, tok_fp = fingerprints["gpt2"]
    other = dataclasses.replace(fp, name="other-model", embedding_sha256="0" * 64)
    table = PromptTable(tmp_path / "t")
    version = table.publish([_prompt("a", other, tok_fp)])["a"]
    with pytest.raises(BaseModelMismatchError) as err:
        load_prompt_model(table, str(tiny_gpt2_path))
    assert not isinstance(err.value, TokenizerMismatchError)
    assert str(err.value) == (
        f"task 'a' version {version!r} was trained on base model 'other-model' but is being loaded against "
        f"{str(tiny_gpt2_path)!r}; they differ in embedding_sha256: prompts have {'0' * 64!r}, model has "
        f"{fp.embedding_sha256!r}. Load it with the base model it was trained on, or re-train the task on this model.")


def test_a_task_of_another_tokenizer_is_refused(tmp_path, fingerprints):
    fp, tok_fp = fingerprints["gpt2"]
    table = PromptTable(tmp_path / "t")
    version = table.publish([_prompt("a", fp, dataclasses.replace(tok_fp, sha256="f" * 64))])["a"]
    with pytest.raises(TokenizerMismatchError) as err:
        load_prompt_model(table)  # the default base model is right; its tokenizer is not the task's
    assert str(err.value).startswith(f"task 'a' version {version!r} was trained with tokenizer ")
    assert f"sha256: trained with {'f' * 64!r}, loaded {tok_fp.sha256!r}" in str(err.value)
    assert isinstance(err.value, BaseModelMismatchError)  # one error family for a mismatch


def test_tasks_of_two_base_models_need_the_base_model_named(tmp_path, fingerprints, tiny_gpt2_path):
    (gpt2, tok_fp), (llama, _) = fingerprints["gpt2"], fingerprints["llama"]
    table = PromptTable(tmp_path / "t")
    table.publish([_prompt("a", gpt2, tok_fp), _prompt("b", llama, tok_fp), _prompt("c", gpt2, tok_fp)])
    with pytest.raises(BaseModelMismatchError) as err:
        load_prompt_model(table)
    assert str(err.value) == (
        f"base_model is not set and the tasks of the prompt table at {table.uri!r} were trained on 2 different "
        f"base models: {gpt2.name!r} ('a', 'c'); {llama.name!r} ('b'); set base_model to the one to load (tasks "
        "of the others cannot be used with it)")
    loaded = load_prompt_model(table, tasks=["a", "c"])  # the named tasks agree
    assert loaded.fingerprint == gpt2 and loaded.model.bank.names == ["a", "c"]
    with pytest.raises(BaseModelMismatchError, match=r"task 'b' version 'v000001-\w+' was trained on base model"):
        load_prompt_model(table, str(tiny_gpt2_path))  # every task of the table, one of another model


def test_unknown_task_and_empty_table(tmp_path, fingerprints, tiny_gpt2_path):
    fp, tok_fp = fingerprints["gpt2"]
    table = PromptTable(tmp_path / "t")
    table.publish([_prompt("a", fp, tok_fp)])
    with pytest.raises(PromptTableError, match=r"^no task 'nope' in prompt table .*; known tasks: a$"):
        load_prompt_model(table, tasks=["a", "nope"])
    empty = PromptTable(tmp_path / "empty")
    with pytest.raises(ConfigError, match="the prompt table at .* has no tasks; train some first"):
        load_prompt_model(empty, str(tiny_gpt2_path))
    with pytest.raises(ConfigError, match=r"model \(--model\) is not set and the prompt table at .* has no tasks "
                                          r"to take the base model from; set model \(--model\)"):
        load_prompt_model(empty, tasks=[], setting="model (--model)")
    bare = load_prompt_model(empty, str(tiny_gpt2_path), tasks=[])  # a serving replica before any task loads
    assert bare.model.bank.names == [] and bare.fingerprint == fp and bare.templates == {}
