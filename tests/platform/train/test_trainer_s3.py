"""Training writes to and restores from s3:// prompt tables, and reads s3:// data files (real SeaweedFS)."""

from __future__ import annotations

import json

import pytest
import torch

from promptray.platform.config.schema import load_config
from promptray.platform.errors import ConfigError, DatasetError
from promptray.platform.generation.infer_config import load_infer_config, run_inference
from promptray.platform.table.table import PromptTable
from promptray.platform.train.trainer import train

pytestmark = pytest.mark.s3


def _config(tmp_path, model, table: str, data: str, task: str, n: int, **model_kw) -> dict:
    template = {"taskname": task, "prompt_template": "<|VIRTUAL_PROMPT_0|> {text} label: {label}",
                "total_virtual_tokens": n, "virtual_token_splits": [n], "answer_only_loss": True,
                "answer_field": "label"}
    model_cfg = {"language_model_path": str(model), "prompt_table": table, "new_tasks": [task],
                 "task_templates": [template], "global_batch_size": 4, "micro_batch_size": 4,
                 "data": {"train_ds": [data]}, **model_kw}
    return {"name": f"s3_{task}", "trainer": {"max_steps": 2, "precision": 32},
            "exp_manager": {"exp_dir": str(tmp_path / "runs")}, "model": model_cfg}


@pytest.fixture
def s3_data(s3_env, s3_bucket) -> dict[str, str]:
    """One training file per task on S3."""
    uris = {}
    for task in ("a", "b"):
        body = "".join(json.dumps({"taskname": task, "text": f"item {i}", "label": "yes"}) + "\n" for i in range(8))
        s3_env.client().put_object(Bucket=s3_bucket, Key=f"data/{task}.jsonl", Body=body.encode())
        uris[task] = f"s3://{s3_bucket}/data/{task}.jsonl"
    return uris


def test_train_to_s3_then_restore_from_s3(tmp_path, tiny_gpt2_path, s3_bucket, s3_data):
    table_uri = f"s3://{s3_bucket}/tables/main"
    train(load_config(_config(tmp_path, tiny_gpt2_path, table_uri, s3_data["a"], "a", 3)), progress=False)
    a = PromptTable(table_uri).get("a").embeddings
    cfg = _config(tmp_path, tiny_gpt2_path, table_uri, s3_data["b"], "b", 5, restore_path=table_uri,
                  existing_tasks=["a"], virtual_prompt_style="p-tuning")
    cfg["model"]["task_templates"].insert(0, PromptTable(table_uri).get("a").template)
    train(load_config(cfg), progress=False)
    table = PromptTable(table_uri)
    assert table.tasks() == ["a", "b"]
    assert torch.equal(table.get("a").embeddings, a) and len(table.history("a")) == 1
    assert table.get("b").num_virtual_tokens == 5


def test_storage_endpoint_option_replaces_the_env(tmp_path, tiny_gpt2_path, s3_env, s3_bucket, s3_data,
                                                  monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    cfg = _config(tmp_path, tiny_gpt2_path, f"s3://{s3_bucket}/t2", s3_data["a"], "a", 3)
    cfg["storage"] = {"endpoint_url": s3_env.endpoint}
    train(load_config(cfg), progress=False)
    assert PromptTable(f"s3://{s3_bucket}/t2", endpoint_url=s3_env.endpoint).tasks() == ["a"]
    # `promptray infer` reads the same table and an s3:// data file through its own option, nothing global
    infer = load_infer_config(None, [f"prompt_table=s3://{s3_bucket}/t2", f"data_paths=[{s3_data['a']}]",
                                     "precision=fp32", "inference.tokens_to_generate=2", "trainer.accelerator=cpu",
                                     f"output_file={tmp_path / 'pred.jsonl'}", f"s3_endpoint_url={s3_env.endpoint}"])
    summary = run_inference(infer, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert summary["records"] == len(rows) == 8 and {r["taskname"] for r in rows} == {"a"}
    table = PromptTable(f"s3://{s3_bucket}/t2", endpoint_url=s3_env.endpoint)
    assert summary["versions"] == {"a": table.get("a").version}


def test_missing_s3_data_file_is_a_clear_error(tmp_path, tiny_gpt2_path, s3_bucket, s3_data):
    cfg = _config(tmp_path, tiny_gpt2_path, f"s3://{s3_bucket}/t3", f"s3://{s3_bucket}/data/nope.jsonl", "a", 3)
    with pytest.raises(ConfigError) as e:  # checked when the run starts, before the base model loads
        train(load_config(cfg), progress=False)
    assert e.value.problems == [f"model.data.train_ds[0]: object 's3://{s3_bucket}/data/nope.jsonl' does not exist; "
                                "check the bucket and key"]
    cfg["model"]["data"]["train_ds"] = [s3_data["a"], s3_data["b"]]
    with pytest.raises(DatasetError, match=r"unknown taskname 'b'.*may only hold records of model.new_tasks \['a'\]"):
        train(load_config(cfg), progress=False)
