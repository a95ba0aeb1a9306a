"""What a task version records about its tokenization (add_bos, add_eos, tokenizer) and how inference uses it."""

from __future__ import annotations

import json
import logging
import random
import struct

import pytest
import torch
from safetensors.torch import save as st_save

from promptray.platform.config.schema import load_config
from promptray.platform.data.dataset import build_examples
from promptray.platform.data.encoding import (
    TaskEncoding,
    TokenizerMismatchError,
    add_bos_by_task,
    fingerprint_tokenizer,
)
from promptray.platform.generation.inference import load_inference_engine, prepare
from promptray.platform.model.fingerprint import fingerprint_model
from promptray.platform.model.hub import load_base_model
from promptray.platform.table.codec import TaskPrompt, decode_prompt, encode_prompt
from promptray.platform.table.table import PromptTable
from promptray.platform.train.trainer import train

WORDS = "apple river stone cloud green tiger music paper candle window garden silver".split()
TEMPLATE = {"taskname": "a", "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
            "total_virtual_tokens": 3, "virtual_token_splits": [3], "answer_only_loss": True, "answer_field": "label"}


def _meta(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(json.loads(data[8:8 + n])["__metadata__"]["promptray"])


def _prompt(tiny_gpt2, encoding: TaskEncoding) -> TaskPrompt:
    lm, _ = tiny_gpt2
    return TaskPrompt("a", torch.randn(3, 32, generator=torch.Generator().manual_seed(0)), TEMPLATE,
                      "prompt-tuning", fingerprint_model(lm, "tiny"), encoding=encoding)


def test_tokenizer_fingerprint_ignores_folder_and_sees_vocabulary_changes(tiny_gpt2, tmp_path):
    _, tok = tiny_gpt2
    fp = fingerprint_tokenizer(tok)
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path / "copy")
    copy = AutoTokenizer.from_pretrained(tmp_path / "copy")  # the same tokenizer in another folder
    assert fingerprint_tokenizer(copy).mismatches(fp) == [] and fingerprint_tokenizer(copy).name != fp.name
    copy.add_tokens(["<new_token>"])
    changed = fingerprint_tokenizer(copy)
    assert [m.split(":")[0] for m in fp.mismatches(changed)] == ["vocab_size", "sha256"]
    assert (fp.vocab_size, changed.vocab_size) == (50257, 50258)


def test_encoding_round_trips_and_old_objects_read_as_trained_defaults(tiny_gpt2):
    _, tok = tiny_gpt2
    enc = TaskEncoding.of(tok, add_bos=True, add_eos=False)
    data = encode_prompt(_prompt(tiny_gpt2, enc))
    assert decode_prompt(data).encoding == enc
    meta = _meta(data)
    assert meta["encoding"]["add_bos"] is True and meta["encoding"]["tokenizer"]["sha256"] == enc.tokenizer.sha256
    del meta["encoding"]  # an object published before the encoding was recorded
    old = st_save({"embeddings": decode_prompt(data).embeddings}, metadata={"promptray": json.dumps(meta)})
    assert decode_prompt(old).encoding == TaskEncoding(add_bos=False, add_eos=True, tokenizer=None)


def test_table_refuses_a_task_trained_with_another_tokenizer(tiny_gpt2, tmp_path):
    _, tok = tiny_gpt2
    table = PromptTable(tmp_path / "t")
    table.publish([_prompt(tiny_gpt2, TaskEncoding.of(tok, add_bos=False, add_eos=True))])
    assert table.get("a", tokenizer=fingerprint_tokenizer(tok)).taskname == "a"
    tok.add_tokens(["<new_token>"])
    with pytest.raises(TokenizerMismatchError, match=r"task 'a' version 'v000001-\w+' was trained with tokenizer "
                                                     r".*vocab_size: trained with 50257, loaded 50258"):
        table.get("a", tokenizer=fingerprint_tokenizer(tok))


def test_add_bos_per_task_as_trained_unless_overridden():
    encodings = {"bos": TaskEncoding(add_bos=True), "plain": TaskEncoding()}
    assert add_bos_by_task(encodings, ["bos", "plain", "old"], None) == {"bos": True, "plain": False, "old": False}
    assert add_bos_by_task(encodings, ["bos", "plain"], False) == {"bos": False, "plain": False}


def _train_with_bos(tmp_path, model_path) -> str:
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"taskname": "a", "text": " ".join(random.Random(i).sample(WORDS, 3)),
                                        "label": "yes"}) + "\n" for i in range(16)))
    cfg = load_config({"name": "bos", "trainer": {"max_steps": 2, "val_check_interval": 2, "precision": 32},
                       "exp_manager": {"exp_dir": str(tmp_path / "runs")},
                       "model": {"language_model_path": str(model_path), "nemo_path": str(tmp_path / "table"),
                                 "new_tasks": ["a"], "task_templates": [TEMPLATE], "global_batch_size": 4,
                                 "micro_batch_size": 2, "optim": {"lr": 0.05},
                                 "data": {"train_ds": [str(data)], "validation_ds": [str(data)], "add_bos": True}}})
    return train(cfg, progress=False).table_uri


def test_trained_with_bos_infer_prepares_bos_first_without_being_told(tmp_path, tiny_gpt2_path, caplog):
    """Issue 13 #3: `promptray infer` needed the user to remember inference.add_BOS."""
    uri = _train_with_bos(tmp_path, tiny_gpt2_path)
    engine = load_inference_engine(uri)
    _, tok = load_base_model(str(tiny_gpt2_path))
    assert PromptTable(uri).get("a").encoding == TaskEncoding.of(tok, add_bos=True, add_eos=True)
    record = {"taskname": "a", "text": "green tiger", "label": "yes"}
    (ex,) = prepare(engine, [record], 4)
    assert ex.input_ids[0] == tok.bos_token_id and ex.virtual_ids[:4] == [-1, 0, 1, 2]
    (expected,), _ = build_examples([record], list(engine.templates.values()), tok, 252, add_bos=True,
                                    inference=True)
    assert ex.input_ids == expected.input_ids and ex.virtual_ids == expected.virtual_ids
    with caplog.at_level(logging.WARNING, logger="promptray.platform.data.encoding"):
        (plain,) = prepare(engine, [record], 4, add_bos=False)
    assert plain.virtual_ids[:3] == [0, 1, 2] and plain.input_ids == ex.input_ids[1:]
    assert "task 'a' was trained with add_bos=True but add_BOS=False was given" in caplog.text


def test_publish_checks_the_encoding_type(tiny_gpt2, tmp_path):
    from promptray.platform.errors import ConfigError

    bad = _prompt(tiny_gpt2, TaskEncoding())
    bad.encoding = {"add_bos": True}  # a dict, not a TaskEncoding
    with pytest.raises(ConfigError, match="encoding must be a TaskEncoding, got dict"):
        PromptTable(tmp_path / "t").publish([bad])
