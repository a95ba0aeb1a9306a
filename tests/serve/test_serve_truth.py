"""The serving engine without Ray tells the truth: a table of another base model is refused, tasks of another
model are left out (409 when asked for), a cut input is flagged, tasks are OpenAI models."""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

import pytest

from promptray.platform.errors import BaseModelMismatchError
from promptray.platform.table.table import PromptTable
from promptray.serve.engine import ServeEngine
from promptray.serve.errors import TaskModelMismatchError, UnknownTaskError
from promptray.serve.schemas import SamplingParams, ServerSettings

from serve_helpers import TEMPLATES, make_prompt

SENT = TEMPLATES["sent"]


@pytest.fixture(scope="module")
def other_fingerprint(model_fingerprint):
    fp, _ = model_fingerprint
    return dataclasses.replace(fp, name="other-model", embedding_sha256="0" * 64)


def engine(table: str, model) -> ServeEngine:
    return ServeEngine(ServerSettings(table=table, model=str(model), precision="fp32"))


def test_a_table_of_another_base_model_is_refused_with_the_mismatch(tmp_path, tiny_gpt2_path, model_fingerprint,
                                                                     other_fingerprint):
    _, hidden = model_fingerprint
    table = str(tmp_path / "other")
    PromptTable(table).publish([make_prompt(n, other_fingerprint, hidden, seed=i)
                                for i, n in enumerate(["sent", "tr"])])
    with pytest.raises(BaseModelMismatchError) as err:
        engine(table, tiny_gpt2_path)
    text = str(err.value)
    assert text.startswith(f"none of the 2 task(s) of prompt table {table!r} can be served on base model "
                           f"{str(tiny_gpt2_path)!r}: task 'sent' version 'v000001-")
    assert "trained on base model 'other-model'" in text and "embedding_sha256: prompts have '000" in text


def test_tasks_of_another_model_are_left_out_and_a_request_for_one_is_409(tmp_path, tiny_gpt2_path,
                                                                           model_fingerprint, other_fingerprint,
                                                                           caplog):
    fp, hidden = model_fingerprint
    table = PromptTable(str(tmp_path / "mixed"))
    table.publish([make_prompt("sent", fp, hidden, seed=0), make_prompt("alien", other_fingerprint, hidden, 1, SENT)])
    with caplog.at_level(logging.WARNING):
        eng = engine(table.uri, tiny_gpt2_path)  # one task fits: it serves that one
    assert "task 'alien' version 'v000001-" in caplog.text and "cannot be served by this server" in caplog.text
    table.publish([make_prompt("late", other_fingerprint, hidden, 2, SENT)])  # published later, another model
    eng.prompts.refresh()
    assert [t.name for t in eng.tasks()] == ["sent"] and [m["id"] for m in eng.model_cards()] == ["sent"]
    assert sorted(eng.unservable()) == ["alien", "late"]
    assert "trained on base model 'other-model'" in eng.unservable()["late"]
    with pytest.raises(TaskModelMismatchError) as err:
        eng.encode("late", {"text": "hi"}, None, SamplingParams())
    assert err.value.status == 409 and err.value.code == "base_model_mismatch"
    assert err.value.message == eng.unservable()["late"]
    with pytest.raises(TaskModelMismatchError):
        eng.model_card("alien")
    with pytest.raises(UnknownTaskError) as missing:
        eng.model_card("nope")
    assert missing.value.status == 404 and missing.value.code == "model_not_found"


def test_models_are_openai_model_objects(table_uri, tiny_gpt2_path):
    eng = engine(table_uri, tiny_gpt2_path)
    info = {i.taskname: i for i in PromptTable(table_uri).describe()}
    card = eng.model_card("sent")
    assert set(card) == {"id", "object", "created", "owned_by", "version"}
    assert (card["id"], card["object"], card["owned_by"], card["version"]) == \
        ("sent", "model", "promptray", info["sent"].version)
    published = datetime.fromisoformat(info["sent"].created_at.replace("Z", "+00:00")).timestamp()
    assert card["created"] == int(published)
    assert {m["id"] for m in eng.model_cards()} >= {"sent", "qa", "tr"}


def test_a_cut_input_is_flagged_and_counted(tmp_path, tiny_gpt2_path, model_fingerprint):
    fp, hidden = model_fingerprint
    prompt = make_prompt("sent", fp, hidden, seed=0)
    prompt = dataclasses.replace(prompt, template={**prompt.template, "truncate_field": "text"})
    table = str(tmp_path / "cut")
    PromptTable(table).publish([prompt])
    eng = engine(table, tiny_gpt2_path)
    params = SamplingParams(max_tokens=8)
    long = eng.encode("sent", {"text": "word " * 400}, None, params)
    assert long.truncated and long.prompt_tokens == 256 - 8  # the model's positions less max_tokens
    short = eng.encode("sent", {"text": "word " * 10}, None, params)
    assert not short.truncated and short.prompt_tokens < 40
