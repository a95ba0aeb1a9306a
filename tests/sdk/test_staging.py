"""Files of a job: absolute paths on loopback, staging to the table's bucket for a remote cluster, rejection
without a bucket, s3:// passed through."""

from __future__ import annotations

import copy
import hashlib

import pytest

from promptray.platform.storage.s3 import read_uri
from promptray.sdk import Client, DataStagingError, JobConfigError
from promptray.sdk.staging import is_loopback, prepare_files

from sdk_helpers import tuning_config

REMOTE = "http://203.0.113.7:8265"  # TEST-NET-3: never contacted, the checks happen before any connection


@pytest.mark.parametrize("address, expected", [
    ("http://127.0.0.1:8265", True), ("http://localhost:8265", True), ("127.0.0.2:8265", True),
    ("http://[::1]:8265", True), (REMOTE, False), ("https://ray.example.com", False), ("10.0.0.5:8265", False)])
def test_is_loopback(address, expected):
    assert is_loopback(address) is expected


def test_loopback_makes_every_relative_path_absolute(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.jsonl").write_text("{}\n")
    (tmp_path / "model").mkdir()
    raw = tuning_config("model", "table", ["data/t.jsonl", "s3://b/v.jsonl"], [], "runs")
    raw["model"]["data"]["train_ds"].append({"sentence": "inline record", "label": "x"})
    raw["model"]["restore_path"] = "table"
    staged = prepare_files(raw, "table", "http://127.0.0.1:8265", "auto", tmp_path)
    model = raw["model"]
    assert staged == []
    assert model["data"]["train_ds"][:2] == [str(tmp_path / "data/t.jsonl"), "s3://b/v.jsonl"]
    assert model["data"]["train_ds"][2] == {"sentence": "inline record", "label": "x"}
    assert model["nemo_path"] == model["restore_path"] == str(tmp_path / "table")
    assert model["language_model_path"] == str(tmp_path / "model")
    assert raw["exp_manager"]["exp_dir"] == str(tmp_path / "runs")


def test_missing_local_data_files_are_listed_before_submission(tmp_path, monkeypatch, tiny_gpt2_path):
    monkeypatch.chdir(tmp_path)
    client = Client(table=str(tmp_path / "t"))
    with pytest.raises(JobConfigError) as e:
        client.submit_tuning(tuning_config(tiny_gpt2_path, "t", ["a.jsonl", "s3://b/ok.jsonl"], ["b.jsonl"],
                                           tmp_path))
    assert e.value.problems == [
        f"model.data.train_ds[0]: file 'a.jsonl' does not exist; fix the path (relative paths are read from "
        f"{tmp_path})",
        f"model.data.validation_ds[0]: file 'b.jsonl' does not exist; fix the path (relative paths are read from "
        f"{tmp_path})"]
    assert client._cluster is None and client._jobs is None  # nothing was started or contacted


def test_remote_cluster_without_bucket_rejects_local_files(data_dir, tmp_path, monkeypatch, tiny_gpt2_path):
    monkeypatch.chdir(data_dir)
    client = Client(address=REMOTE, table=str(tmp_path / "table"))
    with pytest.raises(DataStagingError) as e:
        client.submit_tuning(tuning_config(tiny_gpt2_path, "x", ["train.jsonl"], ["s3://b/val.jsonl"], tmp_path))
    message = str(e.value)
    assert REMOTE in message and "'train.jsonl'" in message and "val.jsonl" not in message
    assert "is not on s3://" in message and "_staging/" in message
    assert client.address == REMOTE and client._jobs is None  # nothing was contacted


@pytest.mark.s3
def test_remote_cluster_local_files_are_staged_to_the_tables_bucket(bucket, data_dir):
    table = f"s3://{bucket}/tables/main"
    raw = tuning_config("m", table, ["train.jsonl", f"s3://{bucket}/given.jsonl"], ["val.jsonl"], data_dir)
    before = copy.deepcopy(raw)
    staged = prepare_files(raw, table, REMOTE, "auto", data_dir)
    digest = hashlib.sha256((data_dir / "train.jsonl").read_bytes()).hexdigest()[:16]
    assert staged[0] == f"{table}/_staging/{digest}/train.jsonl" and len(staged) == 2
    assert raw["model"]["data"]["train_ds"] == [staged[0], f"s3://{bucket}/given.jsonl"]
    assert raw["model"]["data"]["validation_ds"] == [staged[1]]
    assert read_uri(staged[0]) == (data_dir / "train.jsonl").read_bytes()
    assert read_uri(staged[1]) == (data_dir / "val.jsonl").read_bytes()
    assert raw["exp_manager"] == before["exp_manager"]  # cluster-side paths are left alone
    assert prepare_files(copy.deepcopy(before), table, REMOTE, "auto", data_dir) == staged  # content-addressed


@pytest.mark.s3
def test_staging_to_a_missing_bucket_is_a_staging_error(s3_env, data_dir):
    raw = tuning_config("m", "s3://no-such-bucket-sdk/t", ["train.jsonl"], [], data_dir)
    with pytest.raises(DataStagingError, match="could not stage .*train.jsonl.* to s3://no-such-bucket-sdk/t"):
        prepare_files(raw, "s3://no-such-bucket-sdk/t", REMOTE, "auto", data_dir)
