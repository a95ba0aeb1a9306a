"""Client arguments, an unreachable cluster, log parsing, and the embedded local cluster's life cycle."""

from __future__ import annotations

import json

import pytest

from promptray.platform.errors import ConfigError
from promptray.platform.ports import free_ports
from promptray.sdk import Client, ClusterAuthError, ClusterStartError, ClusterUnreachableError, JobStatus, LocalCluster
from promptray.sdk.auth import find_token
from promptray.sdk.cluster import RayJobs
from promptray.sdk.models import log_tail, parse_metrics, parse_result


def test_client_arguments_are_checked_together():
    with pytest.raises(ConfigError) as e:
        Client(address="ray://10.0.0.1:10001", stage_files="sometimes", num_cpus=0)
    text = "\n".join(e.value.problems)
    assert len(e.value.problems) == 3 and "invalid Client arguments" in str(e.value)
    assert "address" in text and "http://127.0.0.1:8265" in text and "'ray://10.0.0.1:10001'" in text
    assert "stage_files" in text and "'sometimes'" in text and "num_cpus" in text
    assert Client(address="127.0.0.1:8265/").address == "http://127.0.0.1:8265"
    assert Client(address="http://[::1]:8265").address == "http://[::1]:8265"
    with pytest.raises(ConfigError, match="address"):
        Client(address="http://:8265")


def test_unreachable_cluster_is_a_typed_error():
    pytest.importorskip("ray")
    port = free_ports(1)[0]
    client = Client(address=f"http://127.0.0.1:{port}")
    with pytest.raises(ClusterUnreachableError, match=f"no Ray cluster answers at http://127.0.0.1:{port}"):
        client.list_jobs()
    with pytest.raises(ClusterUnreachableError):
        client.get_job("raysubmit_x")


def test_a_cluster_that_does_not_start_is_a_typed_error_and_leaves_nothing_behind():
    pytest.importorskip("ray")
    cluster = LocalCluster(num_cpus="two")  # `ray start` rejects it before starting anything
    with pytest.raises(ClusterStartError, match="did not bring up a cluster(.|\n)*--num-cpus"):
        cluster.start(timeout=60, attempts=1)
    assert cluster.pids() == [] and not cluster.temp_dir.exists()


def test_token_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    assert find_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert find_token() == "home-token"
    (tmp_path / "other").write_text("path-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "other"))
    assert find_token() == "path-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert find_token() == "env-token" and find_token("explicit") == "explicit"


def test_log_parsing_finds_markers_behind_ray_prefixes():
    rec = {"step": 2, "total_steps": 4, "loss": 1.5, "tokens_per_s": 99.0, "lr": 0.01}
    log = "\n".join([
        "(RayTrainWorker pid=123) PROMPTRAY_METRICS " + json.dumps({**rec, "step": 1}),
        "PROMPTRAY_METRICS {not json",
        "PROMPTRAY_METRICS " + json.dumps({"loss": 1.0}),  # no step: skipped
        "(RayTrainWorker pid=123, ip=10.0.0.1) PROMPTRAY_METRICS " + json.dumps({**rec, "val_loss": 1.2}),
        'PROMPTRAY_RESULT {"table": "s3://b/t", "versions": {"a": "v1"}, "steps": 1}',
        'PROMPTRAY_RESULT {"table": "s3://b/t", "versions": {"a": "v2"}, "steps": 4, "best_val_loss": 1.2}',
        "PROMPTRAY_RESULT {truncated"])
    records = parse_metrics(log)
    assert [r.step for r in records] == [1, 2] and records[1].val_loss == 1.2 and records[0].val_loss is None
    assert records[0].model_extra == {"lr": 0.01}
    result = parse_result(log)
    assert result.versions == {"a": "v2"} and result.steps == 4 and result.best_val_loss == 1.2
    assert parse_result("nothing here") is None
    assert log_tail("a\n\nb\nc\n", lines=2) == "b\nc" and log_tail("") == "(the job wrote no log)"


@pytest.mark.ray_cluster
def test_embedded_cluster_starts_on_first_use_and_stops_at_close():
    pytest.importorskip("ray")
    client = Client(num_cpus=1)
    assert client.address is None  # nothing started yet
    try:
        assert client.list_jobs() == []
        address, cluster = client.address, client._cluster
        assert address.startswith("http://127.0.0.1:") and cluster.pids()
        with pytest.raises(ClusterAuthError, match="sent no token"):  # the embedded cluster uses token auth
            RayJobs(address, None)
    finally:
        client.close()
    assert cluster.pids() == [] and not cluster.temp_dir.exists()
    with pytest.raises(ClusterUnreachableError):
        RayJobs(address, cluster.token)
    assert JobStatus("STOPPED").is_terminal and not JobStatus("RUNNING").is_terminal


def test_submit_tuning_with_a_bad_config_raises_before_any_cluster_is_started_or_contacted(tmp_path, monkeypatch):
    from promptray.sdk import JobConfigError

    from sdk_helpers import tuning_config, write_jsonl

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", 8)
    client = Client(table=str(tmp_path / "table"))  # an embedded cluster would start on first use
    with pytest.raises(JobConfigError) as e:
        client.submit_tuning(config=tuning_config(tmp_path / "model", "t", ["train.jsonl"], [], tmp_path),
                             overrides={"model.optim.lr": -1})
    assert e.value.problems == ["model.optim.lr: got -1; use a value > 0.0"]
    raw = tuning_config(tmp_path / "model", "t", ["missing.jsonl"], [], tmp_path)
    raw["model"]["optim"]["lr"], raw["model"]["global_batch_size"] = -1, 6
    raw["model"]["task_templates"] = [{**raw["model"]["task_templates"][0], "virtual_token_splits": [3]}]
    with pytest.raises(JobConfigError) as e:  # the four problems and the missing search section, at once
        client.submit_search(config=raw)
    assert [p.split(":")[0] for p in e.value.problems] == [
        "search", "model.data.train_ds[0]", "model.optim.lr", "model.task_templates[0] (task 'sentiment')",
        "model.global_batch_size"]
    assert str(e.value).startswith("invalid search job (5 problems):\n  - search: missing section; give "
                                   "search.tasks")
    assert client._cluster is None and client._jobs is None and client.address is None  # nothing started
